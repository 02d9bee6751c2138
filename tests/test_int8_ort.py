"""The "ort" int8 layout (ONNX Runtime CPU's integer kernels): layout, fusion, simulation, plumbing.

Tolerances (stated here and in docs/ARCHITECTURE.md):
- Q/DQ ONNX (unoptimised) vs the PyTorch simulation: mean |diff| <= 1 % of max|fp32| and max |diff|
  <= 3 output quantization steps (a value on a rounding boundary may round the other way and a
  quantized output turns that into a whole step);
- int8 vs fp32: cosine >= 0.99.
"""

from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper
from torch import nn

from hant_trt.config import ProfileCfg
from hant_trt.errors import UserError
from hant_trt.latency.export import export_onnx, fold_batchnorm
from hant_trt.quant.calibrate import calibrate
from hant_trt.quant.layouts import LAYOUTS, layout_for, quantize_int8
from hant_trt.quant.qdq_ort import fake_quantize_ort, plan_sites, u8_params, write_ort_qdq

ORT, TRT, QADD = LAYOUTS["ort"], LAYOUTS["trt"], LAYOUTS["ort-qadd"]

from test_export import mbconv, randomize_bn  # noqa: E402  (tests/ is on sys.path)

SHAPE = (2, 16, 12, 12)


def batches(shape, n=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(*shape, generator=g) for _ in range(n)]


def session(path, optimise: bool, save_to=None):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED if optimise
                                   else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    if save_to:
        so.optimized_model_filepath = str(save_to)
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


class TwoBlocks(nn.Module):
    """Two Lite0-style residual MBConvs (ReLU6): a per-layer plan quantizes one of them."""

    def __init__(self):
        super().__init__()
        from timm.models._efficientnet_blocks import InvertedResidual

        torch.manual_seed(3)
        self.a = InvertedResidual(16, 16, dw_kernel_size=3, exp_ratio=4.0, act_layer=nn.ReLU6)
        self.b = InvertedResidual(16, 16, dw_kernel_size=5, exp_ratio=3.0, act_layer=nn.ReLU6)
        randomize_bn(self)

    def forward(self, x):
        return self.b(self.a(x))


def test_u8_params_follow_onnxruntime_quantizer():
    s, z = u8_params(-1.0, 3.0)
    assert s == pytest.approx(4.0 / 255) and z == round(1.0 / (4.0 / 255))
    assert u8_params(0.5, 6.0) == (pytest.approx(6.0 / 255), 0)          # 0 always representable
    assert u8_params(-2.0, -1.0)[1] == 255


def test_calibration_records_output_ranges_after_the_bn_fold():
    model = mbconv(nn.ReLU6)
    xs = batches(SHAPE, 2)
    calib = calibrate(model, xs)
    folded = fold_batchnorm(model)
    seen = {}
    hooks = [folded.get_submodule(p).register_forward_hook(
        lambda _m, _i, y, p=p: seen.setdefault(p, []).append((float(y.min()), float(y.max())))) for p in calib.amax]
    with torch.no_grad():
        for x in xs:
            folded(x)
    for h in hooks:
        h.remove()
    for p, r in seen.items():
        assert calib.out_lo[p] == pytest.approx(min(0.0, min(a for a, _ in r)), rel=1e-5)
        assert calib.out_hi[p] == pytest.approx(max(b for _, b in r), rel=1e-5)
        assert calib.lo[p] <= 0.0 <= calib.hi[p] and calib.hi[p] <= calib.amax[p]


