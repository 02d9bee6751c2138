"""Simulated int8 in PyTorch with exactly the arithmetic of the Q/DQ ONNX that
`precision.quantize_qdq` writes, so a candidate's int8 score in PyTorch is what the engine computes
(up to float summation order):

- BatchNorm folded first (`export.fold_batchnorm`, the same fold the export uses: same weights);
- the input of every Conv2d/Linear: per-tensor, symmetric, scale = amax / 127 from the same
  `CalibResult`, round half to even, clamp to [-128, 127] (ONNX QuantizeLinear);
- weights: per output channel, scale = max|w| / 127, clamp to [-127, 127].

With layout "ort" (`int8_ort`: ONNX Runtime CPU's integer kernels) activations are asymmetric
uint8, every quantized layer's output is quantized too and biases are int32 at s_x · s_w — the
sites come from the module's own export, so simulation and ONNX follow one plan.

For scoring (inference) only: rounding has no gradient here.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..errors import UserError
from .calibrate import AMAX_FLOOR, QUANT_LAYERS, CalibResult, int8_scale
from .export import fold_batchnorm

INT8_LAYOUTS = ("trt", "ort")


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
    Computed in float32 like `precision._quant_weight`, so the values equal the ONNX's DQ output."""
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


class AffineQuantizer:
    """Asymmetric uint8 fake quantization (ONNX Q then DQ with a zero point), as a forward pre-hook
    on a layer's input (`output=False`) or a forward hook on its output (picklable)."""

    def __init__(self, lo: float, hi: float, output: bool):
        from .int8_ort import u8_params

        self.range = (float(lo), float(hi))
        s, z = u8_params(lo, hi)
        self.scale, self.zp, self.output = torch.tensor(s, dtype=torch.float32), float(z), output

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        s = self.scale.to(x.dtype)
        return (torch.clamp(torch.round(x / s) + self.zp, 0, 255) - self.zp) * s

    def __call__(self, _layer: nn.Module, inputs: tuple, out=None):
        if self.output:
            return self.apply(out)
        return (self.apply(inputs[0]), *inputs[1:])

    def __repr__(self) -> str:
        return f"AffineQuantizer({'output' if self.output else 'input'}, range={self.range})"


@torch.no_grad()
def fake_quantize(module: nn.Module, calib: CalibResult, per_channel: bool = True, layout: str = "trt",
                  input_shape: tuple[int, ...] | None = None, only_calibrated: bool = False) -> nn.Module:
    """A BN-folded eval copy of `module` whose Conv2d/Linear layers run simulated int8.

    module: the fp32 module (untouched).
    calib: ranges from `calibrate(module, ...)` (same module paths); every Conv2d/Linear needs one.
    per_channel: per-output-channel weight scales (default True, as `quantize_qdq`).
    layout: "trt" (default; `precision.quantize_qdq`) or "ort" (`int8_ort.write_ort_qdq`), which
        needs `input_shape` (N, C, H, W): its plan is read off the module's export.
    only_calibrated ("ort"): quantize only the layers `calib` has ranges for (a per-layer plan).
    """
    if not isinstance(calib, CalibResult):
        raise TypeError("fake_quantize needs a CalibResult (see hant_trt.latency.calibrate.calibrate)")
    if layout not in INT8_LAYOUTS:
        raise UserError(f"unknown int8 layout '{layout}' (known: {', '.join(INT8_LAYOUTS)})")
    if layout == "ort":
        return _fake_quantize_ort(module, calib, per_channel, input_shape, only_calibrated)
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


def _fake_quantize_ort(module: nn.Module, calib: CalibResult, per_channel: bool, input_shape,
                       only_calibrated: bool = False) -> nn.Module:
    from .int8_ort import sites_of_module, u8_params

    if input_shape is None:
        raise ValueError("the ort int8 layout needs the module's input shape")
    sites = sites_of_module(module, input_shape, calib, only_calibrated)
    m = fold_batchnorm(module)
    for site in sites:
        layer = m.get_submodule(site.path)
        w_scale = weight_scale(layer.weight.data, per_channel).double()
        layer.weight.data = quantize_weight(layer.weight.data, per_channel)
        if layer.bias is not None:
            # int32 bias at s_x · s_w, the scale rounded to float32 as in the ONNX
            s_x, _ = u8_params(*site.in_range)
            b_scale = (np.float64(s_x) * w_scale).float().double().reshape(-1)
            bq = torch.clamp(torch.round(layer.bias.data.double() / b_scale), -2**31, 2**31 - 1)
            layer.bias.data = (bq * b_scale).to(layer.bias.dtype)
        if site.input_site is None:
            layer.register_forward_pre_hook(AffineQuantizer(*site.in_range, output=False))
        layer.register_forward_hook(AffineQuantizer(*site.out_range, output=True))
    return m
