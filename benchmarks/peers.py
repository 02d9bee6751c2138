"""hant-trt beside what needs no training, on this machine, in one run: speed and holdout top-1.

    .venv/bin/python benchmarks/peers.py RUN_DIR [RUN_DIR ...] [--speedups 1.6,2.0,2.4] [--int8x 1.1,1.2]
        [--holdout DIR]
        [--set search.KEY=VALUE ...] [--out DIR]

RUN_DIR is a finished phase 1 (distill, score, profile with fp32 + int8 on the ort backend, e.g.
`examples/lite0_dev_tiny.toml`). Side by side, every model as the ONNX it deploys as, on ONNX
Runtime CPU:

- the fp32 teacher;
- plain int8 of the whole teacher, ours (the build's int8 path: every part int8, calibrated on the
  run's training images) and ONNX Runtime's `quantize_static` (QDQ, per-channel, U8S8, MinMax on 64
  training images);
- OpenVINO's default precision and NNCF int8, when `openvino` / `nncf` import (skipped otherwise);
- the search's students at each asked speedup (`--speedups`: over the fp32 teacher, `--int8x`: over
  the teacher in plain int8, budget `int8x=`), each searched on a copy of the run and built with
  the run's build settings (fine-tune included; `--finetune-steps` overrides; `--set` changes
  the copies' config, e.g. `--set search.max_skips_per_stage=1`). With several RUN_DIRs (the
  same teacher, e.g. a run and its copy with fused spans), every run's students are built and all
  are timed in the same rounds; the teacher and its plain int8 come from the first.

Each model's top-1 on the holdout folder and agreement with the teacher, its latency timed beside
the teacher in `--rounds` rounds (each round times every model right after the teacher; speedup =
teacher / model per round, median). Prints the table, the Pareto front (speed vs top-1) and the
headline: hant-trt's speedup over the best plain int8 among the models within 1 point of the
teacher's top-1, with the quartiles of that factor over the rounds; every student's own factor, and
the most accurate student at ≥ 1.5x plain int8's speed. Writes peers.json and peers.png.
`--recheck PEERS_JSON` evaluates an earlier run's files again (adding top-1 intervals);
`--retime PEERS_JSON` times them again, all in the same rounds. `--picks PEERS_JSON` builds an
earlier run's students again, each its own pick, under `--set build.*` (another fine-tune seed, a
logits model), beside a fresh teacher and plain int8 from RUN_DIR.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def cpu_name() -> str:
    from hant_trt.latency.device import cpu_model

    return cpu_model() or platform.processor()


def holdout_batches(folder: str, data_config: dict, batch: int = 50, limit: int | None = None):
    from torch.utils.data import DataLoader

    from hant_trt.data import FolderDataset, eval_transform, scan_folder

    items, _, _ = scan_folder(folder)
    items = items[:limit]
    loader = DataLoader(FolderDataset(items, eval_transform(data_config)), batch_size=batch)
    return [(x.numpy(), y.numpy()) for x, y in loader]


def side_of(path: Path) -> int:
    """The input side an ONNX model was exported at (its input's last dimension)."""
    import onnx

    return int(onnx.load(str(path), load_external_data=False).graph.input[0].type.tensor_type.shape.dim[-1].dim_value)


def holdout_at(folder: str, data_config: dict):
    """side → the holdout's batches at that side (timm's eval transform there: the same photos and
    the same field of view), each side read once: a student searched at a smaller input is read at
    its own side beside a teacher at its own."""
    made: dict[int, list] = {}

    def at(side: int) -> list:
        if side not in made:
            made[side] = holdout_batches(folder, {**data_config, "input_size": [3, side, side]})
        return made[side]

    return at


def onnx_logits(path: Path, batches) -> np.ndarray:
    """Logits of an ONNX on ONNX Runtime CPU with its full optimisation (what deploys), batch 1
    models fed one image at a time."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    fixed = inp.shape[0] if isinstance(inp.shape[0], int) else None
    out = []
    for x, _ in batches:
        if fixed == 1:
            out += [sess.run(None, {inp.name: x[i:i + 1]})[0] for i in range(x.shape[0])]
        else:
            out.append(sess.run(None, {inp.name: x})[0])
    return np.concatenate(out)


def ort_ptq(teacher_onnx: Path, calib: list[np.ndarray], dst: Path, input_name: str = "input") -> Path:
    """ONNX Runtime's `quantize_static` of a model: QDQ, per-channel int8 weights, uint8
    activations, MinMax ranges from `calib` (batches, fed one image at a time)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter([{input_name: x[i:i + 1]} for x in calib for i in range(x.shape[0])])

        def get_next(self):
            return next(self.it, None)

    quantize_static(str(teacher_onnx), str(dst), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    return dst


def our_int8_teacher(run: Path, cfg, teacher, d, dst: Path) -> Path:
    """The whole teacher at int8 through the build's own path (calibrated on the run's images)."""
    from hant_trt.data import data_splits
    from hant_trt.quant.plan import export_with_plan
    from hant_trt.student.assemble import Choice, assemble
    from hant_trt.student.stage import int8_plan

    choices = [Choice(i, i, "keep", "int8") for i in range(len(d.slots))]
    student = assemble(d, choices, {})
    fixed = {"stem": "int8", "head": "int8"}
    deploy_train = data_splits(cfg, teacher.data_config, train_augment=False).train
    calib, _, _ = int8_plan(student, choices, deploy_train, cfg, fixed, cache_dir=dst.parent / "calib")
    shape = (1, 3, teacher.resolution, teacher.resolution)
    return export_with_plan(student, shape, dst, calib, choices, "fp32")


def build_student(run: Path, cfg, budget: str, work: Path, finetune_steps: int | None,
                  overrides: list[str] = ()) -> Path:
    """A copy of the run searched at `budget` ("speedup=2.8", "int8x=1.2") and built; returns its
    student ONNX."""
    import copy

    from hant_trt.commands import apply_overrides
    from hant_trt.deploy.stage import run_build
    from hant_trt.rundir import RunDir
    from hant_trt.search.stage import run_search

    kind, value = budget.split("=")
    dst = work / f"{'s' if kind == 'speedup' else 'i'}{float(value):.2f}"
    if not (dst / "student" / "student.onnx").is_file():
        if dst.exists():
            shutil.rmtree(dst)
        inside = {p.name for p in [work.resolve()] + list(work.resolve().parents) if p.parent == run.resolve()}
        # the output folder may sit inside the run: never copy it into itself
        shutil.copytree(run, dst, ignore=shutil.ignore_patterns("student", "triton", "report*", "*.png", "build.json",
                                                                *inside))
        c = copy.deepcopy(cfg)
        c.run_dir, c.search.budget, c.search.sweep = str(dst), budget, 0
        if finetune_steps is not None:
            c.build.finetune_steps = finetune_steps
        apply_overrides(c, list(overrides))
        r = RunDir(dst)
        r.update(config=c.to_dict())
        run_search(r, c)
        run_build(r, c, engines_dir=dst / "engines")
    return dst / "student" / "student.onnx"


def rebuild_student(src: Path, dst: Path, overrides: list[str]) -> Path:
    """A student of an earlier peers run built again into `dst` under `overrides` (build settings
    only, e.g. `build.seed=1`), from its own copy of the run: the same pick, fine-tuned again — what
    one build's figure is worth, measured beside a fresh teacher and plain int8."""
    from hant_trt.commands import apply_overrides
    from hant_trt.config import from_dict
    from hant_trt.deploy.stage import run_build
    from hant_trt.rundir import RunDir

    if not (dst / "student" / "student.onnx").is_file():
        if dst.exists():
            shutil.rmtree(dst)
        shutil.copytree(src, dst, ignore=shutil.ignore_patterns("student", "triton", "engines", "report*", "*.png",
                                                                "build.json"))
        r = RunDir(dst)
        c = from_dict(r.manifest()["config"])
        c.run_dir = str(dst)
        apply_overrides(c, list(overrides))
        r.update(config=c.to_dict())
        r.invalidate_from("build")      # with no override its fingerprint would still match
        run_build(r, c, engines_dir=dst / "engines")
    return dst / "student" / "student.onnx"


def earlier_students(peers_json: Path) -> dict[str, Path]:
    """Row name → the folder of that student's copy of the run, for every student row of an earlier
    peers run whose files are still there."""
    doc = json.loads(peers_json.read_text())
    out = {}
    for r in (r for r in doc["rows"] if r["model"].startswith("hant-trt ")):
        f = model_file(peers_json.parent, r["model"])
        if f is None or not (f.parent.parent / "solution.json").is_file():
            print(f"{r['model']}: no copy of the run beside it, not rebuilt", flush=True)
            continue
        out[r["model"]] = f.parent.parent
    return out


def student_details(copy_dir: Path) -> dict:
    """What the search chose for a built copy: predicted speedup and Σ swap-one KL, the replaced
    parts (skips, fused spans) — to read each student's accuracy against what it changed."""
    sol = json.loads((copy_dir / "solution.json").read_text())
    ch = [c for c in sol["choices"] if c["op"] != "keep"]
    parts = [f"{c['first']}{'-' + str(c['last']) if c['last'] > c['first'] else ''}:{c['op']}" for c in ch]
    build = json.loads((copy_dir / "build.json").read_text()) if (copy_dir / "build.json").is_file() else {}
    return {"predicted_speedup": round(sol.get("predicted_speedup") or 0.0, 3),
            "predicted_kl": round(-sol["score"], 4) if sol.get("metric") == "kl" else None,
            "replaced": len(ch), "skips": sum(c["op"] == "skip" for c in ch),
            "spans": sum(c["last"] > c["first"] for c in ch), "choices": " ".join(parts) or "(nothing replaced)",
            "build_speedup": round(build["speedup"], 3) if build.get("speedup") else None}


def openvino_models(teacher_onnx: Path, calib: list[np.ndarray], work: Path) -> dict:
    """OpenVINO's default precision and NNCF int8, as callables (x → logits); {} when not installed."""
    try:
        import openvino as ov
    except ImportError:
        return {}
    core = ov.Core()
    model = core.read_model(str(teacher_onnx))
    out = {"OpenVINO default": core.compile_model(model, "CPU")}
    try:
        import nncf

        ds = nncf.Dataset([x[i:i + 1] for x in calib for i in range(x.shape[0])])
        out["OpenVINO + NNCF int8"] = core.compile_model(nncf.quantize(model, ds), "CPU")
    except ImportError:
        pass
    return out


def speedups_beside(teacher_prep, preps: list, backend, rounds: int, seconds: float) -> list[list[float]]:
    """Per prepared model, teacher / model in each of `rounds` rounds; every round times each model
    right after the teacher, all models in the same round, so one round's ratios of two models
    (a student over plain int8) saw the same state of the host."""
    from hant_trt.latency.paired import time_beside

    t0 = time.time()

    def shown(r: int) -> None:
        left = (time.time() - t0) / (r + 1) * (rounds - r - 1)
        print(f"  timing round {r + 1}/{rounds}, ETA {left:.0f} s", flush=True)

    pairs = time_beside(backend, teacher_prep, preps, rounds, max_seconds=seconds, on_round=shown)
    return [[round(t / m, 4) for t, m in model] for model in pairs]


def time_rows(rows: list[dict], files: dict[str, Path], teacher_onnx: Path, rounds: int, seconds: float,
              threads: int | None) -> None:
    """Every row with a model file timed beside the teacher, all in the same rounds: `speedup` (the
    median over rounds) and `speedup_rounds` set in place."""
    from hant_trt.latency.backends import get_backend

    backend = get_backend("ort", threads=threads)
    t_prep = backend.prepare(str(teacher_onnx))
    names = [r["model"] for r in rows if r["model"] in files]
    ratios = dict(zip(names, speedups_beside(t_prep, [backend.prepare(str(files[n])) for n in names], backend,
                                             rounds, seconds)))
    for r in rows:
        if r["model"] in ratios:
            r["speedup"] = round(statistics.median(ratios[r["model"]]), 3)
            r["speedup_rounds"] = ratios[r["model"]]


def main() -> None:
    from hant_trt.config import from_dict
    from hant_trt.latency.backends import get_backend
    from hant_trt.latency.export import export_onnx
    from hant_trt.teacher.stage import load_from_config

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run_dirs", nargs="*", metavar="run_dir")
    ap.add_argument("--speedups", default="1.6,2.0,2.4", help="asks over the fp32 teacher ('' for none)")
    ap.add_argument("--int8x", default="", help="asks over the teacher in plain int8 (budget int8x=)")
    ap.add_argument("--holdout", default=str(ROOT.parent / "shared/data/imagenet-sample/holdout"))
    ap.add_argument("--out", default=None, help="folder for peers.json / peers.png (default RUN_DIR/peers)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=1.0)
    ap.add_argument("--finetune-steps", type=int, default=None)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--teacher-resolution", type=int, default=None, metavar="SIDE",
                    help="the teacher and its plain int8 at this input side (default: the first run's), e.g. "
                         "its own 224 when the runs search a smaller input; each student is read at its own")
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                    help="config override for the students' copies (repeatable)")
    ap.add_argument("--picks", metavar="PEERS_JSON", action="append", default=[],
                    help="instead of searching: the students of an earlier peers run, each its own pick built "
                         "again under --set (build.* only, e.g. build.seed=1: what a single build is worth); "
                         "repeatable, the runs' student names must differ")
    ap.add_argument("--report-only", metavar="PEERS_JSON", default=None,
                    help="redo the headline, table and plot of an earlier peers.json (nothing measured)")
    ap.add_argument("--recheck", metavar="PEERS_JSON", default=None,
                    help="evaluate an earlier run's model files on holdout again and add each row's paired "
                         "interval (speedups kept as measured)")
    ap.add_argument("--retime", metavar="PEERS_JSON", default=None,
                    help="time every model file of an earlier run again, all in the same --rounds rounds "
                         "(top-1 kept as measured); the speedups it replaces are kept as speedup_before")
    a = ap.parse_args()
    if a.retime:
        retime(Path(a.retime), a.rounds, a.seconds, a.threads)
        return
    if a.recheck:
        recheck(Path(a.recheck), a.holdout)
        return
    if a.report_only:
        doc = json.loads(Path(a.report_only).read_text())
        report(doc["rows"], Path(a.out) if a.out else Path(a.report_only).parent, doc["cpu"], doc["holdout_images"])
        return
    if not a.run_dirs:
        ap.error("give at least one run directory (or --report-only PEERS_JSON)")
    if a.picks and any(not o.startswith("build.") for o in a.set):
        ap.error("--picks rebuilds the same picks: only build.* settings may change (--set build.KEY=VALUE)")
    runs = [Path(r) for r in a.run_dirs]
    run = runs[0]
    cfg = from_dict(json.loads((run / "run.json").read_text())["config"])
    out = Path(a.out) if a.out else run / "peers"
    out.mkdir(parents=True, exist_ok=True)
    ref_cfg = cfg
    if a.teacher_resolution:
        import copy

        ref_cfg = copy.deepcopy(cfg)
        ref_cfg.teacher.resolution = a.teacher_resolution
    teacher, d = load_from_config(ref_cfg)
    shape = (1, 3, teacher.resolution, teacher.resolution)
    t0 = time.time()
    holdout = holdout_at(a.holdout, teacher.data_config)
    batches = holdout(teacher.resolution)
    labels = np.concatenate([y for _, y in batches])
    from hant_trt.data import data_splits
    from hant_trt.training import eval_batches

    deploy_train = data_splits(ref_cfg, teacher.data_config, train_augment=False).train
    calib = [x.numpy() for x in eval_batches(deploy_train, 64, 16)]

    models: dict[str, Path] = {"teacher fp32": export_onnx(teacher.model, shape, out / "teacher.onnx")}
    models["int8 PTQ (hant-trt)"] = our_int8_teacher(run, ref_cfg, teacher, d, out / "teacher.int8.onnx")
    models["int8 PTQ (ORT quantize_static)"] = ort_ptq(models["teacher fp32"], calib, out / "teacher.ort_ptq.onnx")
    details: dict[str, dict] = {}
    if a.picks:
        for earlier in map(Path, a.picks):
            for name, src in earlier_students(earlier).items():
                if name in models:
                    raise SystemExit(f"{name}: in two --picks runs; rebuild them in separate peers runs")
                onnx = rebuild_student(src, out / "students" / src.relative_to(earlier.parent / "students"), a.set)
                models[name] = onnx
                details[name] = student_details(onnx.parent.parent)
        runs = []
    for r in runs:
        rcfg = from_dict(json.loads((r / "run.json").read_text())["config"])
        tag = f"{r.name} " if len(runs) > 1 else ""
        asks = [(f"{float(v):.2f}x", f"speedup={float(v)}") for v in a.speedups.split(",") if v]
        asks += [(f"int8x {float(v):.2f}", f"int8x={float(v)}") for v in a.int8x.split(",") if v]
        for label, budget in asks:
            name = f"hant-trt {tag}{label}"
            try:
                onnx = build_student(r, rcfg, budget, out / "students" / r.name if tag else out / "students",
                                     a.finetune_steps, a.set)
            except Exception as exc:      # an unreachable ask is a finding, not a crash
                print(f"{name}: {str(exc).splitlines()[0]}", flush=True)
                continue
            models[name] = onnx
            details[name] = student_details(onnx.parent.parent)
    print(f"models ready in {time.time() - t0:.0f} s", flush=True)

    t_logits = onnx_logits(models["teacher fp32"], batches)
    rows = []
    for name, path in models.items():
        side = side_of(path)
        logits = t_logits if name == "teacher fp32" else onnx_logits(path, holdout(side))
        rows.append({"model": name, "speedup": 1.0, "side": side,
                     "top1": round(100 * float((logits.argmax(1) == labels).mean()), 2),
                     "agreement": round(100 * float((logits.argmax(1) == t_logits.argmax(1)).mean()), 2),
                     **paired_delta(logits.argmax(1) == labels, t_logits.argmax(1) == labels),
                     **details.get(name, {})})
    time_rows(rows, {k: v for k, v in models.items() if k != "teacher fp32"}, models["teacher fp32"], a.rounds,
              a.seconds, a.threads)
    for r in rows:
        lo, hi = r["top1_delta_ci95"]
        print(f"{r['model']:<34} {r['speedup']:>6.2f}x  top-1 {r['top1']:5.1f} ({r['top1_delta']:+.1f}, 95 % "
              f"[{lo:+.1f}, {hi:+.1f}])  agreement {r['agreement']:5.1f}"
              + (f"  {details[r['model']]['choices']}" if r["model"] in details else ""), flush=True)
    ov_models = openvino_models(models["teacher fp32"], calib, out)
    if ov_models:      # timed through their own compiled models, beside the teacher on ORT
        backend = get_backend("ort", threads=a.threads)
        t_prep = backend.prepare(str(models["teacher fp32"]))
        for name, compiled in ov_models.items():
            logits = np.concatenate([compiled(x[i:i + 1])[0] for x, _ in batches for i in range(x.shape[0])])
            x1 = batches[0][0][:1]
            ratios = []
            for _ in range(a.rounds):
                tt = backend.time(t_prep, max_seconds=a.seconds).median_s
                n, t1 = 0, time.perf_counter()
                while time.perf_counter() - t1 < a.seconds:
                    compiled(x1)
                    n += 1
                ratios.append(tt / ((time.perf_counter() - t1) / n))
            rows.append({"model": name, "speedup": round(statistics.median(ratios), 3),
                         "top1": round(100 * float((logits.argmax(1) == labels).mean()), 2),
                         "agreement": round(100 * float((logits.argmax(1) == t_logits.argmax(1)).mean()), 2),
                         **paired_delta(logits.argmax(1) == labels, t_logits.argmax(1) == labels)})
    else:
        print("OpenVINO / NNCF not installed: their rows are skipped", flush=True)
    report(rows, out, cpu_name(), len(labels))


def paired_delta(correct: np.ndarray, teacher_correct: np.ndarray, resamples: int = 2000, seed: int = 0) -> dict:
    """Top-1 of a model minus the teacher's, in points, with a 95 % paired-bootstrap interval over the
    holdout images (both models resampled on the same images): on 500 images one point is five
    images, so the interval says whether "within 1 point" is a measurement or a coin toss."""
    d = correct.astype(np.float64) - teacher_correct.astype(np.float64)
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, len(d), size=(resamples, len(d)))].mean(1) * 100
    lo, hi = np.percentile(means, [2.5, 97.5])
    return {"top1_delta": round(100 * float(d.mean()), 2), "top1_delta_ci95": [round(float(lo), 2), round(float(hi), 2)]}