def test_ort_layout_fuses_into_integer_kernels_and_matches_the_simulation(tmp_path):
    model = mbconv(nn.ReLU6)
    calib = calibrate(model, batches(SHAPE, 4))
    q = quantize_int8(model, SHAPE, tmp_path / "q.onnx", calib, layout=ORT)
    m = onnx.load(str(q))
    inits = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
    prod = {o: n for n in m.graph.node for o in n.output}
    convs = [n for n in m.graph.node if n.op_type == "Conv"]
    assert len(convs) == 3
    for n in convs:
        dq = prod[n.input[0]]
        assert dq.op_type == "DequantizeLinear" and inits[dq.input[2]].dtype == np.uint8
        assert inits[prod[n.input[1]].input[0]].dtype == np.int8
        assert inits[prod[n.input[2]].input[0]].dtype == np.int32               # int32 bias
    # every Clip sits between a conv and its output Q, so ORT drops it and fuses the conv
    for n in m.graph.node:
        if n.op_type == "Clip":
            assert prod[n.input[0]].op_type == "Conv"
    session(q, True, tmp_path / "opt.onnx")
    ops = Counter(n.op_type for n in onnx.load(str(tmp_path / "opt.onnx")).graph.node)
    assert ops["QLinearConv"] == 3 and ops["Conv"] == 0 and ops["Clip"] == 0, ops

    x = batches(SHAPE, 1, seed=9)[0]
    ref = session(export_onnx(model, SHAPE, tmp_path / "f.onnx"), False).run(None, {"input": x.numpy()})[0]
    raw = session(q, False).run(None, {"input": x.numpy()})[0]
    fused = session(q, True).run(None, {"input": x.numpy()})[0]
    with torch.no_grad():
        sim = fake_quantize_ort(model, calib, input_shape=SHAPE)(x).numpy()
    step = u8_params(*plan_sites(m_fp := onnx.load(str(tmp_path / "f.onnx")), calib)[-1].out_range)[0]
    assert m_fp is not None
    for got in (raw, fused):
        assert np.abs(sim - got).mean() <= 0.01 * np.abs(ref).max()
        assert np.abs(sim - got).max() <= 3 * step + 1e-6
    cos = float((raw * ref).sum() / np.linalg.norm(raw) / np.linalg.norm(ref))
    assert cos >= 0.99
    assert np.abs(sim - ref).max() > 2 * np.abs(sim - raw).mean()          # it really quantizes


def test_site_plan_reuses_a_quantized_output_and_fuses_only_relu_clip():
    model = mbconv(nn.ReLU6)
    calib = calibrate(model, batches(SHAPE, 2))
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        sites = plan_sites(onnx.load(str(export_onnx(model, SHAPE, Path(tmp) / "m.onnx"))), calib)
    by = {s.path: s for s in sites}
    assert by["conv_pw"].act_hi == pytest.approx(6.0) and by["conv_pw"].input_site is None
    assert by["conv_dw"].input_site == "conv_pw" and by["conv_dw"].in_range == by["conv_pw"].out_range
    assert by["conv_pwl"].act_hi is None and by["conv_pwl"].out_range[0] < 0     # signed, before the Add
    assert by["conv_dw"].out_range[0] == 0.0 and by["conv_dw"].out_range[1] <= 6.0
    silu = mbconv(nn.SiLU)
    with tempfile.TemporaryDirectory() as tmp:
        sites = plan_sites(onnx.load(str(export_onnx(silu, SHAPE, Path(tmp) / "m.onnx"))), calibrate(silu, batches(SHAPE, 1)))
    assert all(s.act_hi is None for s in sites)                              # SiLU stays float after DQ


def test_per_layer_plan_quantizes_only_the_calibrated_block(tmp_path):
    model = TwoBlocks().eval()
    full = calibrate(model, batches(SHAPE, 3))
    part = full.subset(("b.",))
    p = export_onnx(model, SHAPE, tmp_path / "f.onnx")
    q = write_ort_qdq(p, tmp_path / "q.onnx", part, only_calibrated=True)
    session(q, True, tmp_path / "opt.onnx")
    ops = Counter(n.op_type for n in onnx.load(str(tmp_path / "opt.onnx")).graph.node)
    assert ops["QLinearConv"] == 3 and ops["Conv"] + ops["FusedConv"] == 3, ops
    x = batches(SHAPE, 1, seed=4)[0]
    raw = session(q, False).run(None, {"input": x.numpy()})[0]
    with torch.no_grad():
        sim = fake_quantize_ort(model, part, input_shape=SHAPE, only_calibrated=True)(x).numpy()
        ref = model(x).numpy()
    assert np.abs(sim - raw).mean() <= 0.01 * np.abs(ref).max()
    with pytest.raises(UserError, match="no calibrated range"):
        write_ort_qdq(p, tmp_path / "bad.onnx", part)                          # all layers, ranges for some


