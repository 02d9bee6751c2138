"""Do standalone latencies carry into the whole model? (issue 4) The teacher with one part
replaced, timed beside the teacher on ORT CPU in alternating rounds: measured saving vs the saving
the latency table predicts (`scale` model). Needs a run with fused spans (benchmarks/add_spans.py).

    HANT_TRT_LUT=runs/lut_small.sqlite .venv/bin/python benchmarks/probe_inmodel_latency.py [RUN_DIR]
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from quality_lite0 import Bench  # noqa: E402

from hant_trt.build.assemble import Choice  # noqa: E402

b = Bench(Path(sys.argv[1] if len(sys.argv) > 1 else "runs/lite0_dev_small_spans"), Path("/tmp"), 0, None, 2,
          metric="kl")


def full(extra):
    covered = {i for c in extra for i in range(c.first, c.last + 1)}
    return sorted(extra + [Choice(i, i, "keep") for i in range(b.n) if i not in covered], key=lambda c: c.first)


cases = {"2-3 ir_k5_e8": [Choice(2, 3, "ir_k5_e8_relu6")], "6-7 ir_k3_e8": [Choice(6, 7, "ir_k3_e8_relu6")],
         "9-10 ir_k5_e8": [Choice(9, 10, "ir_k5_e8_relu6")], "12-13 ir_k5_e8": [Choice(12, 13, "ir_k5_e8_relu6")],
         "3 ir_k5_e5.5": [Choice(3, 3, "ir_k5_e5.5_relu6")], "7 skip": [Choice(7, 7, "skip")],
         "9 ir_k5_e5.5": [Choice(9, 9, "ir_k5_e5.5_relu6")]}
lat = b.measure({k: b.student(full(v)) for k, v in cases.items()}, rounds=7)
t, tp = lat["teacher"], b.predicted_s(full([])) * 1e3
print(f"teacher {t:.3f} ms measured, {tp:.3f} ms in the table")
for k, v in cases.items():
    p = b.predicted_s(full(v)) * 1e3
    print(f"{k:16s} saving measured {t - lat[k]:.3f} ms, predicted {tp - p:.3f} ms")
