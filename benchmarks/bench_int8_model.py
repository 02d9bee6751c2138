"""How well the search's latency model predicts int8 plans: with the int8 model (stem/head choices,
junction savings) and without it (standalone int8 rows only).

    .venv/bin/python benchmarks/bench_int8_model.py RUN_DIR [--speedups 1.55,1.8,2.2,2.6] [--rounds 5]

RUN_DIR must be profiled with int8 (latency_fixed.json carries the junction savings). For each
asked speedup and each model the ILP is solved over the run's tables; the chosen student is built
untrained from its op strings (weights do not change latency), calibrated on random images
(ranges do not change latency either), exported with its int8 plan and timed on ONNX Runtime
beside the fp32 teacher in alternating rounds (speedup = median over rounds of teacher / student).
Printed: predicted vs measured speedup and the error of the prediction, per plan.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from dataclasses import replace
from pathlib import Path


def plans(run: Path, cfg, speedups: list[float]) -> list[tuple[str, float, object]]:
    from hant_trt.search.ilp import solve
    from hant_trt.search.tables import build_problem, load_tables, read_n_slots, select_devices

    tables = load_tables(run, cfg.search.metric)
    n = read_n_slots(run / "teacher.json")
    dev = select_devices(tables.fixed, None)[0]
    if tables.fixed[dev].stem_int8_s is None:
        raise SystemExit(f"{run} has no int8 latency model: profile it with int8 among profile.precisions")
    standalone = replace(tables, fixed_scores={}, fixed={d: replace(f, stem_int8_s=None, head_int8_s=None,
                                                                   junction_saving_s=(), teacher_int8_s=None,
                                                                   teacher_int8_sum_s=None)
                                                         for d, f in tables.fixed.items()})
    out = []
    # the baseline beside them: the whole teacher at int8 (plain PTQ), predicted by the int8 model
    from hant_trt.search.ilp import Solution, predict

    p = build_problem(tables, n, "speedup=1", [dev], latency_model=cfg.search.latency_model)
    keep8 = sorted((o for o in p.options if o.op == "keep" and o.precision == "int8" and o.first == o.last),
                   key=lambda o: o.first)
    fixed8 = [o for o in p.fixed_options if o.precision == "int8"]
    if len(keep8) == n and len(fixed8) == 2:
        pred = predict(p, keep8, fixed8, dev)
        out.append(("whole int8", tables.fixed[dev].teacher_s / pred,
                    Solution("ptq", keep8, {dev: pred}, 0.0, {}, "-", 0.0, device=dev,
                             teacher_s={dev: tables.fixed[dev].teacher_s}, fixed_choices=fixed8)))
    for s in speedups:
        for name, t in (("int8 model", tables), ("standalone", standalone)):
            try:
                sol = solve(build_problem(t, n, f"speedup={s}", [dev], latency_model=cfg.search.latency_model))
            except Exception as exc:       # an infeasible ask under one model is a finding, not a crash
                print(f"{s:.2f}x {name}: {str(exc).splitlines()[0]}")
                continue
            sol.teacher_s, sol.device = {dev: tables.fixed[dev].teacher_s}, dev
            out.append((name, s, sol))
    return out


def main() -> None:
    from hant_trt.config import from_dict
    from hant_trt.quant.layouts import layout_for
    from hant_trt.latency.backends import get_backend
    from hant_trt.latency.export import export_onnx
    from hant_trt.latency.paired import time_beside
    from hant_trt.student.plan import plan_onnx
    from hant_trt.teacher.stage import load_from_config

    ap = argparse.ArgumentParser()
    ap.add_argument("run_dir")
    ap.add_argument("--speedups", default="1.55,1.8,2.2,2.6")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=1.0)
    a = ap.parse_args()
    run = Path(a.run_dir)
    cfg = from_dict(json.loads((run / "run.json").read_text())["config"])
    teacher, d = load_from_config(cfg)
    backend = get_backend(cfg.profile.backend, threads=cfg.profile.threads)
    shape = (cfg.profile.batch, 3, teacher.resolution, teacher.resolution)
    todo = plans(run, cfg, [float(s) for s in a.speedups.split(",")])
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t_prep = backend.prepare(export_onnx(teacher.model.eval(), shape, tmp / "teacher.onnx"))
        preps = [backend.prepare(plan_onnx(d, sol, shape, layout_for(cfg.profile), tmp / f"s{i}.onnx"))
                 for i, (_, _, sol) in enumerate(todo)]
        pairs = time_beside(backend, t_prep, preps, a.rounds, max_seconds=a.seconds,
                            on_round=lambda r: print(f"round {r + 1}/{a.rounds} done", flush=True))
        ratios = [[tt / ts for tt, ts in p] for p in pairs]
    print(f"{'asked':>6}  {'model':<11} {'predicted':>9} {'measured':>9} {'error':>7}  int8 parts / stem, head")
    for (name, s, sol), rs in zip(todo, ratios):
        dev = sol.primary
        pred = sol.teacher_s[dev] / sol.predicted_s[dev]
        meas = statistics.median(rs)
        n8 = sum(o.precision == "int8" for o in sol.choices)
        fx = ",".join(o.precision for o in sol.fixed_choices) or "fixed"
        print(f"{s:>5.2f}x  {name:<11} {pred:>8.2f}x {meas:>8.2f}x {100 * (pred - meas) / meas:>+6.1f}%  "
              f"{n8}/{len(sol.choices)} / {fx}")


if __name__ == "__main__":
    main()
