"""BatchNorm folding and ONNX export (hant_trt.latency.export)."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from timm.models._efficientnet_blocks import InvertedResidual
from torch import nn

from hant_trt.errors import UserError
from hant_trt.latency.export import export_onnx, fold_batchnorm, node_scope, onnx_scope_of


def randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BN statistics and affine parameters, so a wrong fold cannot pass."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.rand(n, generator=g) * 0.4 - 0.2)
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.rand(n, generator=g) * 0.4 - 0.2)
    return model.eval()


def mbconv(act=nn.SiLU) -> nn.Module:
    torch.manual_seed(0)
    return randomize_bn(InvertedResidual(16, 16, dw_kernel_size=3, exp_ratio=4.0, act_layer=act))


def tiny_net() -> nn.Module:
    torch.manual_seed(0)
    return randomize_bn(nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                                      nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=8), nn.BatchNorm2d(8), nn.ReLU6()))


def run_ort(path, x: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]


def n_bn(model: nn.Module) -> int:
    return sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())


@pytest.mark.parametrize("make", [mbconv, tiny_net, lambda: mbconv(nn.Hardswish)])
def test_fold_batchnorm_matches_within_1e5(make):
    model = make()
    folded = fold_batchnorm(model)
    assert n_bn(folded) == 0 and n_bn(model) > 0          # a copy: the original keeps its BNs
    in_chs = next(m for m in model.modules() if isinstance(m, nn.Conv2d)).in_channels
    x = torch.randn(2, in_chs, 12, 12)
    with torch.no_grad():
        assert torch.allclose(folded(x), model(x), atol=1e-5, rtol=0)


def test_fold_keeps_batchnormact_activation_and_module_paths():
    folded = fold_batchnorm(mbconv(nn.SiLU))
    assert isinstance(folded.bn1, nn.SiLU) and isinstance(folded.bn3, nn.Identity)
    assert folded.conv_pw.bias is not None                  # bias created for the BN shift


class Untraceable(nn.Module):
    """Data-dependent control flow: torch.fx cannot trace it; folding falls back to module order."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x):
        y = self.bn(self.conv(x))
        return y if float(y.sum()) > -1e9 else -y


class SharedConvOutput(nn.Module):
    """The conv output is read by the BN and by an Add: folding it would change the Add's input."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 1)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x):
        y = self.conv(x)
        return self.bn(y) + y


def test_fold_fallback_and_refusal():
    x = torch.randn(1, 3, 8, 8)
    m = randomize_bn(Untraceable())
    f = fold_batchnorm(m)
    assert n_bn(f) == 0
    with torch.no_grad():
        assert torch.allclose(f(x), m(x), atol=1e-5)
    s = randomize_bn(SharedConvOutput())
    fs = fold_batchnorm(s)
    assert n_bn(fs) == 1                                     # traced: the pair is not foldable
    x4 = torch.randn(1, 4, 8, 8)
    with torch.no_grad():
        assert torch.allclose(fs(x4), s(x4), atol=1e-5)


def test_export_static_folded_checked_and_named(tmp_path):
    model = mbconv()
    model.train()                                            # export must not care, nor change it
    p = export_onnx(model, (2, 16, 12, 12), tmp_path / "b.onnx")
    assert model.training and n_bn(model) == 3
    m = onnx.load(str(p))
    onnx.checker.check_model(m, full_check=True)
    assert m.opset_import[0].version >= 17
    ops = [n.op_type for n in m.graph.node]
    assert "BatchNormalization" not in ops and ops.count("Conv") == 3 and "Identity" not in ops
    for vi in list(m.graph.input) + list(m.graph.output):
        dims = [d.dim_value for d in vi.type.tensor_type.shape.dim]
        assert dims == [2, 16, 12, 12] and all(d.dim_param == "" for d in vi.type.tensor_type.shape.dim)
    names = {n.name for n in m.graph.node}
    assert {"/conv_pw/Conv", "/conv_dw/Conv", "/conv_pwl/Conv"} <= names
    x = np.random.default_rng(0).standard_normal((2, 16, 12, 12)).astype(np.float32)
    with torch.no_grad():
        ref = model.eval()(torch.from_numpy(x)).numpy()
    assert np.abs(run_ort(p, x) - ref).max() < 1e-5


def test_misleading_module_order_falls_back_to_graph_fold(tmp_path):
    class BnFirst(Untraceable):              # registers conv then bn, but runs bn → conv: no pair
        def __init__(self):
            super().__init__()
            self.bn = nn.BatchNorm2d(3)
            self.conv = nn.Conv2d(3, 3, 3, padding=1)

        def forward(self, x):
            y = self.conv(self.bn(x))
            return y if float(y.sum()) > -1e9 else -y

    m = randomize_bn(BnFirst())
    p = export_onnx(m, (1, 3, 8, 8), tmp_path / "o.onnx")
    x = np.random.default_rng(1).standard_normal((1, 3, 8, 8)).astype(np.float32)
    with torch.no_grad():
        assert np.abs(run_ort(p, x) - m(torch.from_numpy(x)).numpy()).max() < 1e-5


def test_onnx_scope_names_match_the_exporter(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Sequential(tiny_net(), nn.Conv2d(8, 8, 1)), nn.Conv2d(8, 4, 1))
    p = export_onnx(model, (1, 3, 8, 8), tmp_path / "n.onnx")
    convs = {path for path, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    scopes = {node_scope(n.name) for n in onnx.load(str(p)).graph.node if n.op_type == "Conv"}
    assert scopes == {onnx_scope_of(c) for c in convs} and len(scopes) == 4
    assert onnx_scope_of("blocks.0.0.conv_pw") == "/blocks/blocks.0/blocks.0.0/conv_pw"


def test_export_rejects_bad_arguments(tmp_path):
    with pytest.raises(UserError, match="opset"):
        export_onnx(tiny_net(), (1, 3, 8, 8), tmp_path / "a.onnx", opset=13)
    with pytest.raises(UserError, match="shape"):
        export_onnx(tiny_net(), (3, 8, 8), tmp_path / "a.onnx")
    assert not list(tmp_path.iterdir())                      # nothing half-written
