"""Probe: what any op strings cost at a run's slots, at int8 and fp32, on ONNX Runtime CPU — before
phase 1 spends time distilling them.

    .venv/bin/python benchmarks/probe_ops.py RUN --slots 2,5,8,12 \
        --ops ir_k3_e2_relu6,er_k3_e1_relu6,er_k3_e2_relu6 [--precisions int8,fp32] [--rounds 5]

Each op is built for the slot's exact shapes (initialised from the teacher's block where it can
be: weights do not change latency), exported standalone, written at int8 in the run's Q/DQ
layout (`profile.int8_layout`; ranges from seeded random batches) and timed on the project's ORT
backend beside the slot's own block (`keep`) in the same rounds. Printed per slot: median µs of
each op and its ratio to `keep` at that precision. Ops that do not fit a slot are left out of it.
Standalone rows, as the profile's: they carry a Q at the input and a DQ at the output that a
whole int8 network shares.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run")
    ap.add_argument("--slots", required=True, help="slot numbers, comma-separated")
    ap.add_argument("--ops", required=True, help="op strings, comma-separated")
    ap.add_argument("--precisions", default="int8,fp32")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()

    from hant_trt.config import from_dict
    from hant_trt.latency.backends import get_backend
    from hant_trt.latency.export import export_onnx
    from hant_trt.latency.paired import time_in_rounds
    from hant_trt.ops.grammar import build, canonical, is_valid
    from hant_trt.quant.layouts import layout_for, quantize_int8
    from hant_trt.teacher.decompose import span_teacher
    from hant_trt.teacher.stage import load_from_config

    run = Path(a.run)
    cfg = from_dict(json.loads((run / "run.json").read_text())["config"])
    teacher, d = load_from_config(cfg)
    be, layout = get_backend("ort", threads=a.threads), layout_for(cfg.profile)
    ops = ["keep"] + [canonical(o) for o in a.ops.split(",") if o]
    with tempfile.TemporaryDirectory() as tmp:
        for s in (int(x) for x in a.slots.split(",")):
            slot, block = d.slots[s], span_teacher(d, s, s)
            here = [op for op in ops if op == "keep" or is_valid(op, slot)]
            shape = (1, *slot.in_shape)
            print(f"slot {s}: {slot.teacher_op} {tuple(slot.in_shape)} -> {tuple(slot.out_shape)}", flush=True)
            for prec in a.precisions.split(","):
                prepared = []
                for op in here:
                    path = Path(tmp) / f"s{s}_{op}.{prec}.onnx"
                    m = build(op, slot, block).eval()
                    if prec == "int8":
                        quantize_int8(m, shape, path, layout=layout)
                    else:
                        export_onnx(m, shape, path)
                    prepared.append(be.prepare(path, prec))
                times = [statistics.median(t) * 1e6 for t in time_in_rounds(be, prepared, a.rounds, max_seconds=0.3)]
                print(f"  {prec:5s} " + "  ".join(f"{op} {t:.0f} us ({t / times[0]:.2f})" for op, t in zip(here, times)),
                      flush=True)


if __name__ == "__main__":
    main()