def model_file(folder: Path, name: str) -> Path | None:
    """The ONNX a peers run wrote for row `name` (None for rows without one, e.g. OpenVINO's)."""
    fixed = {"teacher fp32": "teacher.onnx", "int8 PTQ (hant-trt)": "teacher.int8.onnx",
             "int8 PTQ (ORT quantize_static)": "teacher.ort_ptq.onnx"}
    if name in fixed:
        return folder / fixed[name]
    if not name.startswith("hant-trt "):
        return None
    rest = name.removeprefix("hant-trt ")      # "[run ]2.80x" or "[run ]int8x 1.15" (build_student's folders)
    if "int8x " in rest:
        tag, value = rest.split("int8x ")
        ask = f"i{value}"
    else:
        tag, _, value = rest.rpartition(" ")
        ask = f"s{value.removesuffix('x')}"
    return folder / "students" / tag.strip() / ask / "student" / "student.onnx"


def recheck(peers_json: Path, holdout: str) -> None:
    """Holdout top-1 of every model file of an earlier peers run again (it must equal the recorded
    figure: the files are the ones measured), now with its paired interval against the teacher."""
    from hant_trt.teacher.load import load_teacher

    doc = json.loads(peers_json.read_text())
    folder = peers_json.parent
    tcfg = json.loads(next(folder.glob("students/**/run.json")).read_text())["config"]["teacher"]
    teacher = load_teacher(tcfg["model"], tcfg.get("weights"), side_of(folder / "teacher.onnx"))
    at = holdout_at(holdout, teacher.data_config)
    labels = np.concatenate([y for _, y in at(teacher.resolution)])
    t_correct = onnx_logits(folder / "teacher.onnx", at(teacher.resolution)).argmax(1) == labels
    for r in doc["rows"]:
        f = model_file(folder, r["model"])
        if f is None or not f.is_file():
            print(f"{r['model']}: no model file, left as it was")
            continue
        correct = onnx_logits(f, at(side_of(f))).argmax(1) == labels
        top1 = round(100 * float(correct.mean()), 2)
        if abs(top1 - r["top1"]) > 1e-6:
            raise SystemExit(f"{r['model']}: top-1 {top1} now, {r['top1']} recorded: not the same file or data")
        r.update(paired_delta(correct, t_correct))
        lo, hi = r["top1_delta_ci95"]
        print(f"{r['model']:<34} {r['speedup']:>6.2f}x  top-1 {top1:5.1f} ({r['top1_delta']:+.1f}, 95 % [{lo:+.1f}, {hi:+.1f}])")
    report(doc["rows"], folder, doc["cpu"], doc["holdout_images"])


