"""What fp32 parts inside an int8 student cost: a run's chosen student, and the same with the
named parts (the stem, the head, slot indices) at int8, each built untrained with its int8 plan
(`student.plan.plan_onnx`) and timed beside the fp32 teacher in the same rounds (ORT CPU).

    .venv/bin/python benchmarks/fp32_island.py RUN [--parts stem,0] [--rounds 9]
    .venv/bin/python benchmarks/fp32_island.py RUN --in-teacher stem,0,stem+0,1 [--rounds 25]

--in-teacher: the whole teacher at int8 beside itself with each named island (a part, or parts
joined by +) at fp32, in the same rounds; printed per island: what it costs measured (median
and range over rounds of island − int8 teacher) and what the search's int8 latency model
(`tables.build_problem`, `ilp.predict`) says it costs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

from hant_trt.config import from_dict
from hant_trt.latency.backends import get_backend
from hant_trt.latency.export import export_onnx
from hant_trt.latency.paired import time_in_rounds
from hant_trt.quant.layouts import layout_for
from hant_trt.runfiles import SOLUTION
from hant_trt.student.plan import plan_onnx
from hant_trt.search.ilp import Solution
from hant_trt.teacher.stage import load_from_config


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run")
    ap.add_argument("--parts", default="stem,0", help="stem, head and slot numbers to put at int8")
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--in-teacher", default=None, metavar="ISLANDS",
                    help="islands (stem, head, slot numbers; + joins parts) timed in the int8 teacher")
    a = ap.parse_args()
    run = Path(a.run)
    cfg = from_dict(json.loads((run / "run.json").read_text())["config"])
    teacher, d = load_from_config(cfg)
    shape = (1, 3, teacher.resolution, teacher.resolution)
    if a.in_teacher:
        return in_teacher(run, cfg, d, shape, a.in_teacher.split(","), a.rounds, a.threads)
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


def in_teacher(run: Path, cfg, d, shape: tuple, islands: list[str], rounds: int, threads: int) -> None:
    from hant_trt.search.ilp import predict
    from hant_trt.search.tables import build_problem, load_tables, read_n_slots, select_devices

    tables = load_tables(run, cfg.search.metric)
    n = read_n_slots(run / "teacher.json")
    dev = select_devices(tables.fixed, None)[0]
    p = build_problem(tables, n, "speedup=1", [dev], latency_model=cfg.search.latency_model)
    keep = {(o.first, o.precision): o for o in p.options if o.op == "keep" and o.first == o.last}
    fixed = {(o.op, o.precision): o for o in p.fixed_options}
    if len(fixed) != 4:
        raise SystemExit(f"{run} has no int8 model of the stem and head: profile it with fp32 and int8")

    def selection(fp32: set[str]):
        choices = [keep[(i, "fp32" if str(i) in fp32 else "int8")] for i in range(n)]
        parts = [fixed[(x, "fp32" if x in fp32 else "int8")] for x in ("stem", "head")]
        return SimpleNamespace(choices=choices, fixed_choices=parts)

    sels = {"int8 teacher": selection(set())} | {i: selection(set(i.split("+"))) for i in islands}
    tmp, layout, be = Path(tempfile.mkdtemp()), layout_for(cfg.profile), get_backend("ort", threads=threads)
    preps = [be.prepare(plan_onnx(d, s, shape, layout, tmp / f"m{k}.onnx")) for k, s in enumerate(sels.values())]
    times = time_in_rounds(be, preps, rounds, max_seconds=0.5)
    base, base_pred = times[0], predict(p, sels["int8 teacher"].choices, sels["int8 teacher"].fixed_choices, dev)
    print(f"int8 teacher: {statistics.median(base) * 1e3:.3f} ms measured, {base_pred * 1e3:.3f} ms predicted")
    for (name, s), t in zip(list(sels.items())[1:], times[1:]):
        extra = [a - b for a, b in zip(t, base)]
        pred = predict(p, s.choices, s.fixed_choices, dev) - base_pred
        print(f"{name:>12} at fp32: {statistics.median(extra) * 1e6:+6.0f} us measured "
              f"({min(extra) * 1e6:+.0f} … {max(extra) * 1e6:+.0f} over rounds), {pred * 1e6:+6.0f} us predicted")


if __name__ == "__main__":
    main()
