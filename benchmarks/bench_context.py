"""Asked vs measured speed of the search's students, with standalone latencies and with in-context
ones (`profile.context = "model"`), every student timed in one run beside the teacher.

    .venv/bin/python benchmarks/bench_context.py RUN_ALONE RUN_CONTEXT [--speedups 1.3,1.55,1.8,2.1]
        [--rounds 7] [--metric kl] [--out FILE.json]

RUN_ALONE and RUN_CONTEXT are the same phase-1 run profiled both ways (`hant-trt profile
RUN_CONTEXT --set profile.context=model`). For each asked speedup the ILP is solved on each run's
tables; each student is assembled from its op strings (weights do not change latency), exported,
and timed on ORT CPU right after the teacher in `--rounds` alternating rounds: its speedup is the
median of those paired ratios. Printed: asked, predicted by the table, measured, and the error.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

from hant_trt import atomic
from hant_trt.student.assemble import Choice, assemble
from hant_trt.config import from_dict
from hant_trt.latency.backends import get_backend
from hant_trt.latency.export import export_onnx
from hant_trt.latency.paired import time_beside
from hant_trt.search.ilp import solve
from hant_trt.search.tables import build_problem, load_tables, select_devices
from hant_trt.teacher.stage import load_from_config


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run_alone")
    ap.add_argument("run_context")
    ap.add_argument("--speedups", default="1.3,1.55,1.8,2.1")
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
    tmp = Path(tempfile.mkdtemp(prefix="hant_ctx_"))
    speedups = [float(s) for s in a.speedups.split(",")]

    students, rows = {}, []
    for kind, run in runs.items():
        tables = load_tables(run, a.metric)
        dev = select_devices(tables.fixed, None)[0]
        for sp in speedups:
            sol = solve(build_problem(tables, len(d.slots), f"speedup={sp}", [dev]), "cbc", 60)
            choices = [Choice(o.first, o.last, o.op, o.precision) for o in sol.choices]
            name = f"{kind}{sp}"
            students[name] = be.prepare(export_onnx(assemble(d, choices).eval(), shape, tmp / f"{name}.onnx"))
            rows.append({"kind": kind, "asked": sp, "name": name,
                         "predicted": tables.fixed[dev].teacher_s / sol.predicted_s[dev],
                         "replaced": [f"{o.first}{'-' + str(o.last) if o.last != o.first else ''}:{o.op}"
                                      for o in sol.choices if o.op != "keep"]})
    t_prep = be.prepare(export_onnx(teacher.model.eval(), shape, tmp / "teacher.onnx"))
    pairs = dict(zip(students, time_beside(be, t_prep, list(students.values()), a.rounds, max_seconds=a.seconds,
                                           on_round=lambda r: print(f"round {r + 1}/{a.rounds} done", flush=True))))
    ratios = {k: [t / s for t, s in p] for k, p in pairs.items()}
    teacher_ms = [t * 1e3 for p in pairs.values() for t, _ in p]
    print(f"\nteacher {statistics.median(teacher_ms):.3f} ms (median of {len(teacher_ms)} timings), "
          f"{a.rounds} paired rounds\n")
    print(f"{'latencies':<9} {'asked':>6} {'predicted':>9} {'measured':>9} {'error':>7}  replaced")
    for row in rows:
        row["measured"] = statistics.median(ratios[row["name"]])
        row["error_pct"] = 100 * (row["measured"] - row["asked"]) / row["asked"]
        print(f"{row['kind']:<9} {row['asked']:>5.2f}x {row['predicted']:>8.2f}x {row['measured']:>8.2f}x "
              f"{row['error_pct']:>+6.1f}%  {len(row['replaced'])}: {', '.join(row['replaced'])}")
    for kind in runs:
        errs = [abs(r["error_pct"]) for r in rows if r["kind"] == kind]
        print(f"{kind}: mean |measured − asked| = {statistics.mean(errs):.1f}%")
    if a.out:
        atomic.write_json(Path(a.out), {"rounds": a.rounds, "teacher_ms": statistics.median(teacher_ms),
                                        "students": rows})


if __name__ == "__main__":
    main()
