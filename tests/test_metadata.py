"""Engine metadata: round trip, refusal of foreign plans, I/O from ONNX, ORT offline optimisation."""

import hashlib
import json
from dataclasses import asdict

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from hant_trt.deploy.metadata import (EngineMetadata, check_compatible, io_from_onnx, metadata_path,
                                     optimize_for_ort, read_metadata, write_metadata)
from hant_trt.errors import UserError


def _tiny_onnx(path, dynamic_batch=False):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
                              torch.nn.Conv2d(8, 8, 3, padding=1, groups=8), torch.nn.Hardswish(),
                              torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 10)).eval()
    axes = {"input": {0: "batch"}, "logits": {0: "batch"}} if dynamic_batch else None
    torch.onnx.export(net, (torch.randn(1, 3, 16, 16),), str(path), dynamo=False, opset_version=17,
                      input_names=["input"], output_names=["logits"], dynamic_axes=axes)
    return path


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return _tiny_onnx(tmp_path_factory.mktemp("m") / "student.onnx")


def _plan_meta(plan, **kw):
    base = dict(name="s", format="tensorrt_plan", file=plan.name, tensorrt_version="10.9.0.34",
                cuda_version="12.8", gpu_name="NVIDIA A10", compute_capability="8.6",
                precision_plan=[{"slot": "0", "op": "keep", "precision": "fp16"},
                                {"slot": "1-2", "op": "ir_k3_e4", "precision": "int8"}],
                inputs=[{"name": "input", "dtype": "FP32", "shape": [1, 3, 16, 16]}],
                outputs=[{"name": "logits", "dtype": "FP32", "shape": [1, 10]}],
                predicted_latency_s=0.0012, measured_latency_s=0.00125, accuracy={"agreement": 97.5},
                teacher={"model": "efficientnet_lite0", "measured_latency_s": 0.002})
    base.update(kw)
    return EngineMetadata(**base)


def test_round_trip(tmp_path):
    plan = tmp_path / "s.plan"
    plan.write_bytes(b"\x00plan bytes")
    meta = _plan_meta(plan)
    jpath = write_metadata(plan, meta)
    assert jpath == metadata_path(plan) == tmp_path / "s.plan.json"
    raw = json.loads(jpath.read_text())
    assert raw["sha256"] == hashlib.sha256(b"\x00plan bytes").hexdigest()
    assert raw["created"].endswith("Z") and raw["hant_trt_version"]
    back = read_metadata(plan)
    assert asdict(back) == asdict(meta) == raw
    assert asdict(read_metadata(jpath)) == raw    # the JSON path works too
    assert back.precision_plan[1] == {"slot": "1-2", "op": "ir_k3_e4", "precision": "int8"}


def test_plan_for_another_gpu_or_tensorrt_is_refused(tmp_path):
    plan = tmp_path / "s.plan"
    plan.write_bytes(b"p")
    write_metadata(plan, _plan_meta(plan))
    meta = read_metadata(plan)
    here = {"gpu_name": "NVIDIA A10", "compute_capability": (8, 6), "tensorrt_version": "10.9.0"}
    check_compatible(meta, here)   # same release at a different precision, cc as a tuple: fine
    check_compatible(meta, {"gpu_name": " nvidia  a10 "})
    check_compatible(meta, {})     # nothing known about this machine: nothing to refuse
    with pytest.raises(UserError, match=r"^s.plan was built for TensorRT 10.9.0.34, this machine has 10.13.2"):
        check_compatible(meta, {**here, "tensorrt_version": "10.13.2", "gpu_name": "NVIDIA H100"})
    with pytest.raises(UserError, match=r"built for GPU compute capability 8.6, this machine has 9.0"):
        check_compatible(meta, {**here, "compute_capability": (9, 0)})
    with pytest.raises(UserError, match=r"built for GPU NVIDIA A10, this machine has NVIDIA A10G"):
        check_compatible(meta, {**here, "gpu_name": "NVIDIA A10G"})
    msg = ""
    try:
        check_compatible(meta, {**here, "gpu_name": "NVIDIA A10G"})
    except UserError as exc:
        msg = str(exc)
    assert "\n" not in msg and "hant-trt build" in msg


