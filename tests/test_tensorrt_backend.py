"""The TensorRT backend's build call sequence against a recording fake of `tensorrt` (10.x and
11.x), plus real-TensorRT tests that skip unless TensorRT imports and a GPU is visible."""

import json
import sys

import pytest

from fakes.fake_tensorrt import make_fake


@pytest.fixture(params=[10, 11])
def fake_trt(request, monkeypatch):
    fake = make_fake(request.param)
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    return fake


def names(calls):
    return [c[0] for c in calls]


def test_build_call_sequence(fake_trt, tmp_path):
    from hant_trt.latency.backends.tensorrt import TensorRTBackend, build_engine_file

    cache = tmp_path / "engines" / "timing.cache"
    be = TensorRTBackend(timing_cache=cache, workspace_mb=64, optimization_level=4)
    onnx = tmp_path / "m.onnx"
    onnx.write_bytes(b"onnx")
    plan = build_engine_file(onnx, tmp_path / "engines" / "m.plan", be)
    calls = fake_trt.calls
    seq = names(calls)
    order = ["Builder", "create_network", "OnnxParser", "parse_from_file", "create_builder_config",
             "config.set_memory_pool_limit", "config.create_timing_cache", "config.set_timing_cache",
             "build_serialized_network", "TimingCache.serialize"]
    pos = [seq.index(n) for n in order]
    assert pos == sorted(pos), seq
    flags = [c for c in calls if c[0] == "create_network"][0][1]
    ndcf = fake_trt.NetworkDefinitionCreationFlag
    assert flags == 1 << int(ndcf.STRONGLY_TYPED)            # strongly typed, never EXPLICIT_BATCH
    assert not any(c[0] == "config.set_flag" for c in calls)  # precision lives in the ONNX, no FP16/INT8 flags
    sets = {c[1]: c[2] for c in calls if c[0] == "config.set"}
    assert sets["builder_optimization_level"] == 4
    assert sets["profiling_verbosity"] == fake_trt.ProfilingVerbosity.DETAILED
    assert [c for c in calls if c[0] == "config.set_memory_pool_limit"][0][2] == 64 << 20
    assert plan.read_bytes() == b"PLAN" and cache.read_bytes() == b"cache:"
    info = json.loads((tmp_path / "engines" / "m.plan.layers.json").read_text())
    assert ("I/O Tensors" if int(fake_trt.__version__[:2]) >= 11 else "Bindings") in info
    # the second build loads the persistent timing cache
    fake_trt.calls.clear()
    be.build(onnx)
    assert [c for c in fake_trt.calls if c[0] == "config.create_timing_cache"][0][1] == b"cache:"


def test_hardware_compatibility_opt_in(fake_trt, tmp_path):
    from hant_trt.latency.backends.tensorrt import TensorRTBackend

    be = TensorRTBackend(timing_cache=tmp_path / "t.cache", hardware_compatible=True)
    (tmp_path / "m.onnx").write_bytes(b"x")
    be.build(tmp_path / "m.onnx")
    sets = {c[1]: c[2] for c in fake_trt.calls if c[0] == "config.set"}
    assert sets["hardware_compatibility_level"] == fake_trt.HardwareCompatibilityLevel.AMPERE_PLUS


def _real_trt_and_gpu() -> bool:
    try:
        import tensorrt  # noqa: F401
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


@pytest.mark.tensorrt
@pytest.mark.skipif(not _real_trt_and_gpu(), reason="needs real TensorRT and a CUDA GPU")
def test_real_tensorrt_build_and_time(tmp_path):
    import torch

    from hant_trt.latency.backends.tensorrt import TensorRTBackend
    from hant_trt.latency.export import export_onnx

    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU()).eval()
    p = export_onnx(net, (1, 3, 32, 32), tmp_path / "n.onnx")
    be = TensorRTBackend(timing_cache=tmp_path / "t.cache")
    t = be.time(be.prepare(p), max_seconds=0.5)
    assert t.median_s > 0 and t.gpu_compute.median_s > 0
