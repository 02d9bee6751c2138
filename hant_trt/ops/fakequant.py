"""Simulated int8 in PyTorch, matching the Q/DQ layout the export uses: symmetric int8, per-tensor
activation scales (amax / 127 from calibration on real inputs, "max" method) on the input of every
Conv2d/Linear, per-output-channel weight scales, BatchNorm folded into the preceding conv first
(the ONNX export folds it too, so the quantized weights are the same)."""

from __future__ import annotations

import copy

import torch
from torch import nn


def _fold(module: nn.Module) -> nn.Module:
    """Conv+BN folded with torch.fx when the module traces and holds plain BatchNorm2d only
    (timm's BatchNormAct2d carries its activation inside the BN module: left unfolded)."""
    if any(type(m).__name__ == "BatchNormAct2d" for m in module.modules()):
        return module
    try:
        from torch.fx.experimental.optimization import fuse

        return fuse(module)
    except Exception:  # not traceable: simulate on unfolded weights
        return module


@torch.no_grad()
def fake_quantize(module: nn.Module, calib_inputs: list[torch.Tensor]) -> nn.Module:
    """A copy of `module` whose Conv2d/Linear inputs and weights are fake-quantized to int8."""
    m = _fold(copy.deepcopy(module).eval())
    layers = [l for l in m.modules() if isinstance(l, (nn.Conv2d, nn.Linear))]
    amax = {id(l): torch.zeros(()) for l in layers}

    def record(layer, inp):
        amax[id(layer)] = torch.maximum(amax[id(layer)], inp[0].detach().abs().max().float().cpu())

    hs = [l.register_forward_pre_hook(record) for l in layers]
    for x in calib_inputs:
        m(x)
    for h in hs:
        h.remove()
    for l in layers:
        w = l.weight.data
        wmax = w.abs().flatten(1).max(1).values.clamp_min(1e-8)
        scale = (wmax / 127.0).float()
        l.weight.data = torch.fake_quantize_per_channel_affine(
            w.float(), scale, torch.zeros_like(scale, dtype=torch.int32), 0, -128, 127).to(w.dtype)
        s = float(amax[id(l)].clamp_min(1e-8)) / 127.0
        l.register_forward_pre_hook(
            lambda layer, inp, s=s: (torch.fake_quantize_per_tensor_affine(inp[0], s, 0, -128, 127),))
    return m
