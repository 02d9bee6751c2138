"""Subcommands over a run directory and tools (bench, lut, export-triton).

Each handler only maps arguments onto the package API; cli.py registers them (`register`) and
owns nothing else: the config plumbing every handler shares (`open_run`, `apply_overrides`) is here.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from .errors import UserError

STAGE_HELP = {
    "teacher": "load a timm teacher and print its slot table",
    "distill": "phase 1: distil every candidate op of every slot (layer-wise, shared teacher)",
    "score": "swap-one scoring of every distilled candidate",
    "profile": "measure every unique candidate's latency on the target backend (latency table)",
    "search": "pick one candidate per slot under a latency budget (integer program)",
    "build": "assemble, fine-tune, export, verify and benchmark the student; Triton repo; report",
    "run": "every stage in order from a config file (resumable)",
    "demo": "the whole pipeline on the embedded default (offline Lite0, bundled photos, tiny, ORT CPU)",
    "bench": "trtexec-like benchmark of an .onnx or .plan",
    "lut": "list, export or clear the latency table",
    "export-triton": "write a Triton model repository for an .onnx or .plan",
}


# -- config plumbing ------------------------------------------------------------------------------
def _parse_value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def apply_overrides(cfg, pairs: list[str], check: bool = True):
    """`section.key=value` overrides, then (check) every value checked. A value is read as JSON when
    it parses, else as a string; string-valued keys keep the text as given (engine_name=123)."""
    import dataclasses

    from .config import RULES, validate

    for pair in pairs or []:
        if "=" not in pair:
            raise UserError(f"--set expects section.key=value, got '{pair}'")
        key, value = pair.split("=", 1)
        target, section = cfg, ""
        parts = key.split(".")
        for p in parts[:-1]:
            if not hasattr(target, p) or not dataclasses.is_dataclass(getattr(target, p)):
                raise UserError(f"--set: unknown config section '{p}' in '{key}' "
                                f"(sections: {', '.join(s for s in RULES if s)})")
            target, section = getattr(target, p), p
        name = parts[-1]
        if not hasattr(target, name) or name not in RULES.get(section, {}):
            if dataclasses.is_dataclass(getattr(target, name, None)):
                raise UserError(f"--set {pair}: '{name}' is a section; set one of its keys ({key}.KEY=VALUE)")
            raise UserError(f"--set: unknown config key '{key}'")
        parsed = _parse_value(value)
        if RULES[section][name].kind is str and parsed is not None and not isinstance(parsed, str):
            parsed = value
        setattr(target, name, parsed)
    return validate(cfg) if check else cfg


def saved_config(root: Path):
    """The RunConfig saved in run directory `root`, or None when there is none (nothing written)."""
    from . import config as config_mod
    from .rundir import MANIFEST, RunDir

    if not (root / MANIFEST).is_file():
        return None
    saved = RunDir(root, create=False).manifest().get("config") or {}
    return config_mod.from_dict(saved, check=False) if saved else None


def open_run(args, flags=None, create: bool = True):
    """RunDir + RunConfig for a stage subcommand: config from --config, else the run's own, then
    --set and the subcommand's own options (`flags(cfg)`). Every value is checked before the run
    directory is created or its run.json written, so a refused value is never saved."""
    from . import config as config_mod
    from .rundir import RunDir

    root = Path(args.run_dir)
    if getattr(args, "config", None):
        cfg = config_mod.load(args.config, check=False)
    else:
        cfg = saved_config(root) or config_mod.RunConfig()
    cfg.run_dir = str(root)
    apply_overrides(cfg, getattr(args, "set", None), check=False)
    if flags:
        flags(cfg)
    config_mod.validate(cfg)
    run = RunDir(root, create=create)
    run.update(config=cfg.to_dict())
    return run, cfg


def _open(args, flags=None):
    return open_run(args, flags)


def _flags(args, mapping: dict):
    """flags(cfg) for `open_run`: every option of `mapping` given on the command line (not None, not
    empty) sets its "section.key", through a converter where the value is (key, converter)."""
    def flags(cfg):
        for opt, target in mapping.items():
            key, convert = target if isinstance(target, tuple) else (target, None)
            value = getattr(args, opt, None)
            if value is None or value == "":
                continue
            section, field = key.split(".")
            setattr(getattr(cfg, section), field, convert(value) if convert else value)
    return flags


def _slot_list(text: str) -> list[int]:
    try:
        return [int(s) for s in text.split(",")]
    except ValueError:
        raise UserError(f"--slots must be comma-separated slot indices such as 1,4, got {text!r}") from None


# -- stages -------------------------------------------------------------------------------------
def cmd_distill(args) -> int:
    from .distill.stage import run_distill

    run, cfg = _open(args, _flags(args, {"preset": "distill.preset", "steps": "distill.steps",
                                         "slots": ("distill.slots", _slot_list)}))
    if args.restart:
        run.invalidate_from("distill")
    info = run_distill(run, cfg, resume=args.resume, restart=args.restart)
    print(f"distill: {info.get('candidates')} candidates, {info.get('steps')} steps → {run.root / 'candidates'}")
    return 0


def cmd_score(args) -> int:
    from .distill.stage import run_score

    run, cfg = _open(args)
    info = run_score(run, cfg)
    print(f"score: {info.get('rows')} rows on {info.get('eval_images')} images → {run.root / 'scores.csv'}")
    return 0


def cmd_profile(args) -> int:
    from .latency.stage import run_profile

    run, cfg = _open(args, _flags(args, {"backend": "profile.backend", "lut": "profile.lut",
                                         "precision": ("profile.precisions", lambda v: v.split(","))}))
    info = run_profile(run, cfg)
    print(json.dumps(info, indent=2))
    return 0


def cmd_search(args) -> int:
    from .search.stage import format_table, run_search

    run, cfg = _open(args, _flags(args, {"budget": "search.budget", "sweep": "search.sweep",
                                         "metric": "search.metric"}))
    solution = run_search(run, cfg)
    print(format_table(solution))
    return 0


def cmd_build(args) -> int:
    from .deploy.stage import run_build

    _check_engines_dir(args)
    run, cfg = _open(args)
    info = run_build(run, cfg, args.engines_dir)
    print(summary_lines(info))
    return 0


def _check_engines_dir(args) -> None:
    if args.engines_dir:
        from .atomic import check_output_dir

        check_output_dir(args.engines_dir, "--engines-dir")


def _engines_arg(p) -> None:
    p.add_argument("--engines-dir", help="where the build writes engines (default: engines/ of the checkout, "
                                         "else ./engines)")


def summary_lines(info: dict) -> str:
    lines = ["", "=== teacher vs student ==="]
    t, s = info.get("teacher_latency_ms"), info.get("student_latency_ms")
    if t and s:
        lines.append(f"latency ({info.get('backend', '?')}, batch {info.get('batch', 1)}): "
                     f"teacher {t:.3f} ms, student {s:.3f} ms, speedup {t / s:.2f}x")
        q = info.get("plain_int8_speedup")
        if info.get("teacher_resolution"):
            # the profile timed the teacher at the student's side only: no product of the two
            lines.append(f"  teacher at {info['teacher_resolution']} px (build.teacher_resolution), student at "
                         f"{info['student_resolution']} px")
            if q:
                lines.append(f"plain int8 of the whole teacher on this machine (profile, at "
                             f"{info['student_resolution']} px): {q:.2f}x")
        elif q:
            lines.append(f"plain int8 of the whole teacher on this machine (profile): {q:.2f}x — this student is "
                         f"{t / s / q:.2f}x that")
    if "agreement" in info:
        lines.append(f"top-1 agreement with the teacher: {info['agreement']:.1f}% "
                     f"(assembled, before fine-tune: {info.get('agreement_assembled', float('nan')):.1f}%)")
        if info.get("eval_split_trained_on"):
            lines.append("  (on the eval split, which build.finetune_images = \"all\" trained on: not a held-out figure)")
    if info.get("student_top1") is not None:
        lines.append(f"top-1: teacher {info['teacher_top1']:.1f}%, student {info['student_top1']:.1f}%")
    for key in ("onnx", "engine", "triton", "report"):
        if info.get(key):
            lines.append(f"{key}: {info[key]}")
    return "\n".join(lines)


def cmd_run(args) -> int:
    from . import config as config_mod
    from .pipeline import check_stages, run_pipeline

    check_stages(args.start, args.stop)
    cfg = config_mod.load(args.config, check=False)     # checked after --set, which may fix a value
    if args.run_dir:
        cfg.run_dir = args.run_dir
    apply_overrides(cfg, args.set)
    _check_engines_dir(args)
    run = run_pipeline(cfg, start=args.start, stop=args.stop, engines_dir=args.engines_dir)
    info = run.stage("build").info if run.stage("build").status == "done" else None
    if info:
        print(summary_lines(info))
    return 0


def cmd_demo(args) -> int:
    from .pipeline import check_stages, demo_config, run_pipeline

    check_stages(args.start)
    cfg = demo_config(args.run_dir)
    apply_overrides(cfg, args.set)
    print(f"hant-trt demo: offline EfficientNet-Lite0, embedded photos, '{cfg.distill.preset}' preset, "
          f"{cfg.profile.backend} backend → {cfg.run_dir}", flush=True)
    _check_engines_dir(args)
    run = run_pipeline(cfg, start=args.start, engines_dir=args.engines_dir)
    print(summary_lines(run.stage("build").info or {}))
    return 0


# -- tools --------------------------------------------------------------------------------------
def cmd_bench(args) -> int:
    from .atomic import check_output_file
    from .latency.bench import format_summary, run_bench

    if args.export_times:
        check_output_file(args.export_times, "--export-times")
    result = run_bench(args.model, backend=args.backend, warmup_ms=args.warmup, iterations=args.iterations,
                       duration_s=args.duration, batch=args.batch, export_times=args.export_times)
    print(format_summary(result))
    return 0


def cmd_lut(args) -> int:
    from .atomic import check_output_file
    from .latency.lut import LatencyTable, default_lut_path

    if args.action == "export":
        if not args.output:
            raise UserError("lut export needs --output FILE (.csv or .json)")
        check_output_file(args.output, "lut export --output")
    table = LatencyTable(args.lut or default_lut_path())
    if args.action == "list":
        rows = table.rows()
        for r in rows:
            print(r)
        print(f"{len(rows)} rows in {table.path}", file=sys.stderr)
    elif args.action == "export":
        (table.export_json if args.output.endswith(".json") else table.export_csv)(args.output)
        print(f"exported to {args.output}")
    elif args.action == "clear":
        n = table.clear()
        print(f"cleared {n} rows from {table.path}")
    return 0


def _int_option(option: str, text: str | None, default=None, minimum: int = 0):
    """An integer option read here rather than by argparse, so a bad value is a UserError."""
    if text is None:
        return default
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or value < minimum:
        raise UserError(f"{option} must be an integer >= {minimum}, got {text!r}")
    return value


def _check_ort_loads(path) -> None:
    """An .onnx that ONNX Runtime cannot load would make a repository Triton cannot serve."""
    from pathlib import Path

    p = Path(path)
    if p.suffix != ".onnx" or not p.is_file():
        return                          # export_triton names what is wrong with those
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    try:
        ort.InferenceSession(str(p), so, providers=["CPUExecutionProvider"])
    except Exception as exc:  # ORT's Fail/InvalidGraph/InvalidProtobuf...
        text = " ".join(str(exc).split()) or type(exc).__name__
        raise UserError(f"ONNX Runtime cannot load {p.name}: {text[:200]}") from None


def cmd_export_triton(args) -> int:
    from .atomic import check_output_dir
    from .deploy.triton import export_triton

    max_batch = _int_option("--max-batch-size", args.max_batch_size)
    count = _int_option("--instance-count", args.instance_count, 1, minimum=1)
    check_output_dir(args.repo, "model repository")
    _check_ort_loads(args.model)
    path = export_triton(args.model, args.repo, args.name,
                         max_batch_size=max_batch, instance_kind=args.instance_kind, instance_count=count)
    print(f"Triton model repository: {path}")
    return 0


def register(sub, stage_parser) -> None:
    def distill_args(p):
        p.add_argument("--preset", help="candidate preset: tiny | tiny-fused | small | paper")
        p.add_argument("--steps", type=int, help="training steps")
        p.add_argument("--slots", help="comma-separated slot indices (default: all)")
        p.add_argument("--resume", action="store_true", help="continue a killed run from its last checkpoint")
        p.add_argument("--restart", action="store_true", help="discard a partial run and start again")

    stage_parser(sub, "distill", distill_args).set_defaults(func=cmd_distill)
    stage_parser(sub, "score").set_defaults(func=cmd_score)

    def profile_args(p):
        p.add_argument("--backend", help="ort | torch | tensorrt")
        p.add_argument("--precision", help="comma-separated: fp32,fp16,int8")
        p.add_argument("--lut", help="latency table path (default ~/.cache/hant-trt/latency.sqlite)")

    stage_parser(sub, "profile", profile_args).set_defaults(func=cmd_profile)

    def search_args(p):
        p.add_argument("--budget", help="0.7x (of the teacher), 2ms, 0.002s, speedup=1.5")
        p.add_argument("--sweep", type=int, help="also solve N budgets and write the Pareto frontier")
        p.add_argument("--metric", help="kl (default) | agreement | local_mse | top1")

    stage_parser(sub, "search", search_args).set_defaults(func=cmd_search)
    stage_parser(sub, "build", _engines_arg).set_defaults(func=cmd_build)

    def pipeline_args(p, run_dir_help: str, run_dir_default=None):
        p.add_argument("--run-dir", default=run_dir_default, help=run_dir_help)
        p.add_argument("--from", dest="start", help="rerun from this stage on")
        p.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE")
        _engines_arg(p)

    r = sub.add_parser("run", help=STAGE_HELP["run"], description=STAGE_HELP["run"])
    r.add_argument("config", help="TOML/JSON run config")
    pipeline_args(r, "override the config's run_dir")
    r.add_argument("--to", dest="stop", help="stop after this stage")
    r.set_defaults(func=cmd_run)

    dm = sub.add_parser("demo", help=STAGE_HELP["demo"], description=STAGE_HELP["demo"])
    pipeline_args(dm, "the demo's run directory (default runs/demo)", "runs/demo")
    dm.set_defaults(func=cmd_demo)

    b = sub.add_parser("bench", help=STAGE_HELP["bench"], description=STAGE_HELP["bench"])
    b.add_argument("model", help="MODEL.onnx or MODEL.plan")
    b.add_argument("--backend", default=None, help="ort | torch | tensorrt (default: from the file type)")
    b.add_argument("--warmup", type=float, default=200.0, help="warm-up in ms (default 200)")
    b.add_argument("--iterations", type=int, default=10, help="at least this many iterations (default 10)")
    b.add_argument("--duration", type=float, default=3.0, help="at least this many seconds (default 3)")
    b.add_argument("--batch", type=int, default=None, help="batch size for a dynamic batch dimension")
    b.add_argument("--export-times", help="write per-iteration records (trtexec keys) to this JSON file")
    b.set_defaults(func=cmd_bench)

    lt = sub.add_parser("lut", help=STAGE_HELP["lut"], description=STAGE_HELP["lut"])
    lt.add_argument("action", choices=["list", "export", "clear"])
    lt.add_argument("--lut", help="table path (default ~/.cache/hant-trt/latency.sqlite)")
    lt.add_argument("--output", help="export target (.csv or .json)")
    lt.set_defaults(func=cmd_lut)

    et = sub.add_parser("export-triton", help=STAGE_HELP["export-triton"], description=STAGE_HELP["export-triton"])
    et.add_argument("model", help="MODEL.onnx or MODEL.plan")
    et.add_argument("repo", help="model repository folder")
    et.add_argument("--name", default="hant_student", help="model name in the repository")
    et.add_argument("--max-batch-size", default=None, metavar="N",
                    help="Triton max_batch_size (default: from the model: 8 with a dynamic batch "
                         "dimension, 0 = batching off for a static one)")
    et.add_argument("--instance-kind", default=None, metavar="KIND",
                    help="KIND_GPU | KIND_CPU | KIND_AUTO (default: KIND_GPU for a .plan, KIND_CPU for .onnx)")
    et.add_argument("--instance-count", default=None, metavar="N",
                    help="model instances per device (integer >= 1, default 1)")
    et.set_defaults(func=cmd_export_triton)
