"""Are single-slot replacements additive on the whole model? For a few (slot, op) pairs: the
whole-model latency the replacement saves vs the table's difference keep − candidate, each timed
standalone, everything timed close together (ORT CPU, 2 threads, min of two medians).

    .venv/bin/python benchmarks/bench_single_swap_latency.py
"""
import tempfile
from pathlib import Path
from hant_trt.build.assemble import Choice, assemble
from hant_trt.latency.backends import get_backend
from hant_trt.latency.export import export_onnx
from hant_trt.ops import build
from hant_trt.teacher.decompose import decompose, span_teacher
from hant_trt.teacher.load import load_teacher
t = load_teacher()
d = decompose(t.model, t.resolution)
be = get_backend("ort", threads=2)
tmp = Path(tempfile.mkdtemp())
def whole(ch, name):
    p = export_onnx(assemble(d, ch), (1, 3, 224, 224), tmp / f"{name}.onnx")
    pr = be.prepare(p)
    return min(be.time(pr, max_seconds=1.5).median_s for _ in range(2)) * 1e3
def part(i, op, name):
    s = d.slots[i]
    m = build(op, s, span_teacher(d, i, i)).eval() if op != "keep" else d.blocks[i]
    p = export_onnx(m, (1, *s.in_shape), tmp / f"{name}.onnx")
    pr = be.prepare(p)
    return min(be.time(pr, max_seconds=1.0).median_s for _ in range(2)) * 1e3
keep = [Choice(i, i, "keep") for i in range(16)]
T = whole(keep, "teacher")
print(f"teacher {T:.3f} ms")
for i, op in [(2, "skip"), (1, "ir_k3_e3_relu6"), (9, "ir_k5_e3_relu6"), (12, "skip"), (6, "ir_k3_e2_relu6")]:
    ch = [Choice(j, j, op if j == i else "keep") for j in range(16)]
    S = whole(ch, f"s{i}")
    pk, pc = part(i, "keep", f"k{i}"), part(i, op, f"c{i}")
    print(f"slot {i} {op}: whole delta {T - S:.3f} ms, parts delta {pk - pc:.3f} ms (keep {pk:.3f}, cand {pc:.3f})")