def factor_range(student: dict, int8: dict) -> list[float] | None:
    """The quartiles (middle half) over the timing rounds of student / plain int8, both taken from
    the same round (None unless both rows carry `speedup_rounds` of one run, at least 2): how far
    the headline factor moves with the host from round to round. Quartiles, not the extremes: one
    disturbed round of 11 would otherwise set the range."""
    ratios = paired_ratios(student, int8)
    if not ratios:
        return None
    q1, _, q3 = statistics.quantiles(ratios, n=4, method="inclusive")
    return [round(q1, 3), round(q3, 3)]


def paired_ratios(student: dict, int8: dict) -> list[float] | None:
    """student / plain int8 in each timing round, when both rows carry the rounds of one run (≥ 2)."""
    a, b = student.get("speedup_rounds"), int8.get("speedup_rounds")
    if not a or not b or len(a) != len(b) or len(a) < 2:
        return None
    return [x / y for x, y in zip(a, b)]


def retime(peers_json: Path, rounds: int, seconds: float, threads: int | None) -> None:
    """The speedups of an earlier peers run measured again, every model file in the same rounds: on a
    host whose timings drift ±7 % between runs, more rounds of the finished models tighten the
    headline without rebuilding anything."""
    doc = json.loads(peers_json.read_text())
    folder = peers_json.parent
    files = {r["model"]: model_file(folder, r["model"]) for r in doc["rows"] if r["model"] != "teacher fp32"}
    files = {k: f for k, f in files.items() if f is not None and f.is_file()}
    for r in doc["rows"]:
        if r["model"] in files:
            r.setdefault("speedup_before", r["speedup"])
        elif r["model"] != "teacher fp32":
            print(f"{r['model']}: no model file, its speedup left as it was")
    time_rows(doc["rows"], files, folder / "teacher.onnx", rounds, seconds, threads)
    for r in doc["rows"]:
        if r["model"] in files:
            print(f"{r['model']:<34} {r['speedup']:>6.2f}x (was {r['speedup_before']:.2f}x)  top-1 {r['top1']:5.1f}")
    report(doc["rows"], folder, doc["cpu"], doc["holdout_images"])


