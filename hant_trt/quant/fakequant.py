"""Simulated int8 in PyTorch with exactly the arithmetic of the Q/DQ ONNX that
`qdq_trt.quantize_qdq` writes, so a candidate's int8 score in PyTorch is what the engine computes
(up to float summation order):

- BatchNorm folded first (`export.fold_batchnorm`, the same fold the export uses: same weights);
- the input of every Conv2d/Linear: per-tensor, symmetric, scale = amax / 127 from the same
  `CalibResult`, round half to even, clamp to [-128, 127] (ONNX QuantizeLinear);
- weights: per output channel, scale = max|w| / 127, clamp to [-127, 127].

The "ort" layout's simulation (`qdq_ort.fake_quantize_ort`) reuses the weight rounding here.

For scoring (inference) only: rounding has no gradient here.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..errors import UserError
from ..latency.export import fold_batchnorm
from .calibrate import AMAX_FLOOR, QUANT_LAYERS, CalibResult, int8_scale


def quantize_dequantize(x: torch.Tensor, scale: torch.Tensor, qmin: int = -128, qmax: int = 127) -> torch.Tensor:
    """round(x / scale) clamped to [qmin, qmax], times scale — ONNX Q then DQ with zero point 0.

    scale: a float32 tensor broadcastable to x (a scalar for per-tensor). Division (not a
    multiplication by 1/scale) and torch.round (half to even) match ONNX Runtime's QuantizeLinear.
    """
    s = scale.to(x.dtype)
    return torch.clamp(torch.round(x / s), qmin, qmax) * s


def weight_scale(w: torch.Tensor, per_channel: bool = True) -> torch.Tensor:
    """float32 symmetric int8 scale(s) of a weight: max|w| / 127 per output channel (dim 0), or one."""
    w32 = w.detach().float()
    amax = w32.abs().flatten(1).max(1).values if per_channel else w32.abs().max()
    return (amax.clamp_min(AMAX_FLOOR) / 127.0).float()


def quantize_weight(w: torch.Tensor, per_channel: bool = True) -> torch.Tensor:
    """Symmetric int8 fake-quantized weight; per output channel (dim 0) unless per_channel=False.
    Computed in float32 like `qdq_trt.quant_weight`, so the values equal the ONNX's DQ output."""
    w32 = w.detach().float()
    scale = weight_scale(w32, per_channel)
    if per_channel:
        scale = scale.reshape(-1, *([1] * (w32.dim() - 1)))
    return quantize_dequantize(w32, scale, -127, 127).to(w.dtype)


class InputQuantizer:
    """Forward pre-hook fake-quantizing a layer's input per tensor with a fixed scale (picklable,
    readable in `module._forward_pre_hooks`)."""

    def __init__(self, amax: float):
        self.amax = float(amax)
        self.scale = torch.tensor(int8_scale(amax), dtype=torch.float32)

    def __call__(self, _layer: nn.Module, inputs: tuple) -> tuple:
        return (quantize_dequantize(inputs[0], self.scale), *inputs[1:])

    def __repr__(self) -> str:
        return f"InputQuantizer(amax={self.amax:.6g})"


@torch.no_grad()
def fake_quantize(module: nn.Module, calib: CalibResult, per_channel: bool = True) -> nn.Module:
    """A BN-folded eval copy of `module` whose Conv2d/Linear layers run simulated int8 in the "trt"
    layout (`qdq_trt.quantize_qdq`).

    module: the fp32 module (untouched).
    calib: ranges from `calibrate(module, ...)` (same module paths); every Conv2d/Linear needs one.
    per_channel: per-output-channel weight scales (default True, as `quantize_qdq`).
    """
    if not isinstance(calib, CalibResult):
        raise TypeError("fake_quantize needs a CalibResult (see hant_trt.quant.calibrate.calibrate)")
    m = fold_batchnorm(module)
    layers = {p: l for p, l in m.named_modules() if isinstance(l, QUANT_LAYERS)}
    missing = [p for p in layers if p not in calib.amax]
    if missing:
        raise UserError(f"no calibrated range for {len(missing)} layer(s) (first: '{missing[0]}'): "
                        "calibrate the module you quantize")
    for p, layer in layers.items():
        if not np.isfinite(calib.amax[p]):
            raise UserError(f"calibrated range of '{p}' is not finite")
        layer.weight.data = quantize_weight(layer.weight.data, per_channel)
        layer.register_forward_pre_hook(InputQuantizer(calib.amax[p]))
    return m
