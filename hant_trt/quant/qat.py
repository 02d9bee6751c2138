"""Int8-aware fine-tune (`build.qat`): the student trains through the roundings its int8 parts
will run, with straight-through gradients (the rounding's value forward, the identity backward),
so the fine-tune also absorbs the error plain post-training int8 leaves.

The roundings are the layout's own, put on the *unfolded* student (BatchNorm frozen, so it trains
as it exports):
- weights: per output channel, symmetric int8 (`fakequant.quantize_weight`). Folding a BatchNorm
  scales each output channel by one factor, and a per-channel scale follows it, so rounding the
  unfolded weight rounds the folded one to the same steps;
- "trt": every calibrated layer's input, symmetric int8;
- "ort" / "ort-qadd": a site's input (unless it reads another site's quantized output), its
  output after the BatchNorm (before a fused ReLU/Clip, which the range [0, h] already applies)
  with the int32 bias step added (recomputed as the weights train), and, with integer Adds, a
  residual block's input — the sites planned on the student's own export
  (`qdq_ort.plan_of_module`), as `fake_quantize_ort` simulates them; all but the logits' output
  rounding (see `attach`).

`attach` returns a handle whose `remove()` leaves the plain float student: hooks gone, weights the
trained float values (the deploy then calibrates and quantizes them as always).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn.utils import parametrize

from .calibrate import QUANT_LAYERS, CalibResult, int8_scale
from .fakequant import quantize_dequantize, quantize_weight, weight_scale


def straight_through(x: torch.Tensor, q: torch.Tensor, lo: float | None = None, hi: float | None = None) -> torch.Tensor:
    """q forward; backward x's gradient, where x lies inside [lo, hi] when given (the values the
    rounding clamps get none: a conv's output rounded with a fused ReLU6's range [0, 6] is that
    ReLU6, and its gradient must stop where the activation's does)."""
    if lo is None:
        return x + (q - x).detach()
    inside = ((x >= lo) & (x <= hi)).to(x.dtype)
    return q.detach() + (x - x.detach()) * inside


class RoundedWeight(nn.Module):
    """Parametrization: the weight as int8 per output channel rounds it, straight through."""

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return straight_through(w, quantize_weight(w, per_channel=True))


class _Rounding:
    """An activation rounding and the real range [lo, hi] it represents (clamped outside)."""

    def __init__(self, fn, lo: float, hi: float):
        self.fn, self.lo, self.hi = fn, float(lo), float(hi)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return straight_through(x, self.fn(x), self.lo, self.hi)


class _STE:
    """A forward pre-hook applying a `_Rounding` to a layer's input."""

    def __init__(self, rounding: _Rounding):
        self.rounding = rounding

    def __call__(self, _layer, inputs):
        return (self.rounding(inputs[0]), *inputs[1:])


class _BiasStep:
    """q(b) − b for the bias of a conv folded with its BatchNorm, rounded to int32 as
    `fake_quantize_ort` rounds it: what the int8 engine adds that the float layers do not."""

    def __init__(self, conv: nn.Module, bn: nn.Module | None, in_range: tuple[float, float]):
        self.conv, self.bn, self.in_range = conv, bn, in_range

    @torch.no_grad()
    def __call__(self, like: torch.Tensor) -> torch.Tensor:
        from ..latency.export import folded_weight_bias
        from .qdq_ort import rounded_bias

        w, b = self.conv.weight, self.conv.bias
        if self.bn is not None:
            w, b = folded_weight_bias(w, b, self.bn)
        elif b is None:
            b = torch.zeros(w.shape[0], device=w.device)
        w, b = w.float(), b.float()
        shape = (1, -1) + (1,) * (like.dim() - 2)
        return (rounded_bias(b, weight_scale(w), self.in_range) - b).to(like.dtype).reshape(shape)


class _OutputSTE:
    """A conv's exported output point: its bias step added, then the uint8 rounding, straight
    through; as a pre-hook (on a fused activation's input) or a forward hook."""

    def __init__(self, rounding: _Rounding, bias_step: _BiasStep, pre: bool):
        self.rounding, self.bias_step, self.pre = rounding, bias_step, pre

    def _apply(self, y: torch.Tensor) -> torch.Tensor:
        return self.rounding(y + self.bias_step(y))

    def __call__(self, _layer, inputs, out=None):
        if self.pre:
            return (self._apply(inputs[0]), *inputs[1:])
        return self._apply(out)


