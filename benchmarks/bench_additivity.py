"""Additivity of the latency table (ORT CPU): predicted whole-model latency from the parts vs the
measured latency of whole models, for the teacher and random students, under both latency models
of the search: "offset" (stem + head + Σ slots + teacher − Σ teacher parts) and "scale"
((stem + head + Σ slots) × teacher / Σ teacher parts).

    .venv/bin/python benchmarks/bench_additivity.py [--preset tiny] [--students 5] [--threads 2]

The correction is fitted on the teacher only; students are assembled from random `keep`/candidate
choices of the preset (weights do not change latency). Prints per-model error and the mean
absolute error (goal ≤ 10 %).
"""

from __future__ import annotations

import argparse
import random
import tempfile
from pathlib import Path

from hant_trt.build.assemble import Choice, assemble
from hant_trt.teacher.decompose import module_slot_of, span_teacher
from hant_trt.latency.backends import get_backend
from hant_trt.latency.export import export_onnx
from hant_trt.latency.lut import LatencyTable
from hant_trt.latency.profile import ProfileItem, measure_module, profile_items
from hant_trt.ops import Candidate, build, candidates
from hant_trt.teacher.decompose import decompose
from hant_trt.teacher.load import load_teacher


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--students", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=0.5)
    a = ap.parse_args()
    t = load_teacher()
    d = decompose(t.model, t.resolution)
    be = get_backend("ort", threads=a.threads)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        table = LatencyTable(work / "lut.sqlite")
        items, ops_by_slot = [], {}
        for s in d.slots:
            ops_by_slot[s.index] = candidates(s, a.preset)
            for op in ops_by_slot[s.index]:
                c = Candidate(s, op)
                items.append(ProfileItem(c.signature, (1, *s.in_shape),
                                         lambda s=s, op=op: build(op, s, span_teacher(d, s.index, s.index)).eval()))
        res = {r.signature: r.median_s for r in profile_items(items, be, table, ["fp32"], work, max_seconds=a.seconds)}
        shape = (1, 3, t.resolution, t.resolution)
        stem = measure_module(d.stem, shape, be, table, work, "stem", max_seconds=1).median_s
        head = measure_module(d.head, (1, *d.fixed["head"]["in_shape"]), be, table, work, "head", max_seconds=1).median_s

        def predicted(choices):
            return stem + head + sum(res[Candidate(d.slots[c.first], c.op).signature] for c in choices)

        def measured(choices, name):
            model = assemble(d, choices)
            p = export_onnx(model, shape, work / f"{name}.onnx")
            prep = be.prepare(p)
            return be.time(prep, max_seconds=3.0).median_s

        keep = [Choice(i, i, "keep") for i in range(len(d.slots))]
        t_meas = measured(keep, "teacher")
        correction = t_meas - predicted(keep)
        print(f"teacher: measured {t_meas * 1e3:.3f} ms, sum of parts {predicted(keep) * 1e3:.3f} ms, "
              f"correction {correction * 1e3:+.3f} ms")
        scale = t_meas / predicted(keep)
        rng = random.Random(0)
        errs = {"offset": [], "scale": []}
        for k in range(a.students):
            ch = [Choice(i, i, rng.choice(ops_by_slot[i])) for i in range(len(d.slots))]
            pred = {"offset": predicted(ch) + correction, "scale": predicted(ch) * scale}
            meas = measured(ch, f"s{k}")
            for m, p in pred.items():
                errs[m].append(abs(p - meas) / meas)
            print(f"student {k}: measured {meas * 1e3:.3f} ms; predicted offset {pred['offset'] * 1e3:.3f} ms "
                  f"({100 * (pred['offset'] - meas) / meas:+.1f} %), scale {pred['scale'] * 1e3:.3f} ms "
                  f"({100 * (pred['scale'] - meas) / meas:+.1f} %)")
        for m, e in errs.items():
            print(f"mean absolute error over {a.students} students, {m} model: {100 * sum(e) / len(e):.1f} %")


if __name__ == "__main__":
    main()
