"""The student's per-layer int8 plan: Q/DQ in the ONNX exactly where int8 was chosen, simulated in
PyTorch from the same ranges, and the ONNX matching that simulation."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from hant_trt.student.assemble import Choice, assemble
from hant_trt.quant.layouts import LAYOUTS
from hant_trt.quant.parts import int8_parts
from hant_trt.quant.plan import calibrate_parts, export_with_plan, simulate_int8
from hant_trt.deploy.verify import verify_onnx
from hant_trt.latency.export import node_scope

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
    ver = verify_onnx(sim, onnx_path, [x.numpy()], "int8")   # the Q/DQ graph as written
    assert ver.passed and ver.max_abs_diff < quant_effect, (ver, quant_effect)
    assert ver.engine_max_abs_diff is not None and 0 <= ver.engine_top1_agreement <= 1   # fused kernels: recorded
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


def test_gpu_plan_fp16_elsewhere_int8_and_fp32_parts_kept(lite0, tmp_path):
    """base fp16 (GPU targets): parts chosen at fp16, the stem and the head in half precision; the
    parts chosen at int8 keep their Q/DQ in fp32, a part chosen at fp32 stays fp32 throughout."""
    from onnx import TensorProto

    from hant_trt.quant.plan import part_of_node
    from hant_trt.teacher.decompose import decompose

    d = decompose(lite0.model, RES)
    prec = {2: "int8", 5: "int8", 7: "fp32"}
    choices = [Choice(i, i, "keep", prec.get(i, "fp16")) for i in range(len(d.slots))]
    student = assemble(d, choices)
    gen = torch.Generator().manual_seed(0)
    calib = calibrate_parts(student, [2, 5], [torch.randn(4, 3, RES, RES, generator=gen)], "max",
                            cache_dir=tmp_path / "calib")
    path = export_with_plan(student, (1, 3, RES, RES), tmp_path / "s.onnx", calib, choices, "fp16")
    g = onnx.load(str(path)).graph
    inits = {i.name: i.data_type for i in g.initializer}
    conv_w = {}
    for n in g.node:
        if n.op_type == "Conv" and n.input[1] in inits:
            conv_w.setdefault(part_of_node(n.name), set()).add(inits[n.input[1]])
    assert conv_w[7] == {TensorProto.FLOAT} and conv_w[3] == {TensorProto.FLOAT16}
    assert conv_w[None] == {TensorProto.FLOAT16}                     # stem and head
    assert {part_of_node(n.name) for n in g.node if n.op_type == "QuantizeLinear"} == {2, 5}
    # inside a kept part no tensor is rounded to fp16 and back: Casts only at its edges
    casts_in_7 = [n for n in g.node if n.op_type == "Cast" and part_of_node(n.name) == 7]
    assert len(casts_in_7) <= 2, [n.name for n in casts_in_7]
    x = torch.randn(1, 3, RES, RES, generator=gen)
    ver = verify_onnx(simulate_int8(student, [2, 5], calib), path, [x.numpy()], "int8", base="fp16")
    assert ver.passed, ver
    assert export_with_plan(student, (1, 3, RES, RES), tmp_path / "b.onnx", None, choices, "fp16").exists()
    with pytest.raises(ValueError, match="base precision"):
        export_with_plan(student, (1, 3, RES, RES), tmp_path / "c.onnx", None, choices, "int4")
    # bf16 is PyTorch's serving precision: the ONNX for it stays fp32
    bf = export_with_plan(student, (1, 3, RES, RES), tmp_path / "d.onnx", None, choices, "bf16")
    assert {i.data_type for i in __import__("onnx").load(str(bf)).graph.initializer} == {1}  # FLOAT


@pytest.mark.parametrize("layout", ["trt", "ort", "ort-qadd"])
def test_stem_and_head_chosen_int8_are_calibrated_simulated_and_exported(lite0, tmp_path, layout):
    """The search may choose the stem and head at int8 (solution.json's fixed_parts): their layers get
    Q/DQ in the ONNX and are simulated from the same ranges; the slots stay as chosen."""
    from hant_trt.teacher.decompose import decompose

    d = decompose(lite0.model, RES)
    choices = [Choice(i, i, "keep", "int8" if i == 0 else "fp32") for i in range(len(d.slots))]
    student = assemble(d, choices)
    gen = torch.Generator().manual_seed(1)
    batches = [torch.rand(4, 3, RES, RES, generator=gen) for _ in range(2)]
    calib = calibrate_parts(student, int8_parts(choices), batches, "max", cache_dir=tmp_path / "calib",
                            layout=LAYOUTS[layout], fixed=("stem", "head"))
    prefixes = {k.split(".")[0] for k in calib.amax}
    assert prefixes == {"stem", "head", "parts"} and all(k.startswith(("stem.", "head.", "parts.0."))
                                                         for k in calib.amax)
    path = export_with_plan(student, (1, 3, RES, RES), tmp_path / "s.onnx", calib)
    g = onnx.load(str(path)).graph
    scopes = [node_scope(n.name) for n in g.node if n.op_type == "QuantizeLinear"]
    assert any("stem" in s for s in scopes) and any("head" in s for s in scopes), scopes
    sim = simulate_int8(student, int8_parts(choices), calib)
    x = batches[0][:1]
    with torch.no_grad():
        ref_fp32, ref_sim = student(x).numpy(), sim(x).numpy()
    ver = verify_onnx(sim, path, [x.numpy()], "int8-ort" if layout == "ort" else "int8")
    assert np.abs(ref_fp32 - ref_sim).max() > 0.01 and ver.passed, ver
    no_head = calibrate_parts(student, int8_parts(choices), batches, "max", cache_dir=tmp_path / "calib",
                              layout=LAYOUTS[layout], fixed=("stem",))
    assert not any(k.startswith("head.") for k in no_head.amax)


def test_plan_onnx_times_the_int8_plan_the_build_deploys(lite0, tmp_path):
    """`search.calibrate_rounds` times int8 plans too: the untrained student of a solution with an
    int8 stem and an int8 slot, exported with Q/DQ there only, runs on ORT."""
    from hant_trt.student.plan import plan_onnx
    from hant_trt.search.ilp import Option, Solution
    from hant_trt.teacher.decompose import decompose

    d = decompose(lite0.model, RES)
    n = len(d.slots)
    choices = [Option(i, i, "keep", "int8" if i == 1 else "fp32", 0.0, {"cpu": 1.0}) for i in range(n)]
    fixed = [Option(-1, -1, "stem", "int8", 0.0, {"cpu": 1.0}), Option(n, n, "head", "fp32", 0.0, {"cpu": 1.0})]
    sol = Solution("optimal", choices, {"cpu": 1.0}, 0.0, {"cpu": 1.0}, "cbc", 0.0, fixed_choices=fixed)
    path = plan_onnx(d, sol, (1, 3, RES, RES), LAYOUTS["ort"], tmp_path / "s.onnx")
    g = onnx.load(str(path)).graph
    scopes = [node_scope(n.name) for n in g.node if n.op_type == "QuantizeLinear"]
    assert any("stem" in s for s in scopes) and any("parts.1" in s for s in scopes)
    assert not any("head" in s or "parts.2" in s for s in scopes), scopes
    out = _run(path, torch.randn(1, 3, RES, RES))
    assert out.shape == (1, 1000) and np.isfinite(out).all()



def test_an_int8x_calibration_times_the_student_beside_the_profiles_int8_teacher(lite0, lite0_decomposition,
                                                                                   monkeypatch):
    """`search.calibrate_rounds` at an `int8x=` budget: the reference is the whole teacher exported at
    int8 as the profile timed `teacher_int8_s` (quantized in the stem, every block and the head, it
    runs on ORT), and a measurement is the per-round ratio × the table figure it was given."""
    from types import SimpleNamespace as NS

    import hant_trt.latency.paired as paired
    import hant_trt.quant.layouts as layouts
    import hant_trt.teacher.stage as teacher_stage
    from hant_trt.config import ProfileCfg
    from hant_trt.search.calibrate import engine_measure

    monkeypatch.setattr(teacher_stage, "load_from_config", lambda cfg: (lite0, lite0_decomposition))
    seen = []
    real = layouts.quantize_int8

    def spy(*args, **kw):
        seen.append(real(*args, **kw))
        return seen[-1]

    monkeypatch.setattr(layouts, "quantize_int8", spy)
    monkeypatch.setattr(paired, "time_beside", lambda backend, ref, preps, rounds, **kw: [[(2.0, 1.0)] * rounds])
    cfg = NS(profile=ProfileCfg(precisions=["fp32", "int8"], max_seconds=0.05))
    measure = engine_measure(cfg, 1.5e-3, beside_int8=True)
    (path,) = seen
    scopes = [node_scope(n.name) for n in onnx.load(str(path)).graph.node if n.op_type == "QuantizeLinear"]
    assert any("conv_stem" in s for s in scopes) and any("conv_head" in s for s in scopes), scopes
    assert all(any(f"blocks.{i}." in s for s in scopes) for i in range(7)), scopes
    out = _run(path, torch.randn(1, 3, lite0.resolution, lite0.resolution))
    assert out.shape == (1, 1000) and np.isfinite(out).all()
    sol = NS(choices=[NS(first=i, last=i, op="keep", precision="fp32") for i in range(len(lite0_decomposition.slots))],
             fixed_choices=[])
    assert measure(sol) == 0.5 * 1.5e-3