class Head(nn.Module):
    """TwoBlocks, then a Lite0-style head: 1x1 conv + ReLU6, global pooling, flatten, classifier."""

    def __init__(self):
        super().__init__()
        self.body = TwoBlocks()
        torch.manual_seed(5)
        self.conv_head = nn.Sequential(nn.Conv2d(16, 32, 1), nn.ReLU6())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.conv_head(self.body(x))), 1))


def _fused_ops(q, tmp_path):
    session(q, True, tmp_path / "opt.onnx")
    return Counter(n.op_type for n in onnx.load(str(tmp_path / "opt.onnx")).graph.node)


def test_qadd_layout_keeps_adds_and_pooling_integer_and_matches_its_simulation(tmp_path):
    model = Head().eval()
    calib = calibrate(model, batches(SHAPE, 3))
    old = _fused_ops(quantize_int8(model, SHAPE, tmp_path / "ort.onnx", calib, layout=ORT), tmp_path)
    assert old["Add"] == 2 and old["GlobalAveragePool"] == 1           # float: a DQ + Q around each
    q = quantize_int8(model, SHAPE, tmp_path / "qadd.onnx", calib, layout=QADD)
    ops = _fused_ops(q, tmp_path)
    assert ops["QLinearAdd"] == 2 and ops["QLinearGlobalAveragePool"] == 1 and ops["Add"] == 0, ops
    assert ops["QLinearConv"] == 7 and ops["QuantizeLinear"] == 1 and ops["DequantizeLinear"] == 1, ops
    x = batches(SHAPE, 1, seed=9)[0]
    with torch.no_grad():
        sim = QADD.simulate(model, calib, input_shape=SHAPE)(x).numpy()
        sim_old = ORT.simulate(model, calib, input_shape=SHAPE)(x).numpy()
        ref = model(x).numpy()
    for opt in (False, True):
        got = session(q, opt).run(None, {"input": x.numpy()})[0]
        assert np.abs(sim - got).mean() <= 0.01 * np.abs(ref).max()
    raw = session(q, False).run(None, {"input": x.numpy()})[0]
    # the skip's rounding is simulated: closer to the graph than the "ort" simulation is
    assert np.abs(sim - raw).mean() < np.abs(sim_old - raw).mean()


def test_qadd_plan_quantizes_a_skip_only_where_the_adding_block_reads_it(tmp_path):
    from hant_trt.quant.qdq_ort import plan_integer_adds

    model = TwoBlocks().eval()
    calib = calibrate(model, batches(SHAPE, 2))
    m = onnx.load(str(export_onnx(model, SHAPE, tmp_path / "f.onnx")))
    adds, pools = plan_integer_adds(m, plan_sites(m, calib))
    assert sorted(a.scope for a in adds) == ["a", "b"] and pools == []
    by = {s.path: s for s in plan_sites(m, calib)}
    assert {a.scope: a.range for a in adds} == {"a": by["a.conv_pw"].in_range, "b": by["b.conv_pw"].in_range}
    # a per-layer plan with block a in fp32: a's Add has no quantized branch, b's still qualifies
    part = calib.subset(("b.",))
    adds, _ = plan_integer_adds(m, plan_sites(m, part, only_calibrated=True))
    assert [a.scope for a in adds] == ["b"]


def test_int8_layout_follows_the_backend_unless_set():
    assert layout_for(ProfileCfg(backend="ort")) is LAYOUTS["ort-qadd"]
    assert layout_for(ProfileCfg(backend="ort", int8_layout="ort")) is LAYOUTS["ort"]
    assert layout_for(ProfileCfg(backend="tensorrt")) is LAYOUTS["trt"]
    assert layout_for(ProfileCfg(backend="ort", precisions=["fp16", "int8"])) is LAYOUTS["trt"]    # a GPU plan
    assert layout_for(ProfileCfg(backend="ort", int8_layout="trt")) is LAYOUTS["trt"]
    with pytest.raises(UserError, match="int8_layout"):
        layout_for(ProfileCfg(int8_layout="s8"))


