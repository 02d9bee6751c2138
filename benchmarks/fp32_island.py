"""What fp32 parts inside an int8 student cost: a run's chosen student, and the same with the
named parts (the stem, the head, slot indices) at int8, each built untrained with its int8 plan
(`search.calibrate.plan_onnx`) and timed beside the fp32 teacher in the same rounds (ORT CPU).

    .venv/bin/python benchmarks/fp32_island.py RUN [--parts stem,0] [--rounds 9]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from dataclasses import replace
from pathlib import Path

from hant_trt.config import from_dict
from hant_trt.latency.backends import get_backend
from hant_trt.latency.export import export_onnx
from hant_trt.latency.paired import time_in_rounds
from hant_trt.quant.layouts import layout_for
from hant_trt.runfiles import SOLUTION
from hant_trt.search.calibrate import plan_onnx
from hant_trt.search.ilp import Solution
from hant_trt.teacher.stage import load_from_config


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run")
    ap.add_argument("--parts", default="stem,0", help="stem, head and slot numbers to put at int8")
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    run = Path(a.run)
    cfg = from_dict(json.loads((run / "run.json").read_text())["config"])
    teacher, d = load_from_config(cfg)
    shape = (1, 3, teacher.resolution, teacher.resolution)
    sol = Solution.from_dict(json.loads((run / SOLUTION).read_text()))
    parts = set(a.parts.split(","))
    int8 = replace(sol, choices=[replace(o, precision="int8") if str(o.first) in parts and o.op == "keep" else o
                                 for o in sol.choices],
                   fixed_choices=[replace(o, precision="int8") if o.op in parts else o for o in sol.fixed_choices])
    tmp, layout, be = Path(tempfile.mkdtemp()), layout_for(cfg.profile), get_backend("ort", threads=a.threads)
    models = {"teacher": be.prepare(export_onnx(teacher.model.eval(), shape, tmp / "teacher.onnx")),
              "as chosen": be.prepare(plan_onnx(d, sol, shape, layout, tmp / "chosen.onnx")),
              f"{a.parts} at int8": be.prepare(plan_onnx(d, int8, shape, layout, tmp / "int8.onnx"))}
    names = list(models)
    times = dict(zip(names, time_in_rounds(be, [models[n] for n in names], a.rounds, max_seconds=1.0)))
    for n in names[1:]:
        print(f"{n}: {statistics.median(t / s for t, s in zip(times['teacher'], times[n])):.2f}x the teacher")


if __name__ == "__main__":
    main()
