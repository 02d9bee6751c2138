"""The student's per-layer int8 plan: Q/DQ in the ONNX exactly where int8 was chosen, simulated in
PyTorch from the same ranges, and the ONNX matching that simulation."""

import numpy as np
import onnx
import onnxruntime as ort
import torch

from hant_trt.build.assemble import Choice, assemble
from hant_trt.build.quantize import calibrate_parts, export_with_plan, int8_parts, simulate_int8
from hant_trt.build.verify import verify_onnx
from hant_trt.latency.precision import node_scope

RES = 96


def _student(d):
    choices = [Choice(i, i, "keep", "int8" if i in (2, 5) else "fp32") for i in range(len(d.slots))]
    return choices, assemble(d, choices)


def _run(path, x, optimize: bool = True):
    so = ort.SessionOptions()
    if not optimize:      # the ONNX's own arithmetic, before ORT swaps in its fused int8 kernels
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    return sess.run(None, {"input": x.numpy()})[0]


def test_int8_parts_get_qdq_and_match_their_simulation(lite0, tmp_path):
    from hant_trt.teacher.decompose import decompose

    d = decompose(lite0.model, RES)
    choices, student = _student(d)
    parts = int8_parts(choices)
    assert parts == [2, 5]
    gen = torch.Generator().manual_seed(0)
    batches = [torch.randn(4, 3, RES, RES, generator=gen) for _ in range(2)]
    calib = calibrate_parts(student, parts, batches, "max", cache_dir=tmp_path / "calib")
    assert calib.amax and all(k.startswith(("parts.2.", "parts.5.")) for k in calib.amax)
    again = calibrate_parts(student, parts, batches, "max", cache_dir=tmp_path / "calib")
    assert again.amax == calib.amax and len(list((tmp_path / "calib").iterdir())) == 1   # cached

    onnx_path = export_with_plan(student, (1, 3, RES, RES), tmp_path / "s.onnx", calib)
    g = onnx.load(str(onnx_path)).graph
    quantized = {node_scope(n.name).split("/input_quantizer")[0] for n in g.node if n.op_type == "QuantizeLinear"}
    convs = [n for n in g.node if n.op_type == "Conv"]
    assert len(quantized) == len(calib.amax) < len(convs)          # only the int8 parts' layers
    assert all("parts.2" in q or "parts.5" in q for q in quantized), quantized

    sim = simulate_int8(student, parts, calib)
    x = torch.randn(1, 3, RES, RES, generator=gen)
    with torch.no_grad():
        ref_fp32, ref_sim = student(x).numpy(), sim(x).numpy()
    quant_effect = np.abs(ref_fp32 - ref_sim).max()
    exact_gap = np.abs(_run(onnx_path, x, optimize=False) - ref_sim).max()
    assert quant_effect > 0.01 and exact_gap < 1e-4, (exact_gap, quant_effect)   # same arithmetic
    ver = verify_onnx(sim, onnx_path, [x.numpy()], "int8")   # ORT's int8 kernels: within tolerance
    assert ver.passed and ver.max_abs_diff < quant_effect, (ver, quant_effect)
    # the fp32 parts of the simulation are the student's own modules, untouched
    assert sim.parts[3] is not student.parts[3] and torch.equal(sim.parts[3].state_dict()["conv_pw.weight"],
                                                                  student.parts[3].state_dict()["conv_pw.weight"])


def test_no_int8_choice_exports_plain_fp32(lite0, tmp_path):
    from hant_trt.teacher.decompose import decompose

    d = decompose(lite0.model, RES)
    choices = [Choice(i, i, "keep") for i in range(len(d.slots))]
    assert int8_parts(choices) == []
    g = onnx.load(str(export_with_plan(assemble(d, choices), (1, 3, RES, RES), tmp_path / "s.onnx", None))).graph
    assert not any(n.op_type == "QuantizeLinear" for n in g.node)
