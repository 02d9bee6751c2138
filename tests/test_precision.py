"""fp16 conversion, calibration, int8 Q/DQ insertion and the PyTorch int8 simulation.

Tolerances (stated here and in the report):
- fp16 vs fp32 on ORT: max |diff| <= 1e-2 * max(1, max|fp32|);
- int8 Q/DQ vs fp32 on ORT: cosine >= 0.99 and max |diff| <= 5% of max|fp32|;
- PyTorch fake-quant vs the Q/DQ ONNX on ORT: max |diff| <= 1e-3 * max|fp32| and <= 10% of the
  int8 error itself (float summation order may flip a rare value across a rounding boundary).
"""

from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from onnx import TensorProto, numpy_helper
from torch import nn

from hant_trt.errors import UserError
from hant_trt.quant.calibrate import (CalibResult, _Histogram, calibrate, calibrate_cached, entropy_amax,
                                        percentile_amax)
from hant_trt.latency.export import export_onnx
from hant_trt.latency.precision import to_fp16
from hant_trt.quant.fakequant import fake_quantize
from hant_trt.quant.layouts import quantize_int8
from hant_trt.quant.qdq_trt import quantize_qdq

from test_export import mbconv, randomize_bn, tiny_net  # noqa: E402  (tests/ is on sys.path)

SHAPE = (2, 16, 12, 12)


def run_ort(path, x: np.ndarray) -> np.ndarray:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]


def batches(shape, n=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(*shape, generator=g) for _ in range(n)]


class Head(nn.Module):
    """Conv stem + Linear head: exercises Gemm quantization and Resize's fp32-only scales."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.conv = nn.Conv2d(16, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        y = F.interpolate(F.hardswish(self.bn(self.conv(x))), scale_factor=1.5, mode="nearest")
        return self.fc(y.mean((2, 3)))


@pytest.fixture(scope="module")
def block_onnx(tmp_path_factory):
    model = mbconv()
    path = export_onnx(model, SHAPE, tmp_path_factory.mktemp("b") / "block.onnx")
    return model, path


# ------------------------------------------------------------------ fp16


@pytest.mark.parametrize("make", ["block", "head"])
def test_fp16_runs_on_ort_and_stays_close(tmp_path, make, block_onnx):
    if make == "block":
        model, p = block_onnx
    else:
        model = randomize_bn(Head())
        p = export_onnx(model, SHAPE, tmp_path / "h32.onnx")
    h = to_fp16(p, tmp_path / "h.onnx")
    m = onnx.load(str(h))
    onnx.checker.check_model(m, full_check=True)
    assert m.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT       # keep_io_types
    assert m.graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT
    big = [i.name for i in m.graph.initializer if i.data_type == TensorProto.FLOAT and np.prod(i.dims) > 1]
    assert not big, big                                  # every weight is fp16
    assert any(i.data_type == TensorProto.FLOAT16 for i in m.graph.initializer)
    for n in m.graph.node:
        if n.op_type == "Resize":                            # scales: fp32 constant, never via fp16
            assert producer_map(m.graph)[n.input[2]].op_type == "Constant"
    x = batches(SHAPE, 1, seed=3)[0].numpy()
    ref = run_ort(p, x)
    y = run_ort(h, x)
    assert y.dtype == np.float32
    assert np.abs(y - ref).max() <= 1e-2 * max(1.0, np.abs(ref).max())


def test_fp16_without_io_casts(tmp_path, block_onnx):
    _, p = block_onnx
    h = to_fp16(p, tmp_path / "h.onnx", keep_io_types=False)
    m = onnx.load(str(h))
    assert m.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT16
    assert "Cast" not in {n.op_type for n in m.graph.node}
    x = batches(SHAPE, 1, seed=3)[0].numpy()
    y = run_ort(h, x.astype(np.float16))
    assert y.dtype == np.float16
    assert np.abs(y.astype(np.float32) - run_ort(p, x)).max() <= 1e-2 * max(1.0, np.abs(y).max())


# ------------------------------------------------------------------ calibration


def test_calibrate_max_is_the_true_input_range():
    model = tiny_net()
    xs = batches((2, 3, 10, 10), 3)
    res = calibrate(model, xs, method="max")
    assert set(res.amax) == {"0", "3"} and res.batches == 3 and res.samples == 6
    assert res.amax["0"] == pytest.approx(max(float(x.abs().max()) for x in xs))
    with torch.no_grad():
        mid = [model[:3](x) for x in xs]                       # input of the second conv
    assert res.amax["3"] == pytest.approx(max(float(t.abs().max()) for t in mid), rel=1e-6)


def test_percentile_and_entropy_are_clipped_ranges():
    model = tiny_net()
    xs = batches((2, 3, 16, 16), 4)
    mx = calibrate(model, xs, "max").amax
    pc = calibrate(model, xs, "percentile", percentile=99.0).amax
    en = calibrate(model, xs, "entropy").amax
    a = np.abs(torch.cat(xs).numpy()).ravel()
    width = mx["0"] / 2048
    assert abs(pc["0"] - np.percentile(a, 99.0)) <= 2 * width
    for k in mx:
        assert 0 < pc[k] < mx[k] and 0 < en[k] <= mx[k] + 1e-6


def _entropy_reference(hist, edges, num_bits=8, start_bin=128):
    """pytorch-quantization's _compute_amax_entropy, loop for loop (slow, small histograms only)."""
    bins = hist.astype(np.float64).copy()
    bins[0] = bins[1]
    nbins = 1 << (num_bits - 1)
    divs = []
    for i in range(start_bin, len(bins) + 1):
        space = np.linspace(0, i, num=nbins + 1)
        dig = np.digitize(range(i), space) - 1
        dig[bins[:i] == 0] = -1
        counts = np.zeros(nbins)
        for idx, d in enumerate(dig):
            if d != -1:
                counts[d] += bins[idx]
        for key, val in Counter(dig).items():
            if key != -1:
                counts[key] /= val
        new = np.array([counts[d] if d != -1 else 0.0 for d in dig])
        ref = bins[:i].copy()
        ref[-1] += bins[i:].sum()
        p, q = ref / ref.sum(), new / new.sum()
        with np.errstate(divide="ignore", invalid="ignore"):
            divs.append(np.sum(np.where(p > 0, p * np.log(p / q), 0.0)))
    divs = np.array(divs)
    return edges[len(divs) - 1 - np.argmin(divs[::-1]) + start_bin]