# The issue's second target: at this multiple of plain int8's speed, how far below the teacher
STRETCH_FACTOR = 1.5


def over_int8(rows: list[dict]) -> None:
    """Every student's speed over the fastest plain int8 row, set in place (`over_int8`,
    `over_int8_quartiles`): the factor the changed operations add, for each student and not only
    the headline's. With both timed in the same rounds, the median and quartiles of the per-round
    ratios (a ratio of the two medians can fall outside their quartiles); else the ratio of the
    medians."""
    int8 = [r for r in rows if r["model"].startswith("int8 PTQ")]
    if not int8:
        return
    fastest = max(int8, key=lambda r: r["speedup"])
    for r in rows:
        if r["model"].startswith("hant-trt "):
            ratios = paired_ratios(r, fastest)
            r["over_int8"] = round(statistics.median(ratios) if ratios else r["speedup"] / fastest["speedup"], 3)
            r["over_int8_quartiles"] = factor_range(r, fastest)


def stretch(rows: list[dict], factor: float = STRETCH_FACTOR) -> dict | None:
    """The most accurate student at least `factor` times plain int8's speed (by the median over the
    rounds), with its distance to the teacher: the issue's "at 1.5x plain int8, within 2 points"."""
    t = next(r for r in rows if r["model"] == "teacher fp32")["top1"]
    fast = [r for r in rows if r.get("over_int8", 0) >= factor]
    if not fast:
        return None
    best = max(fast, key=lambda r: (r["top1"], r["speedup"]))
    return {"factor": factor, "model": best["model"], "over_int8": best["over_int8"], "top1": best["top1"],
            "below_teacher": round(t - best["top1"], 2), "delta_ci95": best.get("top1_delta_ci95")}