def _symmetric(amax: float) -> _Rounding:
    step = int8_scale(amax)
    scale = torch.tensor(step, dtype=torch.float32)
    return _Rounding(lambda x: quantize_dequantize(x, scale), -128 * step, 127 * step)


def _affine(lo: float, hi: float) -> _Rounding:
    from .qdq_ort import AffineQuantizer, U8_MAX

    q = AffineQuantizer(lo, hi, output=False)
    step = float(q.scale)
    return _Rounding(q.apply, -q.zp * step, (U8_MAX - q.zp) * step)


@dataclass
class Attached:
    """What `attach` put on a student; `remove()` takes it off."""

    hooks: list = field(default_factory=list)
    weights: list[nn.Module] = field(default_factory=list)
    sites: int = 0

    def remove(self) -> None:
        for h in self.hooks:
            h.remove()
        for layer in self.weights:
            if parametrize.is_parametrized(layer, "weight"):
                parametrize.remove_parametrizations(layer, "weight", leave_parametrized=False)
        self.hooks, self.weights = [], []


def _output_point(student: nn.Module, path: str, bn_of: dict[str, str]):
    """(module, is_pre_hook) where a conv's output is as exported: after its BatchNorm, before
    the activation timm's BatchNormAct2d runs inside it."""
    if path not in bn_of:
        return student.get_submodule(path), False
    bn = student.get_submodule(bn_of[path])
    act = getattr(bn, "act", None)
    if isinstance(act, nn.Module):
        return act, True
    return bn, False


def attach(student: nn.Module, calib: CalibResult) -> Attached:
    """Straight-through int8 roundings on the layers `calib` has ranges for (paths in `student`),
    in the layout the ranges were calibrated for (`calib.extra["layout"]`)."""
    from ..latency.export import batchnorm_pairs
    from .layouts import layout_of_calib

    layout = layout_of_calib(calib)
    done = Attached()
    if not calib.amax:
        return done
    layers = {p: student.get_submodule(p) for p in calib.amax}
    for p, layer in layers.items():
        if not isinstance(layer, QUANT_LAYERS):
            raise ValueError(f"{p} is a {type(layer).__name__}, not a Conv2d/Linear")
    if layout.name == "trt":
        for p, layer in layers.items():
            done.hooks.append(layer.register_forward_pre_hook(_STE(_symmetric(calib.amax[p]))))
        done.sites = len(layers)
    else:
        from .qdq_ort import plan_of_module

        # planned on the float student's export, before anything is attached: the plan fake_quantize_ort follows
        sites, adds = plan_of_module(student, tuple(calib.extra["input_shape"]), calib, only_calibrated=True,
                                     integer_adds=layout.name == "ort-qadd")
        bn_of = dict(batchnorm_pairs(student))
        logits = [p for p, m in student.named_modules() if isinstance(m, QUANT_LAYERS)][-1]
        for add in adds:
            done.hooks.append(student.get_submodule(add.scope).register_forward_pre_hook(
                _STE(_affine(*add.range))))
        for site in sites:
            layer = student.get_submodule(site.path)
            if site.input_site is None:
                done.hooks.append(layer.register_forward_pre_hook(_STE(_affine(*site.in_range))))
            if site.path == logits:
                # the logits' own rounding is left to the deploy: clamped to the calibrated range, the
                # confident class's logit would get no gradient, and a per-tensor rounding of the
                # logits changes the argmax only on ties
                continue
            where, pre = _output_point(student, site.path, bn_of)
            bn = student.get_submodule(bn_of[site.path]) if site.path in bn_of else None
            hook = _OutputSTE(_affine(*site.out_range), _BiasStep(layer, bn, site.in_range), pre)
            done.hooks.append(where.register_forward_pre_hook(hook) if pre else where.register_forward_hook(hook))
        done.sites = len(sites)
    for layer in layers.values():
        parametrize.register_parametrization(layer, "weight", RoundedWeight())
        done.weights.append(layer)
    return done


@contextmanager
def rounded(student: nn.Module, calib: CalibResult | None):
    """`attach(student, calib)` for the duration of a `with` block (nothing when calib is None),
    taken off however the block ends: a failed fine-tune leaves the plain float student."""
    attached = attach(student, calib) if calib is not None else None
    try:
        yield attached
    finally:
        if attached is not None:
            attached.remove()
