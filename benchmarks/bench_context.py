"""Asked vs measured speed of the search's students, with standalone latencies and with in-context
ones (`profile.context = "model"`), every student timed in one run beside the teacher.

    .venv/bin/python benchmarks/bench_context.py RUN_ALONE RUN_CONTEXT [--budgets speedup=1.3,int8x=1.5]
        [--speedups 1.3,1.55,1.8,2.1] [--rounds 7] [--metric kl] [--out FILE.json]

RUN_ALONE and RUN_CONTEXT are the same phase-1 run profiled both ways (`hant-trt profile
RUN_CONTEXT --set profile.context=model`). For each budget the ILP is solved on each run's
tables; each student is built from its op strings with its int8 plan (weights and Q/DQ ranges do
not change latency), exported, and timed on ORT CPU right after the fp32 teacher in `--rounds`
alternating rounds, the whole teacher at int8 (the profile's layout) among them: a student's
speedup is the median of its paired ratios to the teacher, its int8x the median of its ratios to
the int8 teacher in the same rounds. Printed: asked, predicted by the table, measured, the error
of measured against predicted, and what was replaced.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

from hant_trt import atomic
from hant_trt.config import from_dict
from hant_trt.latency.backends import get_backend
from hant_trt.latency.export import export_onnx
from hant_trt.latency.paired import time_in_rounds
from hant_trt.quant.layouts import layout_for, quantize_int8
from hant_trt.student.plan import plan_onnx
from hant_trt.search.ilp import solve
from hant_trt.search.tables import build_problem, load_tables, select_devices
from hant_trt.teacher.stage import load_from_config


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run_alone")
    ap.add_argument("run_context")
    ap.add_argument("--budgets", default=None, help="comma-separated search budgets (speedup=…, int8x=…)")
    ap.add_argument("--speedups", default="1.3,1.55,1.8,2.1", help="speedup=… budgets, when --budgets is not given")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--seconds", type=float, default=1.0, help="timing cap per model per round")
    ap.add_argument("--metric", default="kl")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    runs = {"alone": Path(a.run_alone), "context": Path(a.run_context)}
    cfg = from_dict(json.loads((runs["alone"] / "run.json").read_text())["config"])
    teacher, d = load_from_config(cfg)
    shape = (1, 3, teacher.resolution, teacher.resolution)
    be = get_backend("ort", threads=a.threads)
    layout = layout_for(cfg.profile)
    tmp = Path(tempfile.mkdtemp(prefix="hant_ctx_"))
    budgets = (a.budgets.split(",") if a.budgets else [f"speedup={s}" for s in a.speedups.split(",")])

    models, rows = {"teacher": be.prepare(export_onnx(teacher.model.eval(), shape, tmp / "teacher.onnx"))}, []
    if "int8" in cfg.profile.precisions:
        models["int8"] = be.prepare(quantize_int8(teacher.model.eval(), shape, tmp / "teacher.int8.onnx",
                                                  layout=layout), "int8")
    for kind, run in runs.items():
        tables = load_tables(run, a.metric)
        dev = select_devices(tables.fixed, None)[0]
        fx = tables.fixed[dev]
        for budget in budgets:
            sol = solve(build_problem(tables, len(d.slots), budget, [dev]), "cbc", 60)
            name = f"{kind}:{budget}"
            models[name] = be.prepare(plan_onnx(d, sol, shape, layout, tmp / f"{kind}_{len(rows)}.onnx"))
            rows.append({"kind": kind, "asked": budget, "name": name,
                         "predicted": fx.teacher_s / sol.predicted_s[dev],
                         "predicted_int8x": (fx.teacher_int8_s / sol.predicted_s[dev]) if fx.teacher_int8_s else None,
                         "replaced": [f"{o.first}{'-' + str(o.last) if o.last != o.first else ''}:{o.op}"
                                      f"{'@int8' if o.precision == 'int8' else ''}"
                                      for o in sol.choices if o.op != "keep"]})
    names = list(models)
    times = dict(zip(names, time_in_rounds(be, [models[n] for n in names], a.rounds, max_seconds=a.seconds,
                                           on_round=lambda r: print(f"round {r + 1}/{a.rounds} done", flush=True))))

    def over(ref: str, name: str) -> float:
        return statistics.median(t / s for t, s in zip(times[ref], times[name]))

    print(f"\nteacher {statistics.median(times['teacher']) * 1e3:.3f} ms"
          + (f", int8 teacher {over('teacher', 'int8'):.2f}x" if "int8" in times else "")
          + f"; {a.rounds} rounds, every model once per round\n")
    print(f"{'latencies':<9} {'asked':>12} {'predicted':>9} {'measured':>9} {'error':>7}  replaced")
    for row in rows:
        row["measured"] = over("teacher", row["name"])
        row["measured_int8x"] = over("int8", row["name"]) if "int8" in times else None
        row["error_pct"] = 100 * (row["measured"] - row["predicted"]) / row["predicted"]
        print(f"{row['kind']:<9} {row['asked']:>12} {row['predicted']:>8.2f}x {row['measured']:>8.2f}x "
              f"{row['error_pct']:>+6.1f}%  {len(row['replaced'])}: {', '.join(row['replaced'])}")
    for kind in runs:
        errs = [r["error_pct"] for r in rows if r["kind"] == kind]
        print(f"{kind}: measured − predicted: mean {statistics.mean(errs):+.1f}%, "
              f"mean |·| {statistics.mean(abs(e) for e in errs):.1f}%")
    if a.out:
        atomic.write_json(Path(a.out), {"rounds": a.rounds, "teacher_ms": statistics.median(times["teacher"]) * 1e3,
                                        "int8_speedup": over("teacher", "int8") if "int8" in times else None,
                                        "students": rows})


if __name__ == "__main__":
    main()