def test_profile_keeps_ort_layout_rows_apart_from_tensorrt_layout_rows():
    from hant_trt.latency.profile import ProfileItem, table_key as _key

    class B:
        name = "ort"

        def version(self):
            return "1"

    it = ProfileItem("sig", (1, 16, 8, 8), lambda: None)
    assert _key(it, "int8", B(), "dev", ORT) != _key(it, "int8", B(), "dev", TRT)
    assert _key(it, "int8", B(), "dev", ORT)[3] == "int8:ort" and _key(it, "int8", B(), "dev", TRT)[3] == "int8"
    assert _key(it, "fp32", B(), "dev", ORT) == _key(it, "fp32", B(), "dev", TRT)


def test_convs_sharing_one_bias_initializer_get_their_own_int32_bias(tmp_path):
    # an untrained block: every folded bias is zero, and the exporter stores them once
    from timm.models._efficientnet_blocks import InvertedResidual

    torch.manual_seed(0)
    model = InvertedResidual(16, 16, dw_kernel_size=3, exp_ratio=1.0, act_layer=nn.ReLU6).eval()
    p = export_onnx(model, SHAPE, tmp_path / "f.onnx")
    g = onnx.load(str(p)).graph
    biases = [n.input[2] for n in g.node if n.op_type == "Conv" and len(n.input) > 2]
    assert len(set(biases)) < len(biases)                      # the shared initializer this is about
    calib = calibrate(model, batches(SHAPE, 2))
    q = write_ort_qdq(p, tmp_path / "q.onnx", calib)
    m = onnx.load(str(q))
    prod = {o: n for n in m.graph.node for o in n.output}
    bias_sources = [prod[n.input[2]].input[0] for n in m.graph.node if n.op_type == "Conv" and len(n.input) > 2]
    assert len(bias_sources) == len(biases) and len(set(bias_sources)) == len(bias_sources)
    x = batches(SHAPE, 1, seed=5)[0]
    got = session(q, True).run(None, {"input": x.numpy()})[0]
    with torch.no_grad():
        sim = fake_quantize_ort(model, calib, input_shape=SHAPE)(x).numpy()
    assert got.shape == sim.shape and np.abs(sim - got).mean() <= 0.01 * max(np.abs(sim).max(), 1e-6)


def test_junction_savings_are_measured_in_rounds_and_cached(lite0, tmp_path):
    """Real ORT on Lite0's stem and first two slots at 96 px: one saving per junction, the stem's and
    head's int8 timings, rows in the table, and a second call reads them instead of measuring."""
    from hant_trt.latency.backends import get_backend
    from hant_trt.latency.junction import measure_junctions, teacher_parts
    from hant_trt.latency.lut import LatencyTable
    from hant_trt.teacher.decompose import decompose

    d = decompose(lite0.model, 96)
    parts = teacher_parts(d, "lite0", 96, 1, {i: f"keep|{i}" for i in range(len(d.slots))})
    parts = parts[:3] + parts[-1:]          # stem, slot 0, slot 1, head: three junctions (slot 1 → head
    backend = get_backend("ort", threads=1)  # is not a real junction, but any two parts can be timed)
    parts[-1] = parts[-1].__class__("head", parts[-1].signature, nn.Sequential(d.blocks[2], *d.blocks[3:], d.head),
                                    parts[-1].input_shape[:1] + d.slots[2].in_shape)
    table = LatencyTable(tmp_path / "lut.sqlite")
    got = measure_junctions(parts, backend, table, tmp_path / "w", ORT, max_seconds=0.05, rounds=2, progress=False)
    assert got["stem_int8_s"] > 0 and got["head_int8_s"] > 0 and not got["failed"], got
    assert len(got["junction_saving_s"]) == 3 and all(isinstance(s, float) for s in got["junction_saving_s"])
    again = measure_junctions(parts, backend, table, tmp_path / "w2", ORT, max_seconds=0.05, rounds=2,
                              progress=False)
    assert again["junction_saving_s"] == got["junction_saving_s"]       # read from the table, not re-timed
    assert not (tmp_path / "w2").exists() or not any((tmp_path / "w2").glob("*.int8-ort.onnx"))
