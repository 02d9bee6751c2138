"""The demo's asked vs measured speedup on a quiet machine and with CPU-bound processes beside it.

    .venv/bin/python benchmarks/bench_load.py [--load 1] [--workdir /tmp/hant-trt-load]

Runs the embedded demo (`pipeline.demo_config`) twice from empty run directories and empty latency
tables: once alone, once with `--load` busy-looping processes started before it and killed after.
Prints, per condition, what the search was asked and predicted, what the build measured side by
side, the profile's teacher against the build's, and the ratio measured/asked. Users run on shared
CI runners and VMs: the profile must give the same student whatever else runs.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _spin() -> None:
    while True:
        pass


def run_demo(work: Path, load: int, steps: int | None) -> dict:
    import os

    from hant_trt.pipeline import demo_config, run_pipeline

    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    cfg = demo_config(str(work / "run"))
    cfg.profile.lut = str(work / "latency.sqlite")
    if steps is not None:
        cfg.distill.steps, cfg.build.finetune_steps = steps, min(cfg.build.finetune_steps, steps)
    os.environ["HANT_TRT_NO_PROGRESS"] = "1"
    procs = [mp.Process(target=_spin, daemon=True) for _ in range(load)]
    for p in procs:
        p.start()
    t0 = time.time()
    try:
        run_pipeline(cfg, log=lambda m: print(f"  [{'load' if load else 'quiet'}] {m}", flush=True),
                     engines_dir=work / "engines")
    finally:
        for p in procs:
            p.kill()
    run = work / "run"
    build = json.loads((run / "build.json").read_text())
    sol = json.loads((run / "solution.json").read_text())
    prof = json.loads((run / "run.json").read_text())["stages"]["profile"]["info"]
    teacher_s = sol["teacher_s"][sol["device"]] if isinstance(sol.get("teacher_s"), dict) else sol.get("teacher_s")
    predicted = sol["predicted_s"][sol["device"]] if isinstance(sol.get("predicted_s"), dict) else sol.get("predicted_s")
    return {"load": load, "seconds": round(time.time() - t0, 1), "budget": cfg.search.budget,
            "asked": round(teacher_s / predicted, 3), "measured": round(build["speedup"], 3),
            "profile_teacher_ms": prof.get("teacher_ms"), "threads": prof.get("threads"), "teacher_drift_pct": prof.get("teacher_drift_pct"),
            "build_teacher_ms": round(build["teacher_latency_ms"], 4),
            "build_student_ms": round(build["student_latency_ms"], 4), "agreement": build.get("agreement")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--load", type=int, default=1, help="busy processes beside the loaded run (default 1)")
    ap.add_argument("--workdir", default="/tmp/hant-trt-load")
    ap.add_argument("--steps", type=int, default=None, help="distillation steps (default: the demo's)")
    ap.add_argument("--only", choices=("quiet", "loaded"), default=None, help="run one condition only")
    a = ap.parse_args()
    work = Path(a.workdir)
    rows = [run_demo(work / name, load, a.steps) for name, load in (("quiet", 0), ("loaded", a.load))
            if a.only in (None, name)]
    print(f"\n{'condition':<10} {'asked':>6} {'measured':>9} {'meas/asked':>10} {'profile teacher':>16} "
          f"{'build teacher':>14} {'drift':>6} {'threads':>7} {'agreement':>9} {'wall':>6}")
    for r in rows:
        name = f"load {r['load']}" if r["load"] else "quiet"
        drift = f"{r['teacher_drift_pct']:+.0f}%" if r["teacher_drift_pct"] is not None else "—"
        print(f"{name:<10} {r['asked']:>5.2f}x {r['measured']:>8.2f}x {r['measured'] / r['asked']:>10.3f} "
              f"{r['profile_teacher_ms']:>13.3f} ms {r['build_teacher_ms']:>11.3f} ms {drift:>6} "
              f"{r['threads'] or '—':>7} {r['agreement']:>8.1f}% {r['seconds']:>5.0f}s")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
