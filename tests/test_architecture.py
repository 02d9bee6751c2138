"""The package's layering, read off the source with `ast` (every import, lazy ones inside functions
included): no import cycle between modules, and no stage importing another stage outside the
short list below. docs/ARCHITECTURE.md ("Layers") states the same rule.

Layers, top to bottom:
- entry points: cli, commands, pipeline (may import anything);
- stages: distill (distill + score), latency (profile), search, build (student, then deploy — deploy
  may import student, not the reverse); a stage imports core and itself;
- core: everything else — the package root (its version), teacher (its capture included), ops, data,
  quant, training, progress, config, rundir, runfiles, scores, errors, atomic — and latency's toolkit (ONNX export, fp16,
  backends, timing, paired timing, device), which every stage uses to export and time the same
  way. Core imports no stage.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

ENTRY = {"hant_trt.cli", "hant_trt.commands", "hant_trt.pipeline"}
STAGES = {"distill": "distill", "latency": "latency", "search": "search", "student": "build", "deploy": "build"}
LATENCY_TOOLKIT = ("hant_trt.latency.export", "hant_trt.latency.precision", "hant_trt.latency.backends",
                   "hant_trt.latency.timing", "hant_trt.latency.paired", "hant_trt.latency.device")

# (importer, imported): the only imports across stages, or from core into a stage
ALLOWED = {
    ("hant_trt.config", "hant_trt.search.budget"): "a budget is checked at load by the parser the search uses",
    ("hant_trt.config", "hant_trt.search.tables"): "metric names are checked at load against the search's",
    ("hant_trt.config", "hant_trt.search.limits"): "search.exclude patterns are checked at load by the search's parser",
    ("hant_trt.latency.backends.tensorrt", "hant_trt.deploy.metadata"):
        "a TensorRT plan is checked against the metadata the build wrote beside it",
    ("hant_trt.search.refine", "hant_trt.distill.pool"): "refinement composes phase 1's distilled candidates",
    ("hant_trt.search.calibrate", "hant_trt.student.plan"): "budget calibration times whole students",
    ("hant_trt.latency.islands", "hant_trt.student.plan"):
        "float islands are timed in the int8 teacher as the build deploys it",
    ("hant_trt.search.judge", "hant_trt.student.assemble"): "the fine-tune judge builds each selection's student",
    ("hant_trt.search.judge", "hant_trt.student.finetune"): "… scores it by the build's own eval objective",
    ("hant_trt.search.judge", "hant_trt.student.stage"): "… and fine-tunes and calibrates it as the build does",
    ("hant_trt.student.stage", "hant_trt.distill.pool"): "the student is assembled from phase 1's candidates",
}


def module_files(root: Path, package: str) -> dict[str, Path]:
    out = {}
    for p in sorted(root.rglob("*.py")):
        parts = list(p.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join([package, *parts])] = p
    return out


def import_graph(root: Path, package: str, unresolved: list | None = None) -> dict[str, set[str]]:
    """{module: the package's modules it imports}, at any level of the source (lazy imports
    included); `from x import name` counts x.name when that is a module, else x. Imports of the
    package's own modules that name none are appended to `unresolved` as (module, name)."""
    mods = module_files(root, package)

    def own(name: str) -> bool:
        return name == package or name.startswith(package + ".")

    def resolve(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    graph = {}
    for name, path in mods.items():
        here = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        edges = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
                targets = [resolve(n) for n in names]
            elif isinstance(node, ast.ImportFrom):
                base = ".".join(here[:len(here) - node.level + 1] + ([node.module] if node.module else [])) \
                    if node.level else (node.module or "")
                names = [base]
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else resolve(base) for a in node.names]
            else:
                continue
            if unresolved is not None:
                unresolved.extend((name, n) for n in names if own(n) and n not in mods)
            edges.update(t for t in targets if t and t != name)
        graph[name] = edges
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            v, it = work[-1]
            for w in it:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph.get(w, ())))))
                    break
                if w in on_stack:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    comp = []
                    while True:
                        w = stack.pop()
                        on_stack.discard(w)
                        comp.append(w)
                        if w == v:
                            break
                    if len(comp) > 1:
                        out.append(sorted(comp))
    return out


def stage_of(module: str) -> str | None:
    """The stage a module belongs to; None for core, "entry" for the entry points."""
    if module in ENTRY:
        return "entry"
    if module.startswith(LATENCY_TOOLKIT):
        return None
    parts = module.split(".")
    return STAGES.get(parts[1]) if len(parts) > 1 else None


def layer_violations(graph: dict[str, set[str]]) -> list[str]:
    bad = []
    for a in sorted(graph):
        sa = stage_of(a)
        for b in sorted(graph[a]):
            sb = stage_of(b)
            if sa == "entry" or sb is None or (a, b) in ALLOWED:
                continue
            if sb == "entry":
                bad.append(f"{a} imports the entry point {b}")
            elif sa is None:
                bad.append(f"core module {a} imports stage {sb} ({b})")
            elif sa != sb:
                bad.append(f"stage {sa} imports stage {sb}: {a} -> {b}")
            elif a.split(".")[1] == "student" and b.split(".")[1] == "deploy":
                bad.append(f"the student imports its deployment: {a} -> {b}")
    return bad


def test_no_import_cycles():
    assert find_cycles(import_graph(ROOT / "hant_trt", "hant_trt")) == []


def test_every_import_of_the_package_names_one_of_its_modules():
    # a lazy import of a moved module fails only when its function runs
    unresolved: list = []
    import_graph(ROOT / "hant_trt", "hant_trt", unresolved)
    assert unresolved == []


def test_stages_import_core_and_themselves_only():
    graph = import_graph(ROOT / "hant_trt", "hant_trt")
    assert layer_violations(graph) == []
    used = {(a, b) for a in graph for b in graph[a]}
    assert set(ALLOWED) <= used, f"allowed but no longer imported: {sorted(set(ALLOWED) - used)}"


def _package(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "pkg"
    for rel, text in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return root


def test_the_checker_finds_a_cycle_through_a_lazy_import(tmp_path):
    root = _package(tmp_path, {
        "__init__.py": "",
        "a.py": "from .sub import b\n",
        "sub/__init__.py": "",
        "sub/b.py": "def f():\n    from ..c import g\n    return g\n",
        "c.py": "import pkg.a\n",
        "d.py": "from . import a\n",
    })
    graph = import_graph(root, "pkg")
    assert graph["pkg.a"] == {"pkg.sub.b"} and graph["pkg.d"] == {"pkg.a"}
    assert find_cycles(graph) == [["pkg.a", "pkg.c", "pkg.sub.b"]]
    (root / "c.py").write_text("def h():\n    from .gone import x\n")
    unresolved: list = []
    assert find_cycles(import_graph(root, "pkg", unresolved)) == [] and unresolved == [("pkg.c", "pkg.gone")]


def test_the_checker_finds_a_stage_importing_another():
    graph = {"hant_trt.search.ilp": {"hant_trt.distill.train", "hant_trt.config"},
             "hant_trt.ops.grammar": {"hant_trt.latency.profile", "hant_trt.latency.export"},
             "hant_trt.student.stage": {"hant_trt.deploy.verify"},
             "hant_trt.deploy.stage": {"hant_trt.student.stage", "hant_trt.latency.backends"}}
    assert sorted(layer_violations(graph)) == [
        "core module hant_trt.ops.grammar imports stage latency (hant_trt.latency.profile)",
        "stage search imports stage distill: hant_trt.search.ilp -> hant_trt.distill.train",
        "the student imports its deployment: hant_trt.student.stage -> hant_trt.deploy.verify",
    ]
