"""The search with budget calibration on the engine (`search.calibrate_rounds = 3`) at several
budgets of a run; prints each round: the budget given to the ILP, predicted and measured latency.
Writes the run's solution.json (the last budget's).

    HANT_TRT_LUT=runs/lut_small.sqlite .venv/bin/python benchmarks/search_calibrated.py runs/lite0_dev_small_spans 1.3,1.55,1.8
"""
import sys
from pathlib import Path

from hant_trt.config import from_dict
from hant_trt.rundir import RunDir
from hant_trt.search.stage import run_search

run = RunDir(Path(sys.argv[1]), create=False)
cfg = from_dict(run.manifest()["config"])
cfg.search.calibrate_rounds, cfg.search.sweep = 3, 0
for sp in sys.argv[2].split(","):
    cfg.search.budget = f"speedup={sp}"
    sol = run_search(run, cfg)
    teacher_ms = sol.teacher_s[sol.device] * 1e3
    print(sp, [f"{o.first}-{o.last}:{o.op}" for o in sol.choices if o.op != "keep"], flush=True)
    for r in run.stage("search").info["calibration"]:
        print(f"   budget {r['budget_ms']:.3f} ms, predicted {r['predicted_ms']:.3f}, measured {r['measured_ms']:.3f} "
              f"→ {teacher_ms / r['measured_ms']:.2f}x, score {r['score']:.3f}", flush=True)
