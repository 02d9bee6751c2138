"""Additivity of the latency table (ORT CPU): predicted whole-model latency from the parts vs the
measured latency of whole models, for the teacher and random students, under both latency models
of the search: "offset" (stem + head + Σ slots + teacher − Σ teacher parts) and "scale"
((stem + head + Σ slots) × teacher / Σ teacher parts).

    .venv/bin/python benchmarks/bench_additivity.py [--preset tiny] [--students 5] [--rounds 3]
        [--threads 2] [--seconds 0.3]

This machine's speed drifts (up to 1.7x within minutes), so parts and wholes are timed in the same
rounds: each round times every part used (stem, head, each slot's chosen ops) and then every whole
model, and predicts each student from that round's parts. The per-round relative errors are then
averaged. The correction (offset or scale) is fitted on the teacher of the same round only; students
are random `keep`/candidate choices of the preset (weights do not change latency). Prints per-model
error and the mean absolute error (goal ≤ 10 %).
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from pathlib import Path

from hant_trt.student.assemble import Choice, assemble
from hant_trt.latency.backends import get_backend
from hant_trt.latency.export import export_onnx
from hant_trt.ops import build, candidates
from hant_trt.teacher.decompose import decompose, span_teacher
from hant_trt.teacher.load import load_teacher


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--students", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=0.3, help="time cap per part measurement")
    a = ap.parse_args()
    t0 = time.time()
    t = load_teacher()
    d = decompose(t.model, t.resolution)
    be = get_backend("ort", threads=a.threads)
    rng = random.Random(0)
    keep = [Choice(i, i, "keep") for i in range(len(d.slots))]
    models = {"teacher": keep}
    for k in range(a.students):
        models[f"s{k}"] = [Choice(i, i, rng.choice(candidates(s, a.preset))) for i, s in enumerate(d.slots)]
    shape = (1, 3, t.resolution, t.resolution)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        parts = {"stem": be.prepare(export_onnx(d.stem, shape, work / "stem.onnx")),
                 "head": be.prepare(export_onnx(d.head, (1, *d.fixed["head"]["in_shape"]), work / "head.onnx"))}
        for ch in models.values():
            for c in ch:
                if (c.first, c.op) not in parts:
                    s = d.slots[c.first]
                    m = build(c.op, s, span_teacher(d, s.index, s.index)).eval()
                    parts[(c.first, c.op)] = be.prepare(export_onnx(m, (1, *s.in_shape), work / f"p{len(parts)}.onnx"))
        wholes = {n: be.prepare(export_onnx(assemble(d, ch), shape, work / f"{n}.onnx")) for n, ch in models.items()}
        print(f"{len(parts)} parts, {len(wholes)} whole models; {a.rounds} interleaved rounds")
        errs: dict[str, dict[str, list[float]]] = {n: {"offset": [], "scale": []} for n in models if n != "teacher"}
        for r in range(a.rounds):
            p_ms = {k: be.time(v, max_seconds=a.seconds).median_s * 1e3 for k, v in parts.items()}
            w_ms = {k: be.time(v, max_seconds=3 * a.seconds).median_s * 1e3 for k, v in wholes.items()}

            def summed(ch):
                return p_ms["stem"] + p_ms["head"] + sum(p_ms[(c.first, c.op)] for c in ch)

            t_sum = summed(keep)
            print(f"round {r}: teacher {w_ms['teacher']:.3f} ms measured, parts sum {t_sum:.3f} ms "
                  f"({time.time() - t0:.0f}s)")
            for n, ch in models.items():
                if n == "teacher":
                    continue
                pred = {"offset": summed(ch) + w_ms["teacher"] - t_sum, "scale": summed(ch) * w_ms["teacher"] / t_sum}
                for m, p in pred.items():
                    errs[n][m].append((p - w_ms[n]) / w_ms[n])
                print(f"  {n}: measured {w_ms[n]:.3f} ms; predicted offset {pred['offset']:.3f} "
                      f"({100 * errs[n]['offset'][-1]:+.1f} %), scale {pred['scale']:.3f} "
                      f"({100 * errs[n]['scale'][-1]:+.1f} %)")
    for m in ("offset", "scale"):
        per = [statistics.mean(e[m]) for e in errs.values()]
        mae = statistics.mean(abs(x) for x in per)
        every = statistics.mean(abs(x) for e in errs.values() for x in e[m])
        print(f"{m} model: mean absolute error over {len(per)} students {100 * mae:.1f} % "
              f"(signed per student, averaged over rounds: {', '.join(f'{100 * x:+.1f}' for x in per)} %); "
              f"over every single (round, student) prediction {100 * every:.1f} %")


if __name__ == "__main__":
    main()