@pytest.mark.parametrize("seed", [0, 1])
def test_entropy_matches_tensorrt_style_reference(seed):
    rng = np.random.default_rng(seed)
    x = np.abs(rng.standard_t(3, 50000)) if seed else np.maximum(rng.standard_normal(50000), 0)
    h, e = np.histogram(x, bins=300, range=(0, x.max()))
    got = entropy_amax(h, e)
    assert got == pytest.approx(_entropy_reference(h, e))
    assert got < x.max()                                    # heavy tail clipped
    assert percentile_amax(h, e, 100.0) == pytest.approx(e[-1])


def test_histogram_grows_without_rebinning():
    h = _Histogram(num_bins=128)
    h.add(torch.linspace(-1, 1, 1000))
    h.add(torch.full((10,), 3.0))                           # beyond the first range: bins appended
    assert h.counts.sum() == 1010 and h.edges()[-1] >= 3.0 and h.width == pytest.approx(1 / 128)


def test_calibrate_cached_reuses_and_invalidates(tmp_path):
    model = tiny_net()
    calls = []

    def data():
        calls.append(1)
        return batches((1, 3, 8, 8), 2)

    key = {"signature": "tiny|3x8x8", "images": "abc"}
    a = calibrate_cached(key, model, data, method="percentile", cache_dir=tmp_path)
    b = calibrate_cached(key, model, data, method="percentile", cache_dir=tmp_path)
    assert len(calls) == 1 and a == b and len(list(tmp_path.glob("*.json"))) == 1
    calibrate_cached({**key, "images": "xyz"}, model, data, method="percentile", cache_dir=tmp_path)
    calibrate_cached(key, model, data, method="percentile", percentile=99.0, cache_dir=tmp_path)
    assert len(calls) == 3 and len(list(tmp_path.glob("*.json"))) == 3
    first = sorted(tmp_path.glob("*.json"), key=lambda p: p.stat().st_mtime)[0]
    first.write_text("{broken")
    calibrate_cached(key, model, data, method="percentile", cache_dir=tmp_path)
    assert len(calls) == 4


def test_calibrate_rejects_bad_input():
    with pytest.raises(UserError, match="method"):
        calibrate(tiny_net(), batches((1, 3, 8, 8), 1), method="minmax")
    with pytest.raises(UserError, match="no batches"):
        calibrate(tiny_net(), [], method="max")
    with pytest.raises(UserError, match="Conv2d/Linear"):
        calibrate(nn.ReLU(), batches((1, 3, 8, 8), 1))


# ------------------------------------------------------------------ int8 Q/DQ


def producer_map(g):
    return {o: n for n in g.node for o in n.output}


