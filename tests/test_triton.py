"""Triton repository export: config.pbtxt written by our writer, read back by our parser."""

import onnx
import pytest
import torch
from onnx import TensorProto, helper

from hant_trt.deploy.metadata import EngineMetadata, io_from_onnx, write_metadata
from hant_trt.deploy.triton import Enum, PbtxtError, as_list, export_triton, format_pbtxt, parse_pbtxt
from hant_trt.errors import UserError


def _tiny_onnx(path, dynamic_batch=False):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                              torch.nn.Flatten(), torch.nn.Linear(4, 10)).eval()
    axes = {"input": {0: "batch"}, "logits": {0: "batch"}} if dynamic_batch else None
    torch.onnx.export(net, (torch.randn(1, 3, 32, 32),), str(path), dynamo=False, opset_version=17,
                      input_names=["input"], output_names=["logits"], dynamic_axes=axes)
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("models")
    return _tiny_onnx(d / "static.onnx"), _tiny_onnx(d / "dynamic.onnx", dynamic_batch=True)


def _config(folder):
    return parse_pbtxt((folder / "config.pbtxt").read_text())


def test_static_batch_onnx_defaults_to_no_batching(models, tmp_path):
    static, _ = models
    folder = export_triton(static, tmp_path / "repo", "student")
    assert folder == tmp_path / "repo" / "student"
    cfg = _config(folder)
    assert cfg["name"] == "student" and cfg["platform"] == "onnxruntime_onnx" and cfg["max_batch_size"] == 0
    assert cfg["input"] == [{"name": "input", "data_type": "TYPE_FP32", "dims": [1, 3, 32, 32]}]
    assert cfg["output"] == [{"name": "logits", "data_type": "TYPE_FP32", "dims": [1, 10]}]
    assert "dynamic_batching" not in cfg   # Triton refuses a batcher on a non-batching model
    assert cfg["instance_group"] == [{"count": 1, "kind": "KIND_CPU"}]
    assert (folder / "1" / "model.onnx").read_bytes() == static.read_bytes()
    assert not list(folder.rglob("*.tmp"))


def test_static_batch_refuses_explicit_batching_before_writing(models, tmp_path):
    static, _ = models
    with pytest.raises(UserError, match=r"static batch dimension \(input is \[1, 3, 32, 32\]\).*--max-batch-size 0"):
        export_triton(static, tmp_path / "repo", "student", max_batch_size=8)
    assert not (tmp_path / "repo" / "student").exists()


def test_dynamic_batch_onnx_gets_batching(models, tmp_path):
    _, dynamic = models
    cfg = _config(export_triton(dynamic, tmp_path / "repo", "dyn", instance_kind="gpu", instance_count=2))
    assert cfg["max_batch_size"] == 8
    assert cfg["input"][0]["dims"] == [3, 32, 32] and cfg["output"][0]["dims"] == [10]   # batch dim excluded
    assert cfg["dynamic_batching"] == {}
    assert cfg["instance_group"] == [{"count": 2, "kind": "KIND_GPU"}]
    cfg = _config(export_triton(dynamic, tmp_path / "repo", "dyn", max_batch_size=4, dynamic_batching=False))
    assert cfg["max_batch_size"] == 4 and "dynamic_batching" not in cfg
    cfg = _config(export_triton(dynamic, tmp_path / "repo", "dyn", max_batch_size=0))
    assert cfg["input"][0]["dims"] == [-1, 3, 32, 32] and "dynamic_batching" not in cfg


def test_data_types_from_onnx(tmp_path):
    g = helper.make_graph([helper.make_node("ArgMax", ["x"], ["idx"], axis=1, keepdims=0)], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT16, [2, 5])],
                          [helper.make_tensor_value_info("idx", TensorProto.INT64, [2])])
    p = tmp_path / "h.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(p))
    cfg = _config(export_triton(p, tmp_path / "repo", "h"))
    assert cfg["input"][0]["data_type"] == "TYPE_FP16" and cfg["output"][0]["data_type"] == "TYPE_INT64"
    assert cfg["output"][0]["dims"] == [2]


def test_plan_uses_metadata_and_needs_gpu(models, tmp_path):
    static, _ = models
    plan = tmp_path / "m.plan"
    plan.write_bytes(b"not really a plan")
    with pytest.raises(UserError, match="no metadata m.plan.json"):
        export_triton(plan, tmp_path / "repo", "trt")
    ins, outs = io_from_onnx(static)
    write_metadata(plan, EngineMetadata(name="m", format="tensorrt_plan", file="m.plan", inputs=ins, outputs=outs,
                                        tensorrt_version="10.9.0", gpu_name="NVIDIA L4", compute_capability="8.9"))
    folder = export_triton(plan, tmp_path / "repo", "trt")
    cfg = _config(folder)
    assert cfg["platform"] == "tensorrt_plan" and cfg["instance_group"][0]["kind"] == "KIND_GPU"
    assert cfg["input"][0]["dims"] == [1, 3, 32, 32]
    assert (folder / "1" / "model.plan").read_bytes() == b"not really a plan"
    with pytest.raises(UserError, match="needs a GPU instance"):
        export_triton(plan, tmp_path / "repo", "trt", instance_kind="cpu")


