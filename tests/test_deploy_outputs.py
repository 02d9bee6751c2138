import json

import pytest
import torch

from hant_trt.deploy.metadata import EngineMetadata, check_compatible, io_from_onnx, read_metadata, write_metadata
from hant_trt.deploy.report import ReportData, write_report
from hant_trt.deploy.triton import export_triton, parse_pbtxt
from hant_trt.errors import UserError
from hant_trt.latency.export import export_onnx


@pytest.fixture
def onnx_file(tmp_path):
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                              torch.nn.Linear(4, 10)).eval()
    return export_onnx(net, (1, 3, 32, 32), tmp_path / "student.onnx")


def test_triton_config_parses(onnx_file, tmp_path):
    folder = export_triton(onnx_file, tmp_path / "repo", "hant_student")
    cfg = parse_pbtxt((folder / "config.pbtxt").read_text())
    assert cfg["platform"] == "onnxruntime_onnx" and cfg["max_batch_size"] == 0
    assert cfg["input"][0]["name"] == "input" and cfg["input"][0]["data_type"] == "TYPE_FP32"
    assert cfg["input"][0]["dims"] == [1, 3, 32, 32] and cfg["output"][0]["dims"] == [1, 10]
    assert cfg["instance_group"][0]["kind"] == "KIND_CPU" and cfg["instance_group"][0]["count"] == 1
    assert (folder / "1" / "model.onnx").read_bytes() == onnx_file.read_bytes()
    # a static-batch model cannot claim a batch dimension for Triton
    with pytest.raises(UserError, match="static batch"):
        export_triton(onnx_file, tmp_path / "repo", "x", max_batch_size=8)


def test_pbtxt_parser_handles_nesting_and_repeats():
    text = 'name: "m"\nplatform: "tensorrt_plan"\nmax_batch_size: 8\ninput [ { name: "a" dims: [ 3, 4 ] } ]\n' \
           'dynamic_batching { }\ninstance_group [ { count: 2 kind: KIND_GPU } ]\n# comment\n'
    d = parse_pbtxt(text)
    assert d["max_batch_size"] == 8 and d["input"][0]["dims"] == [3, 4] and d["dynamic_batching"] == {}
    assert d["instance_group"][0] == {"count": 2, "kind": "KIND_GPU"}


def test_plan_metadata_and_compatibility(onnx_file, tmp_path):
    plan = tmp_path / "m.plan"
    plan.write_bytes(b"PLAN")
    ins, outs = io_from_onnx(onnx_file)
    write_metadata(plan, EngineMetadata(name="m", format="tensorrt_plan", file=str(plan), tensorrt_version="10.9.0",
                                        gpu_name="NVIDIA A10", compute_capability="8.6", inputs=ins, outputs=outs))
    meta = read_metadata(plan)
    assert meta.sha256 and meta.inputs[0]["shape"] == [1, 3, 32, 32]
    check_compatible(meta, {"gpu_name": "NVIDIA A10", "compute_capability": "8.6", "tensorrt_version": "10.9.0"})
    with pytest.raises(UserError, match="built for GPU compute capability 8.6"):
        check_compatible(meta, {"gpu_name": "NVIDIA A10", "compute_capability": "9.0", "tensorrt_version": "10.9.0"})
    folder = export_triton(plan, tmp_path / "repo", "trt")
    cfg = parse_pbtxt((folder / "config.pbtxt").read_text())
    assert cfg["platform"] == "tensorrt_plan" and cfg["instance_group"][0]["kind"] == "KIND_GPU"


def test_report_writes_html_and_pngs(tmp_path):
    sol = {"predicted_s": 0.004, "score": -3.0, "budget": "0.5x", "metric": "agreement", "device": "cpu",
           "choices": [{"first": 0, "last": 0, "op": "keep", "precision": "fp32", "predicted_s": 0.001, "score": 0},
                       {"first": 1, "last": 2, "op": "er_k3_e2", "precision": "int8", "predicted_s": 0.002,
                        "score": -3.0}]}
    pareto = [{"predicted_s": 0.003, "score": -9}, {"predicted_s": 0.004, "score": -3}, {"predicted_s": 0.008, "score": 0}]
    p = write_report(tmp_path, ReportData("lite0", 0.008, 0.0042, {"agreement": 97.0}, sol, pareto, {0: 0.001}))
    html = p.read_text()
    assert "<table>" in html and "er_k3_e2" in html and html.count("<img") == 3
    for name in ("report_pareto.png", "report_choices.png", "report_latency.png"):
        assert (tmp_path / name).stat().st_size > 1000


def test_engine_metadata_machine_fields():
    from hant_trt.deploy.deploy import target_fields
    from hant_trt.latency.backends import get_backend
    from hant_trt.latency.device import DeviceInfo

    ort_fields = target_fields(get_backend("ort", threads=1))
    import onnxruntime

    assert ort_fields["ort_version"] == onnxruntime.__version__ and ort_fields["cpu"]

    class FakeTensorRTBackend:     # test double: TensorRT is not installable here
        name = "tensorrt"

        class cuda:
            @staticmethod
            def device_properties():
                return {"name": "NVIDIA A10", "cc": "8.6", "driver": 12040, "runtime": 12060}

        def version(self):
            return "10.9.0"

        def device(self):
            return DeviceInfo("cuda", "NVIDIA A10", {"cc": "8.6", "driver": 12040})

    assert target_fields(FakeTensorRTBackend()) == {"gpu_name": "NVIDIA A10", "compute_capability": "8.6",
                                                    "tensorrt_version": "10.9.0", "cuda_version": "12060",
                                                        "driver_version": "12040"}


def test_plain_int8_speedup_is_read_from_the_profile_and_shown(tmp_path):
    from hant_trt.commands import summary_lines as build_summary
    from hant_trt.deploy.deploy import plain_int8_speedup

    (tmp_path / "latency_fixed.json").write_text(json.dumps(
        {"device": {"cpu:x": {"teacher_s": 0.004, "teacher_int8_s": 0.002}, "cpu:y": {"teacher_s": 0.004}}}))
    assert plain_int8_speedup(tmp_path, "cpu:x") == 2.0
    assert plain_int8_speedup(tmp_path, "cpu:y") is None and plain_int8_speedup(tmp_path / "no", "cpu:x") is None
    text = build_summary({"teacher_latency_ms": 3.0, "student_latency_ms": 1.0, "plain_int8_speedup": 2.0})
    assert "plain int8 of the whole teacher on this machine (profile): 2.00x" in text and "1.50x that" in text