def assert_tensorrt_qdq_layout(model: onnx.ModelProto, per_channel: bool = True) -> None:
    """TensorRT explicit quantization: each Conv/Gemm reads X through Q→DQ (per-tensor, symmetric)
    and its weight through DQ of an int8 constant (per output channel, symmetric)."""
    g = model.graph
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 13
    inits = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    prod = producer_map(g)
    layers = [n for n in g.node if n.op_type in ("Conv", "Gemm")]
    assert layers
    for n in layers:
        dq = prod[n.input[0]]
        assert dq.op_type == "DequantizeLinear", n.name
        q = prod[dq.input[0]]
        assert q.op_type == "QuantizeLinear", n.name
        for node in (q, dq):
            scale, zp = inits[node.input[1]], inits[node.input[2]]
            assert scale.shape == () and scale.dtype == np.float32 and scale > 0
            assert zp.shape == () and zp.dtype == np.int8 and zp == 0
        assert q.input[1] == dq.input[1]                     # same scale on both sides
        wdq = prod[n.input[1]]
        assert wdq.op_type == "DequantizeLinear", n.name
        w, ws, wz = (inits[i] for i in wdq.input)
        assert w.dtype == np.int8 and np.abs(w.astype(int)).max() <= 127
        assert ws.dtype == np.float32 and (ws > 0).all() and wz.dtype == np.int8 and (wz == 0).all()
        axis = next((a.i for a in wdq.attribute if a.name == "axis"), None)
        if per_channel:
            trans_b = next((a.i for a in n.attribute if a.name == "transB"), 0)
            assert axis == (0 if n.op_type == "Conv" or trans_b else 1)
            assert ws.shape == (w.shape[axis],) and wz.shape == ws.shape
        else:
            assert ws.shape == () and axis is None
        if len(n.input) > 2:
            assert inits[n.input[2]].dtype == np.float32      # bias stays float


def cosine(a, b):
    return float((a * b).sum() / np.linalg.norm(a) / np.linalg.norm(b))


@pytest.mark.parametrize("method", ["max", "percentile", "entropy"])
def test_int8_qdq_mbconv_runs_on_ort_close_to_fp32_and_matches_fake_quant(tmp_path, block_onnx, method):
    model, p = block_onnx
    calib = calibrate(model, batches(SHAPE, 4), method=method)
    q = quantize_qdq(p, tmp_path / "q.onnx", calib)
    m = onnx.load(str(q))
    onnx.checker.check_model(m, full_check=True)
    assert_tensorrt_qdq_layout(m)
    add = next(n for n in m.graph.node if n.op_type == "Add")
    assert "input" in add.input                              # residual reads the float tensor
    x = batches(SHAPE, 1, seed=9)[0]
    ref = run_ort(p, x.numpy())
    y = run_ort(q, x.numpy())
    err = np.abs(y - ref).max()
    assert cosine(y, ref) >= 0.99 and err <= 0.05 * np.abs(ref).max(), (cosine(y, ref), err)
    with torch.no_grad():
        sim = fake_quantize(model, calib)(x).numpy()
    gap = np.abs(sim - y).max()
    assert gap <= 1e-3 * np.abs(ref).max() and gap <= 0.1 * err, (gap, err)
    assert np.abs(sim - ref).max() > 10 * gap                # the simulation really quantizes


def test_int8_qdq_with_linear_head_and_per_tensor_weights(tmp_path):
    model = randomize_bn(Head())
    p = export_onnx(model, SHAPE, tmp_path / "h.onnx")
    calib = calibrate(model, batches(SHAPE, 3))
    assert set(calib.amax) == {"conv", "fc"}
    x = batches(SHAPE, 1, seed=5)[0]
    ref = run_ort(p, x.numpy())
    for per_channel in (True, False):
        q = quantize_qdq(p, tmp_path / f"q{per_channel}.onnx", calib, per_channel=per_channel)
        assert_tensorrt_qdq_layout(onnx.load(str(q)), per_channel=per_channel)
        y = run_ort(q, x.numpy())
        assert cosine(y, ref) >= 0.99
        with torch.no_grad():
            sim = fake_quantize(model, calib, per_channel=per_channel)(x).numpy()
        assert np.abs(sim - y).max() <= 1e-3 * max(1.0, np.abs(ref).max())


def test_quantize_qdq_needs_matching_ranges(tmp_path, block_onnx):
    model, p = block_onnx
    calib = calibrate(model, batches(SHAPE, 1))
    partial = CalibResult(amax={k: v for k, v in calib.amax.items() if k != "conv_dw"})
    with pytest.raises(UserError, match="conv_dw"):
        quantize_qdq(p, tmp_path / "q.onnx", partial)
    with pytest.raises(UserError, match="conv_dw"):
        fake_quantize(model, partial)
    with pytest.raises(TypeError):
        quantize_qdq(p, tmp_path / "q.onnx", batches(SHAPE, 1))
    assert not (tmp_path / "q.onnx").exists()


def test_quantize_int8_from_real_batches(tmp_path):
    model = mbconv()
    out = quantize_int8(model, SHAPE, tmp_path / "i8.onnx", calib=lambda: batches(SHAPE, 2), method="entropy")
    assert_tensorrt_qdq_layout(onnx.load(str(out)))
    x = batches(SHAPE, 1, seed=2)[0]
    with torch.no_grad():
        ref = model(x).numpy()
    assert cosine(run_ort(out, x.numpy()), ref) >= 0.99