@pytest.mark.parametrize("kwargs,match", [
    ({"name": "a/b"}, "folder name"), ({"name": ""}, "folder name"), ({"instance_count": 0}, "positive integer"),
    ({"instance_kind": "tpu"}, "gpu, cpu, auto"), ({"max_batch_size": -1}, ">= 0")])
def test_bad_arguments_are_user_errors(models, tmp_path, kwargs, match):
    _, dynamic = models
    args = {"name": "m", **kwargs}
    with pytest.raises(UserError, match=match):
        export_triton(dynamic, tmp_path / "repo", **args)


def test_unsupported_or_missing_model(tmp_path):
    (tmp_path / "m.pt").write_bytes(b"x")
    with pytest.raises(UserError, match=".plan or an .onnx"):
        export_triton(tmp_path / "m.pt", tmp_path / "repo", "m")
    with pytest.raises(UserError, match="not found"):
        export_triton(tmp_path / "nope.onnx", tmp_path / "repo", "m")


def test_parser_on_handwritten_triton_config():
    text = """
# a config as people write them
name: "resnet"   platform: 'tensorrt_plan'
max_batch_size: 0x10
input [
  { name: "in\\"put\\n" data_type: TYPE_FP16 format: FORMAT_NCHW dims: [ 3, -1, 224 ] },
  { name: "aux", data_type: TYPE_INT32, dims: [1], reshape: { shape: [ ] } }
]
output { name: "out" dims: 1000 }
output { name: "out2" dims: [ 5 ] }
dynamic_batching { preferred_batch_size: [ 4, 8 ] max_queue_delay_microseconds: 100 }
instance_group [ { count: 2 kind: KIND_GPU gpus: [ 0, 1 ] } ]
optimization < execution_accelerators { gpu_execution_accelerator: [ { name: "tensorrt" } ] } >
parameters { key: "x" value: { string_value: "a" "b" } }
version_policy: { latest { num_versions: 2 } }
model_warmup: []
threshold: -1.5e-3 ratio: .5f enabled: true
"""
    d = parse_pbtxt(text)
    assert d["name"] == "resnet" and d["platform"] == "tensorrt_plan" and d["max_batch_size"] == 16
    assert d["input"][0] == {"name": 'in"put\n', "data_type": "TYPE_FP16", "format": "FORMAT_NCHW", "dims": [3, -1, 224]}
    assert d["input"][1]["reshape"] == {"shape": []}
    assert d["output"] == [{"name": "out", "dims": 1000}, {"name": "out2", "dims": [5]}]   # repeated field
    assert as_list(d["output"][0]["dims"]) == [1000] and as_list(d["name"]) == ["resnet"] and as_list(None) == []
    assert d["dynamic_batching"] == {"preferred_batch_size": [4, 8], "max_queue_delay_microseconds": 100}
    assert d["instance_group"] == [{"count": 2, "kind": "KIND_GPU", "gpus": [0, 1]}]
    assert d["optimization"]["execution_accelerators"]["gpu_execution_accelerator"] == [{"name": "tensorrt"}]
    assert d["parameters"]["value"]["string_value"] == "ab"
    assert d["version_policy"] == {"latest": {"num_versions": 2}} and d["model_warmup"] == []
    assert d["threshold"] == -1.5e-3 and d["ratio"] == 0.5 and d["enabled"] is True


def test_writer_parser_round_trip():
    msg = {"name": 'we"ird\\name\n', "n": -3, "f": 0.25, "b": False, "e": Enum("KIND_CPU"), "empty": {},
           "xs": [1, 2, 3], "strs": ["a", "b c"], "sub": {"deep": {"v": 1}}, "items": [{"a": 1}, {"a": 2}],
           "skipped": None}
    text = format_pbtxt(msg)
    assert "kind" not in text and 'e: KIND_CPU' in text and "skipped" not in text
    back = parse_pbtxt(text)
    del msg["skipped"]
    assert back == msg


@pytest.mark.parametrize("text,match", [
    ("a { b: 1", "expected '}'|end of text"), ("a: 1 }", "line 1"), ("a: [1, 2", "end of text"),
    ('x: "unterminated', "unexpected"), ("a:\n  :", "line 2, column 3")])
def test_parser_errors_name_the_place(text, match):
    with pytest.raises(PbtxtError, match=match):
        parse_pbtxt(text)


# -- the CLI: hant-trt export-triton ----------------------------------------------------------------

