"""Backends behind one interface: ORT and torch for real, TensorRT against recording fakes of
`tensorrt` and cuda-python (both API generations, both cuda-python module layouts)."""

import json
import sys

import numpy as np
import pytest
import torch

from fakes.fake_tensorrt import FakeGpu, install
from hant_trt.errors import UserError
from hant_trt.latency.backends import BACKENDS, get_backend
from hant_trt.latency.device import DeviceInfo


def tiny_onnx(path, shape=(1, 3, 8, 8)):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(shape[1], 4, 3, padding=1), torch.nn.ReLU()).eval()
    from hant_trt.latency.export import export_onnx

    return export_onnx(net, shape, path)


# -- registry and bad input ----------------------------------------------------------------------------
def test_registry_names_and_unknown_backend():
    assert set(BACKENDS) == {"ort", "torch", "tensorrt"}
    with pytest.raises(UserError, match="unknown backend 'tpu'.*ort"):
        get_backend("tpu")


def test_tensorrt_missing_names_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import tensorrt → ImportError
    with pytest.raises(UserError, match="pip install") as e:
        get_backend("tensorrt")
    assert "\n" not in str(e.value)


# -- ONNX Runtime ----------------------------------------------------------------------------------------
def test_ort_times_an_onnx_and_describes_the_cpu(tmp_path):
    be = get_backend("ort", threads=1)
    t = be.time(be.prepare(tiny_onnx(tmp_path / "m.onnx")), warmup_ms=10, max_seconds=0.2)
    assert t.count >= 10 and 0 < t.stats.min <= t.median_s <= t.p90_s <= t.stats.max
    assert t.walltime_s >= sum(t.times_s) * 0.99 and not t.device_timed
    dev = be.device()
    assert dev.kind == "cpu" and dev.details["threads"] == 1
    # the fingerprint separates thread counts (a 1-thread latency is not a 2-thread one)
    assert get_backend("ort", threads=2).device().fingerprint != dev.fingerprint
    assert be.version() == __import__("onnxruntime").__version__