def headline(rows: list[dict]) -> dict:
    """The issue's figure: hant-trt's fastest model within 1 point of the teacher over the fastest
    plain int8 of the whole teacher (whatever its accuracy); and, stricter, over the fastest model
    within 1 point that needs no training (the fp32 teacher itself when every quantized teacher
    lands more than a point below it)."""
    t = next(r for r in rows if r["model"] == "teacher fp32")["top1"]
    near = [r for r in rows if r["top1"] >= t - 1.0]
    ours = max((r["speedup"] for r in near if r["model"].startswith("hant-trt ")), default=None)
    int8 = max((r["speedup"] for r in rows if r["model"].startswith("int8 PTQ")), default=None)
    ptq = max((r["speedup"] for r in near if not r["model"].startswith("hant-trt ")), default=None)
    best = next((r for r in near if r["model"].startswith("hant-trt ") and r["speedup"] == ours), {})
    fastest_int8 = next((r for r in rows if r["model"].startswith("int8 PTQ") and r["speedup"] == int8), {})
    return {"teacher_top1": t, "hant_trt_best_within_1pt": ours, "plain_int8_best": int8,
            "headline_delta_ci95": best.get("top1_delta_ci95"),
            "factor_vs_plain_int8": round(ours / int8, 3) if ours and int8 else None,
            "factor_vs_plain_int8_quartiles": factor_range(best, fastest_int8),
            "no_training_best_within_1pt": ptq,
            "factor": round(ours / ptq, 3) if ours and ptq else None,
            "at_stretch": stretch(rows)}


