"""`run` and `demo`: every stage in order over one run directory; finished stages are skipped."""

from __future__ import annotations

import time

from .config import RunConfig, validate
from .errors import UserError
from .rundir import STAGES, RunDir


def stage_functions(engines_dir=None):
    from .deploy.stage import run_build
    from .distill.stage import run_distill, run_score
    from .latency.stage import run_profile
    from .search.stage import run_search
    from .teacher.stage import run_teacher

    return {
        "teacher": run_teacher,
        "distill": lambda run, cfg: run_distill(run, cfg, resume=True),
        "score": run_score,
        "profile": run_profile,
        "search": run_search,
        "build": lambda run, cfg: run_build(run, cfg, engines_dir),
    }


def check_stages(start: str | None = None, stop: str | None = None) -> None:
    for option, name in (("--from", start), ("--to", stop)):
        if name is not None and name not in STAGES:
            raise UserError(f"{option}: unknown stage '{name}' (stages: {', '.join(STAGES)})")
    if start is not None and stop is not None and STAGES.index(stop) < STAGES.index(start):
        raise UserError(f"--to {stop} comes before --from {start} (stages: {', '.join(STAGES)})")


def run_pipeline(cfg: RunConfig, start: str | None = None, stop: str | None = None, log=print,
                 engines_dir=None) -> RunDir:
    """Run the stages from `start` (default: first unfinished) to `stop` (default: build).
    engines_dir: where the build writes engines (default: runfiles.default_engines_dir())."""
    check_stages(start, stop)
    validate(cfg)
    run = RunDir(cfg.run_dir)
    run.update(config=cfg.to_dict())
    if start is not None:
        run.invalidate_from(start)
    fns = stage_functions(engines_dir)
    last = STAGES.index(stop) if stop else len(STAGES) - 1
    for name in STAGES[: last + 1]:
        t0 = time.time()
        before = run.stage(name)
        fns[name](run, cfg)
        took = time.time() - t0
        after = run.stage(name)
        # a stage redone in under a second (its rows all cached) is still redone: compare the record
        same = before.status == "done" and (after.fingerprint, after.finished) == (before.fingerprint, before.finished)
        log(f"[{name}] {'skipped (done)' if same else f'done in {took:.0f}s'}")
    return run


def demo_config(run_dir: str = "runs/demo") -> RunConfig:
    """The embedded default: offline Lite0, bundled photos, `tiny` preset, ORT on the CPU, sized to
    finish in about ten minutes on two cores."""
    cfg = RunConfig(run_dir=run_dir)
    cfg.teacher.model = "efficientnet_lite0"
    cfg.teacher.weights = "default"
    cfg.data.train = "embedded"
    cfg.distill.preset = "tiny"
    cfg.distill.steps = 120
    cfg.distill.batch_size = 16
    cfg.distill.resolution = 128
    cfg.distill.checkpoint_every = 30
    cfg.score.max_images = 64
    cfg.profile.backend = "ort"
    cfg.profile.precisions = ["fp32", "int8"]   # int8 per layer in ORT's CPU layout: what wins there
    cfg.profile.max_seconds = 0.5
    cfg.search.budget = "0.7x"
    cfg.search.sweep = 6
    cfg.build.finetune_steps = 40
    cfg.build.finetune_lr = 1e-4    # 40 steps: at the 1200-step default's 3e-4 the fine-tune overshoots (kept assembled)
    cfg.build.full_res_steps = 10   # a quarter, as the 1200-step default's 300
    cfg.build.batch_size = 16
    return cfg