def test_ort_unreadable_onnx_is_one_line(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x00garbage")
    with pytest.raises(UserError) as e:
        get_backend("ort", threads=1).prepare(bad)
    assert "bad.onnx" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(UserError, match="not found"):
        get_backend("ort").prepare(tmp_path / "missing.onnx")


def test_ort_batch_fills_a_dynamic_leading_dimension(tmp_path):
    net = torch.nn.Conv2d(3, 4, 1).eval()
    p = tmp_path / "dyn.onnx"
    torch.onnx.export(net, torch.randn(1, 3, 4, 4), str(p), input_names=["input"], output_names=["output"],
                      dynamic_axes={"input": {0: "n"}, "output": {0: "n"}}, opset_version=17, dynamo=False)
    sess, feed = get_backend("ort", threads=1, batch=5).prepare(p)
    assert feed["input"].shape == (5, 3, 4, 4)


# -- PyTorch ------------------------------------------------------------------------------------------
def test_torch_backend_times_a_module_and_refuses_files(tmp_path):
    be = get_backend("torch", threads=1, device="cpu")
    prepared = be.prepare_module(torch.nn.Conv2d(3, 4, 3), (1, 3, 8, 8))
    t = be.time(prepared, warmup_ms=5, max_seconds=0.1)
    assert t.count >= 10 and t.median_s > 0
    assert be.device().kind == "cpu" and be.version().startswith(torch.__version__)
    with pytest.raises(UserError, match="--backend ort"):
        be.prepare(tmp_path / "m.onnx")
    with pytest.raises(UserError, match="CUDA"):
        be.prepare_module(torch.nn.Conv2d(3, 4, 3), (1, 3, 8, 8), precision="fp16")


def test_device_fingerprint_is_stable_and_distinguishes():
    a = DeviceInfo("cuda", "GPU X", {"cc": "8.6", "driver": 12080})
    assert a.fingerprint == DeviceInfo("cuda", "GPU X", {"driver": 12080, "cc": "8.6"}).fingerprint
    assert a.fingerprint != DeviceInfo("cuda", "GPU X", {"cc": "8.9", "driver": 12080}).fingerprint
    assert a.fingerprint != DeviceInfo("cuda", "GPU X", {"cc": "8.6", "driver": 12090}).fingerprint


# -- TensorRT against the fakes ------------------------------------------------------------------------------
@pytest.fixture(params=[(10, "legacy"), (11, "bindings"), (10, "bindings"), (11, "legacy")],
                ids=["trt10-cudart", "trt11-bindings", "trt10-bindings", "trt11-cudart"])
def fake(request, monkeypatch, tmp_path):
    major, layout = request.param
    return install(monkeypatch, major, layout, FakeGpu(compute_ms=1.0))


def names(calls):
    return [c[0] for c in calls]


def test_api_generation_detected_from_the_module(fake):
    from hant_trt.latency.backends.tensorrt import TensorRTBackend, api_generation

    gen = int(fake.__version__.split(".")[0])
    assert api_generation(fake) == gen
    be = TensorRTBackend(timing_cache="unused.cache")
    # never EXPLICIT_BATCH (default since 10, absent on 11); strongly typed on both
    assert be.network_flags() == 1 << int(fake.NetworkDefinitionCreationFlag.STRONGLY_TYPED)


def test_build_sequence_flags_and_timing_cache(fake, tmp_path):
    from hant_trt.latency.backends.tensorrt import TensorRTBackend, build_engine_file

    onnx = tmp_path / "m.onnx"
    onnx.write_bytes(b"onnx")
    cache = tmp_path / "engines" / "timing.cache"
    be = TensorRTBackend(timing_cache=cache, workspace_mb=512, optimization_level=5)
    plan = build_engine_file(onnx, tmp_path / "engines" / "m.plan", be)
    seq = names(fake.calls)
    order = ["Builder", "create_network", "OnnxParser", "parse_from_file", "create_builder_config",
             "config.set_memory_pool_limit", "config.create_timing_cache", "config.set_timing_cache",
             "build_serialized_network", "TimingCache.serialize", "deserialize_cuda_engine",
             "inspector.get_engine_information"]
    assert [seq.index(n) for n in order] == sorted(seq.index(n) for n in order), seq
    assert not any(c[0] == "config.set_flag" for c in fake.calls)   # no FP16/INT8 flags on either generation
    assert "create_optimization_profile" not in seq                 # static shapes need no profile
    sets = {c[1]: c[2] for c in fake.calls if c[0] == "config.set"}
    assert sets == {"builder_optimization_level": 5, "profiling_verbosity": fake.ProfilingVerbosity.DETAILED}
    assert [c[2] for c in fake.calls if c[0] == "config.set_memory_pool_limit"] == [512 << 20]
    assert [c[1] for c in fake.calls if c[0] == "config.set_timing_cache"] == [False]
    assert plan.read_bytes() == b"PLAN" and cache.read_bytes() == b"cache:"
    info = json.loads((tmp_path / "engines" / "m.plan.layers.json").read_text())
    assert ("I/O Tensors" if fake.__version__.startswith("11") else "Bindings") in info
    fake.calls.clear()
    be.build(onnx)  # the persistent cache is loaded, extended and saved again
    assert [c[1] for c in fake.calls if c[0] == "config.create_timing_cache"] == [b"cache:"]
    assert cache.read_bytes() == b"cache:cache:"


def test_parse_failure_is_a_user_error(fake, tmp_path):
    from hant_trt.latency.backends.tensorrt import TensorRTBackend

    (tmp_path / "m.onnx").write_bytes(b"x")
    fake.OnnxParser.errors = ["Unsupported ONNX op: Foo"]
    with pytest.raises(UserError, match="cannot parse m.onnx: Unsupported ONNX op: Foo"):
        TensorRTBackend(timing_cache=tmp_path / "c").build(tmp_path / "m.onnx")


def test_dynamic_batch_gets_an_optimization_profile(fake, tmp_path):
    from hant_trt.latency.backends.tensorrt import TensorRTBackend

    fake.io["input"] = (fake.TensorIOMode.INPUT, (-1, 3, 8, 8), fake.DataType.FLOAT)
    (tmp_path / "m.onnx").write_bytes(b"x")
    TensorRTBackend(timing_cache=tmp_path / "c", batch=4).build(tmp_path / "m.onnx")
    assert ("profile.set_shape", "input", (4, 3, 8, 8), (4, 3, 8, 8), (4, 3, 8, 8)) in fake.calls


def test_runtime_sequence_cuda_graph_and_event_timing(fake, tmp_path):
    from hant_trt.latency.backends.tensorrt import TensorRTBackend

    (tmp_path / "m.onnx").write_bytes(b"x")
    be = TensorRTBackend(timing_cache=tmp_path / "c", data_transfers=True)
    prepared = be.prepare(tmp_path / "m.onnx")
    seq = names(fake.calls)
    # every I/O tensor bound to a device buffer before the first enqueue; that enqueue happens
    # before capture (lazy allocations must not be captured); the graph is then instantiated
    addr = [c[1] for c in fake.calls if c[0] == "context.set_tensor_address"]
    assert sorted(addr) == ["input", "output"]
    first_exec = seq.index("context.execute_async_v3")
    assert max(i for i, n in enumerate(seq) if n == "context.set_tensor_address") < first_exec
    assert first_exec < seq.index("cuda.cudaStreamBeginCapture") < seq.index("cuda.cudaStreamEndCapture") \
        < seq.index("cuda.cudaGraphInstantiate")
    assert "cuda.cudaMallocHost" in seq  # pinned host buffers
    fake.calls.clear()
    t = be.time(prepared, warmup_ms=1, min_iters=12, max_seconds=0.05, cv_target=0)
    seq = names(fake.calls)
    assert "context.execute_async_v3" not in seq and seq.count("cuda.cudaGraphLaunch") >= t.count
    assert t.device_timed and t.cuda_graph and t.count >= 12
    # compute = exactly what the fake GPU charged; H2D 768 B and D2H 1 KiB at 1 µs per KiB
    assert t.gpu_compute.median_s == pytest.approx(1e-3)
    assert np.allclose(t.h2d_s, 0.75e-6) and np.allclose(t.d2h_s, 1e-6)
    assert t.median_s == pytest.approx(1e-3 + 1.75e-6)
    # each timed iteration: H2D between events 0/1, launch between 1/2, D2H between 2/3
    one = seq[seq.index("cuda.cudaEventRecord"):]
    one = one[:one.index("cuda.cudaStreamSynchronize") + 1]
    assert [n for n in one if n != "cuda.cudaEventRecord"] == [
        "cuda.cudaMemcpyAsync", "cuda.cudaGraphLaunch", "cuda.cudaMemcpyAsync", "cuda.cudaStreamSynchronize"]
    assert one.count("cuda.cudaEventRecord") == 4
    rec = t.records[0]
    assert rec["computeMs"] == pytest.approx(1.0) and rec["latencyMs"] == pytest.approx(1.00175)


def test_capture_failure_falls_back_to_plain_enqueue(monkeypatch, tmp_path):
    from hant_trt.latency.backends.tensorrt import TensorRTBackend

    fake = install(monkeypatch, 11, "bindings", FakeGpu(compute_ms=2.0, capture_fails=True))
    (tmp_path / "m.onnx").write_bytes(b"x")
    be = TensorRTBackend(timing_cache=tmp_path / "c")   # data_transfers off: compute only
    prepared = be.prepare(tmp_path / "m.onnx")
    assert prepared.graph_exec is None and "cuda.cudaGetLastError" in names(fake.calls)
    fake.calls.clear()
    t = be.time(prepared, warmup_ms=1, min_iters=10, max_seconds=0.05)
    assert not t.cuda_graph and names(fake.calls).count("context.execute_async_v3") >= t.count
    assert "cuda.cudaMemcpyAsync" not in names(fake.calls)
    assert t.median_s == pytest.approx(2e-3) and t.stats.max == pytest.approx(2e-3)


def test_device_fingerprint_from_cuda_runtime(fake, tmp_path):
    from hant_trt.latency.backends.tensorrt import TensorRTBackend

    dev = TensorRTBackend(timing_cache=tmp_path / "c").device()
    assert (dev.kind, dev.name, dev.details["cc"], dev.details["driver"]) == ("cuda", "Fake GPU 4090", "8.9", 12080)


def test_plan_for_another_gpu_or_version_is_refused(fake, tmp_path):
    from hant_trt.deploy.metadata import EngineMetadata, write_metadata
    from hant_trt.latency.backends.tensorrt import TensorRTBackend

    plan = tmp_path / "m.plan"
    plan.write_bytes(b"PLAN")
    be = TensorRTBackend(timing_cache=tmp_path / "c")
    write_metadata(plan, EngineMetadata(name="m", format="tensorrt_plan", file=str(plan),
                                        tensorrt_version=be.version(), gpu_name="Other GPU",
                                        compute_capability="7.5"))
    with pytest.raises(UserError, match="compute capability 7.5.*8.9"):
        be.prepare(plan)
    write_metadata(plan, EngineMetadata(name="m", format="tensorrt_plan", file=str(plan), tensorrt_version="9.9.9",
                                        gpu_name="Fake GPU 4090", compute_capability="8.9"))
    with pytest.raises(UserError, match="TensorRT 9.9.9"):
        be.prepare(plan)
    write_metadata(plan, EngineMetadata(name="m", format="tensorrt_plan", file=str(plan),
                                        tensorrt_version=be.version(), gpu_name="Fake GPU 4090",
                                        compute_capability="8.9"))
    assert be.prepare(plan).engine is not None
    # a plan TensorRT itself refuses (no metadata) is one line too
    (tmp_path / "x.plan").write_bytes(b"NOT A PLAN")
    with pytest.raises(UserError, match="another TensorRT version or GPU"):
        be.prepare(tmp_path / "x.plan")


# -- real TensorRT: skipped unless it imports and a GPU is visible -------------------------------------------
def _real_trt_and_gpu() -> bool:
    try:
        import tensorrt  # noqa: F401

        return torch.cuda.is_available()
    except ImportError:
        return False


@pytest.mark.tensorrt
@pytest.mark.skipif(not _real_trt_and_gpu(), reason="needs real TensorRT and a CUDA GPU")
def test_real_tensorrt_build_time_and_outputs(tmp_path):
    from hant_trt.latency.backends.tensorrt import TensorRTBackend, build_engine_file

    p = tiny_onnx(tmp_path / "n.onnx")
    be = TensorRTBackend(timing_cache=tmp_path / "t.cache", data_transfers=True)
    plan = build_engine_file(p, tmp_path / "n.plan", be)
    assert (tmp_path / "t.cache").stat().st_size > 0 and json.loads((tmp_path / "n.plan.layers.json").read_text())
    prepared = be.prepare(p)
    t = be.time(prepared, max_seconds=0.5)
    assert t.device_timed and t.gpu_compute.median_s > 0 and plan.stat().st_size > 0
    out = prepared.outputs()
    assert all(np.isfinite(v).all() for v in out.values())


@pytest.mark.slow
def test_validation_tool_runs_end_to_end_against_the_fakes(tmp_path):
    """tools/validate_tensorrt.py is for GPU machines; running it over the fakes keeps it from rotting."""
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    code = f"""
import sys
sys.path[:0] = [{str(root / 'tests')!r}, {str(root / 'tools')!r}]
from fakes.fake_tensorrt import install
class MP:
    def setitem(self, d, k, v): d[k] = v
    def delitem(self, d, k, raising=True): d.pop(k, None)
install(MP(), 11, "bindings")
sys.argv = ["validate_tensorrt.py", "--workdir", {str(tmp_path)!r}]
import validate_tensorrt
sys.exit(validate_tensorrt.main())
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=root)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "0 failed" in r.stdout and "API generation 11" in r.stdout and "[FAIL]" not in r.stdout
    assert r.stdout.count("=== Performance summary ===") == 3 and (tmp_path / "timing.cache").is_file()