def report(rows: list[dict], out: Path, cpu: str, n_images: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    over_int8(rows)
    h = headline(rows)
    doc = {"cpu": cpu, "holdout_images": n_images, "rows": rows, "headline": h}
    (out / "peers.json").write_text(json.dumps(doc, indent=1))
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for i, r in enumerate(sorted(rows, key=lambda r: r["speedup"])):
        ours = r["model"].startswith("hant-trt ")
        ax.plot(r["speedup"], r["top1"], "o" if ours else "s", color="tab:blue" if ours else "gray")
        # neighbours in speed often sit at one top-1: labels alternate above and below their points
        ax.annotate(r["model"], (r["speedup"], r["top1"]), fontsize=7, xytext=(4, 3 if i % 2 else -9),
                    textcoords="offset points")
    ax.axhline(h["teacher_top1"] - 1.0, color="tab:red", lw=0.8, ls="--", label="teacher − 1 point")
    if h["plain_int8_best"]:
        ax.axvline(STRETCH_FACTOR * h["plain_int8_best"], color="tab:green", lw=0.8, ls=":",
                   label=f"{STRETCH_FACTOR:.1f}x plain int8")
    ax.set_xlabel(f"speedup over the fp32 teacher (ONNX Runtime, {cpu[:40]})")
    ax.set_ylabel(f"holdout top-1 (%), {n_images} images")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "peers.png", dpi=110)
    print(f"\nCPU: {cpu}; holdout {n_images} images; teacher top-1 {h['teacher_top1']:.1f}")
    if h["factor_vs_plain_int8"]:
        print(f"headline: hant-trt's fastest within 1 point of the teacher {h['hant_trt_best_within_1pt']:.2f}x = "
              f"{h['factor_vs_plain_int8']:.2f}x plain int8's speed ({h['plain_int8_best']:.2f}x, any accuracy)")
        if h.get("factor_vs_plain_int8_quartiles"):
            lo, hi = h["factor_vs_plain_int8_quartiles"]
            print(f"          that factor per timing round (student and int8 timed in the same round), "
                  f"middle half: {lo:.2f}x to {hi:.2f}x")
        if h.get("headline_delta_ci95"):
            lo, hi = h["headline_delta_ci95"]
            print(f"          that student's top-1 minus the teacher's: 95 % paired-bootstrap interval "
                  f"[{lo:+.1f}, {hi:+.1f}] points")
    if h["factor"]:
        print(f"          over the fastest no-training model within 1 point ({h['no_training_best_within_1pt']:.2f}x): "
              f"{h['factor']:.2f}x")
    else:
        print(f"headline: not defined (hant-trt within 1 point: {h['hant_trt_best_within_1pt']}, "
              f"no-training within 1 point: {h['no_training_best_within_1pt']})")
    students = [r for r in rows if "over_int8" in r]
    if students:
        print("over plain int8 (median; middle half of the rounds), top-1 − teacher:")
        for r in sorted(students, key=lambda r: r["speedup"]):
            q = r.get("over_int8_quartiles")
            span = f" ({q[0]:.2f}–{q[1]:.2f})" if q else ""
            print(f"  {r['model']:<34} {r['over_int8']:.2f}x{span}  {r['top1'] - h['teacher_top1']:+.1f}")
    s = h["at_stretch"]
    if s:
        print(f"at ≥ {s['factor']:.1f}x plain int8's speed: {s['model']} ({s['over_int8']:.2f}x) at "
              f"{-s['below_teacher']:+.1f} points")
    else:
        print(f"at ≥ {STRETCH_FACTOR:.1f}x plain int8's speed: no student measured that fast")
    print(f"wrote {out / 'peers.json'} and {out / 'peers.png'}")


if __name__ == "__main__":
    main()