def test_cpu_engine_metadata_is_not_checked_against_gpus(model, tmp_path):
    eng = optimize_for_ort(model, tmp_path / "s.ort.onnx")
    ins, outs = io_from_onnx(eng)
    write_metadata(eng, EngineMetadata(name="s", format="onnxruntime_onnx", file="", inputs=ins, outputs=outs,
                                       cpu="AMD EPYC"))
    meta = read_metadata(eng)
    assert meta.ort_version == ort.__version__ and meta.file == "s.ort.onnx"
    check_compatible(meta, {"gpu_name": "NVIDIA A10", "compute_capability": "8.6", "tensorrt_version": "10.9"})


def test_bad_or_stale_metadata(tmp_path):
    plan = tmp_path / "s.plan"
    plan.write_bytes(b"p1")
    with pytest.raises(UserError, match="no metadata s.plan.json"):
        read_metadata(plan)
    write_metadata(plan, _plan_meta(plan))
    plan.write_bytes(b"p2")   # swapped under its metadata
    with pytest.raises(UserError, match="does not match its metadata"):
        read_metadata(plan)
    assert read_metadata(plan, verify=False).name == "s"
    j = metadata_path(plan)
    raw = json.loads(j.read_text())
    j.write_text(json.dumps({**raw, "field_from_the_future": 1, "sha256": ""}))
    assert read_metadata(plan).name == "s"    # unknown keys ignored
    j.write_text(json.dumps({**raw, "format": "tflite"}))
    with pytest.raises(UserError, match="not valid engine metadata.*tflite"):
        read_metadata(plan)
    j.write_text("{not json")
    with pytest.raises(UserError, match="not valid engine metadata"):
        read_metadata(plan)
    with pytest.raises(ValueError, match="format"):
        write_metadata(plan, _plan_meta(plan, format="engine"))
    with pytest.raises(UserError, match="not found"):
        write_metadata(tmp_path / "missing.plan", _plan_meta(plan))


def test_io_from_onnx(model, tmp_path):
    ins, outs = io_from_onnx(model)
    assert ins == [{"name": "input", "dtype": "FP32", "shape": [1, 3, 16, 16]}]   # initialisers excluded
    assert outs == [{"name": "logits", "dtype": "FP32", "shape": [1, 10]}]
    dyn_in, dyn_out = io_from_onnx(_tiny_onnx(tmp_path / "dyn.onnx", dynamic_batch=True))
    assert dyn_in[0]["shape"] == [-1, 3, 16, 16] and dyn_out[0]["shape"] == [-1, 10]
    (tmp_path / "junk.onnx").write_bytes(b"\x08\x01garbage\xff\xff")
    with pytest.raises(UserError, match="junk.onnx"):
        io_from_onnx(tmp_path / "junk.onnx")
    with pytest.raises(UserError, match="not found"):
        io_from_onnx(tmp_path / "none.onnx")


def test_optimize_for_ort_is_portable_and_equivalent(model, tmp_path):
    out = optimize_for_ort(model, tmp_path / "s.ort.onnx", threads=1)
    m = onnx.load(str(out))
    domains = {n.domain for n in m.graph.node}
    # EXTENDED: fusions into com.microsoft ops, but none of ALL's CPU-specific NCHWc layout ops
    assert "com.microsoft.nchwc" not in domains
    assert ("com.microsoft", "FusedConv") in {(n.domain, n.op_type) for n in m.graph.node}   # Conv+Relu fused
    x = np.random.default_rng(0).standard_normal((1, 3, 16, 16)).astype(np.float32)
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    ref = ort.InferenceSession(str(model), so, providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    got = ort.InferenceSession(str(out), so, providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    np.testing.assert_allclose(got, ref, atol=1e-5, rtol=1e-5)
    assert not list(tmp_path.glob("*.tmp"))
    with pytest.raises(UserError, match="overwrite its input"):
        optimize_for_ort(out, out)
    (tmp_path / "bad.onnx").write_bytes(b"nope")
    with pytest.raises(UserError, match="ONNX Runtime cannot load bad.onnx"):
        optimize_for_ort(tmp_path / "bad.onnx", tmp_path / "bad.ort.onnx")
    assert not (tmp_path / "bad.ort.onnx").exists()
