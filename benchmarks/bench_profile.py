"""Profile-stage figures on Lite0: the dedupe ratio of each preset (unique signatures /
(slots × candidates): what is exported and timed once), the wall time of profiling one preset on ORT
CPU into a fresh latency table, and the wall time of the same profile again (everything from the
table: nothing measured).

    .venv/bin/python benchmarks/bench_profile.py [--preset small] [--threads 2] [--seconds 0.5]
        [--lut /tmp/lut.sqlite]

`--lut`: an existing table to fill (default: a fresh temporary one, so the first run measures all).
Candidates are timed with the slot's teacher weights (latency does not depend on trained weights).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from hant_trt.latency.backends import get_backend
from hant_trt.latency.lut import LatencyTable
from hant_trt.latency.profile import ProfileItem, profile_items
from hant_trt.ops import Candidate, build, candidates
from hant_trt.teacher.decompose import decompose, span_teacher
from hant_trt.teacher.load import load_teacher


def dedupe(d, preset: str) -> tuple[int, int]:
    """(unique signatures, slots × candidates) over every slot of `d`."""
    sigs, total = set(), 0
    for s in d.slots:
        for op in candidates(s, preset):
            sigs.add(Candidate(s, op).signature)
            total += 1
    return len(sigs), total


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="small")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=0.5, help="time cap per measurement")
    ap.add_argument("--lut", default=None)
    a = ap.parse_args()
    t = load_teacher()
    d = decompose(t.model, t.resolution)
    for preset in ("tiny", "small", "paper"):
        u, n = dedupe(d, preset)
        print(f"dedupe {preset:<6}: {u} unique signatures / {n} slot candidates = {u / n:.3f}")
    items = [ProfileItem(Candidate(s, op).signature, (1, *s.in_shape),
                         lambda s=s, op=op: build(op, s, span_teacher(d, s.index, s.index)).eval())
             for s in d.slots for op in candidates(s, a.preset)]
    be = get_backend("ort", threads=a.threads)
    with tempfile.TemporaryDirectory() as tmp:
        table = LatencyTable(Path(a.lut) if a.lut else Path(tmp) / "lut.sqlite")
        walls = []
        for run in ("first", "second"):
            t0 = time.time()
            res = profile_items(items, be, table, ["fp32"], Path(tmp) / "onnx", max_seconds=a.seconds)
            walls.append(time.time() - t0)
            cached = sum(r.cached for r in res)
            errors = sum(r.error is not None for r in res)
            print(f"{run} profile of {a.preset}: {len(res)} unique, {cached} from the table, {errors} errors, "
                  f"{walls[-1]:.2f} s")
    print(f"second run {walls[0] / max(walls[1], 1e-9):.0f}x faster than the first (goal ≥ 50x)")


if __name__ == "__main__":
    main()