def _cli(*args):
    from hant_trt.cli import main

    return main(["export-triton", *map(str, args)])


def test_cli_defaults_follow_the_model(models, tmp_path, capsys):
    static, dynamic = models
    assert _cli(static, tmp_path / "repo", "--name", "s") == 0
    assert str(tmp_path / "repo" / "s") in capsys.readouterr().out
    cfg = _config(tmp_path / "repo" / "s")
    assert cfg["max_batch_size"] == 0 and cfg["input"][0]["dims"] == [1, 3, 32, 32]   # static: batching off
    assert cfg["instance_group"] == [{"count": 1, "kind": "KIND_CPU"}] and "dynamic_batching" not in cfg
    assert _cli(dynamic, tmp_path / "repo", "--name", "d") == 0
    cfg = _config(tmp_path / "repo" / "d")
    assert cfg["max_batch_size"] == 8 and cfg["input"][0]["dims"] == [3, 32, 32] and cfg["dynamic_batching"] == {}
    assert _cli(static, tmp_path / "repo", "--name", "s0", "--max-batch-size", "0") == 0   # explicit 0 is fine
    assert _config(tmp_path / "repo" / "s0")["max_batch_size"] == 0


def test_cli_options_reach_the_config(models, tmp_path):
    static, dynamic = models
    assert _cli(dynamic, tmp_path / "repo", "--name", "m", "--max-batch-size", "4", "--instance-kind", "KIND_GPU",
                "--instance-count", "3") == 0
    cfg = _config(tmp_path / "repo" / "m")
    assert cfg["max_batch_size"] == 4 and cfg["output"][0]["dims"] == [10] and cfg["dynamic_batching"] == {}
    assert cfg["instance_group"] == [{"count": 3, "kind": "KIND_GPU"}]
    # rewriting the same model folder replaces its config
    assert _cli(dynamic, tmp_path / "repo", "--name", "m", "--max-batch-size", "0", "--instance-kind", "KIND_AUTO") == 0
    cfg = _config(tmp_path / "repo" / "m")
    assert cfg["max_batch_size"] == 0 and cfg["input"][0]["dims"] == [-1, 3, 32, 32] and "dynamic_batching" not in cfg
    assert cfg["instance_group"] == [{"count": 1, "kind": "KIND_AUTO"}]
    assert _cli(static, tmp_path / "repo", "--name", "c", "--instance-kind", "cpu", "--instance-count", "2") == 0
    assert _config(tmp_path / "repo" / "c")["instance_group"] == [{"count": 2, "kind": "KIND_CPU"}]


@pytest.mark.parametrize("model,extra,match", [
    ("dynamic", ["--instance-count", "0"], "--instance-count must be an integer >= 1, got '0'"),
    ("dynamic", ["--instance-count", "-2"], "--instance-count must be an integer >= 1"),
    ("dynamic", ["--instance-count", "two"], "--instance-count must be an integer >= 1, got 'two'"),
    ("dynamic", ["--max-batch-size", "-1"], "--max-batch-size must be an integer >= 0, got '-1'"),
    ("dynamic", ["--max-batch-size", "8.5"], "--max-batch-size must be an integer >= 0"),
    ("dynamic", ["--instance-kind", "KIND_TPU"], "instance kind 'KIND_TPU' is not one of KIND_GPU, KIND_CPU, KIND_AUTO"),
    ("dynamic", ["--instance-kind", ""], "instance kind '' is not one of"),
    ("static", ["--max-batch-size", "8"], r"static batch dimension .*--max-batch-size 0"),
])
def test_cli_bad_values_are_one_line_and_exit_2(models, tmp_path, capsys, model, extra, match):
    import re

    path = dict(zip(("static", "dynamic"), models))[model]
    assert _cli(path, tmp_path / "repo", "--name", "m", *extra) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("hant-trt export-triton: error: "), err
    assert re.search(match, err), err
    assert not (tmp_path / "repo" / "m").exists()   # refused before anything is written


def test_cli_plan_refuses_a_cpu_instance(models, tmp_path, capsys):
    static, _ = models
    plan = tmp_path / "m.plan"
    plan.write_bytes(b"engine")
    ins, outs = io_from_onnx(static)
    write_metadata(plan, EngineMetadata(name="m", format="tensorrt_plan", file="m.plan", inputs=ins, outputs=outs,
                                        tensorrt_version="10.9.0", gpu_name="NVIDIA L4", compute_capability="8.9"))
    assert _cli(plan, tmp_path / "repo", "--instance-kind", "KIND_CPU") == 2
    assert "needs a GPU instance" in capsys.readouterr().err
    assert _cli(plan, tmp_path / "repo", "--instance-count", "2") == 0
    assert _config(tmp_path / "repo" / "hant_student")["instance_group"] == [{"count": 2, "kind": "KIND_GPU"}]
