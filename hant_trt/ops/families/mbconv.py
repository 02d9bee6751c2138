"""MBConv-style families: inverted residual (`ir`), fused MBConv / EdgeResidual (`er`) and
depthwise-separable (`ds`). Layer names follow timm's blocks so weights map one to one.

Teacher inheritance (with only hundreds of training images, a candidate should start as close to
the teacher's function as its shape allows):
- ir ← ir: hidden channels kept by importance |γ1/σ1|·|γ2/σ2|·‖W_pwl[:,c]‖₂ (how strongly a hidden
  channel reaches the output); pw rows, both BNs, depthwise kernels (centre-cropped or zero-padded),
  SE and pwl columns copied. A wider candidate copies all teacher channels and zero-initialises the
  extra pwl columns, so it starts exactly at the teacher's function.
- er ← ir: the expand conv is the linearisation of pw → BN1 → dw (exact where the activation between
  them is in its linear range), with the dw's BN and the teacher's projection.
- er ← er, ds ← ds: direct copies with kernel fitting and channel selection.
Anything else (ds ← ir, a span of several blocks, …) starts from PyTorch's default init.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..grammar import register_family
from ..layers import (SqueezeExcite, act_layer, bn_scale, check_stride, conv, copy_bn, fit_kernel,
                      has_skip, select_channels)


def make_divisible(v: float, divisor: int = 8) -> int:
    """timm's rounding of channel counts (never more than 10 % below v)."""
    new = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new + divisor if new < 0.9 * v else new


def se_channels(in_chs: int, pct: int) -> int:
    return max(1, int(round(in_chs * pct / 100)))


class InvertedResidual(nn.Module):
    def __init__(self, in_chs: int, out_chs: int, mid_chs: int, kernel: int, stride: int, act: str | None,
                 se_chs: int = 0, skip: bool = False):
        super().__init__()
        self.conv_pw = conv(in_chs, mid_chs)
        self.bn1 = nn.BatchNorm2d(mid_chs)
        self.act1 = act_layer(act)
        self.conv_dw = conv(mid_chs, mid_chs, kernel, stride, groups=mid_chs)
        self.bn2 = nn.BatchNorm2d(mid_chs)
        self.act2 = act_layer(act)
        self.se = SqueezeExcite(mid_chs, se_chs, act) if se_chs else nn.Identity()
        self.conv_pwl = conv(mid_chs, out_chs)
        self.bn3 = nn.BatchNorm2d(out_chs)
        self.has_skip = skip

    def forward(self, x):
        y = self.act1(self.bn1(self.conv_pw(x)))
        y = self.act2(self.bn2(self.conv_dw(y)))
        y = self.bn3(self.conv_pwl(self.se(y)))
        return x + y if self.has_skip else y


class EdgeResidual(nn.Module):
    def __init__(self, in_chs: int, out_chs: int, mid_chs: int, kernel: int, stride: int, act: str | None,
                 se_chs: int = 0, skip: bool = False):
        super().__init__()
        self.conv_exp = conv(in_chs, mid_chs, kernel, stride)
        self.bn1 = nn.BatchNorm2d(mid_chs)
        self.act1 = act_layer(act)
        self.se = SqueezeExcite(mid_chs, se_chs, act) if se_chs else nn.Identity()
        self.conv_pwl = conv(mid_chs, out_chs)
        self.bn2 = nn.BatchNorm2d(out_chs)
        self.has_skip = skip

    def forward(self, x):
        y = self.act1(self.bn1(self.conv_exp(x)))
        y = self.bn2(self.conv_pwl(self.se(y)))
        return x + y if self.has_skip else y


class DepthwiseSeparable(nn.Module):
    def __init__(self, in_chs: int, out_chs: int, kernel: int, stride: int, act: str | None,
                 se_chs: int = 0, skip: bool = False):
        super().__init__()
        self.conv_dw = conv(in_chs, in_chs, kernel, stride, groups=in_chs)
        self.bn1 = nn.BatchNorm2d(in_chs)
        self.act1 = act_layer(act)
        self.se = SqueezeExcite(in_chs, se_chs, act) if se_chs else nn.Identity()
        self.conv_pw = conv(in_chs, out_chs)
        self.bn2 = nn.BatchNorm2d(out_chs)
        self.has_skip = skip

    def forward(self, x):
        y = self.act1(self.bn1(self.conv_dw(x)))
        y = self.bn2(self.conv_pw(self.se(y)))
        return x + y if self.has_skip else y


def _kind(block) -> str | None:
    if block is None:
        return None
    if hasattr(block, "conv_pw") and hasattr(block, "conv_dw") and hasattr(block, "conv_pwl"):
        return "ir"
    if hasattr(block, "conv_exp") and hasattr(block, "conv_pwl"):
        return "er"
    if hasattr(block, "conv_dw") and hasattr(block, "conv_pw"):
        return "ds"
    return None


def _same_io(block, slot) -> bool:
    first = block.conv_pw if _kind(block) == "ir" else block.conv_exp if _kind(block) == "er" else block.conv_dw
    last = block.conv_pwl if hasattr(block, "conv_pwl") else block.conv_pw
    return first.in_channels == slot.in_chs and last.out_channels == slot.out_chs


@torch.no_grad()
def _copy_se(dst, src, idx: torch.Tensor) -> None:
    """SE of a hidden layer reduced to channels `idx` (dst may have fewer reduce channels)."""
    if not isinstance(dst, SqueezeExcite):
        return
    if not hasattr(src, "conv_reduce"):
        nn.init.zeros_(dst.conv_expand.weight)
        nn.init.constant_(dst.conv_expand.bias, 3.0)  # gate ≈ 0.95: starts close to "no SE"
        return
    r = min(dst.conv_reduce.out_channels, src.conv_reduce.out_channels)
    m = len(idx)
    dst.conv_reduce.weight[:r, :m] = src.conv_reduce.weight[:r, idx]
    dst.conv_reduce.bias[:r] = src.conv_reduce.bias[:r]
    dst.conv_expand.weight[:m, :r] = src.conv_expand.weight[idx, :r]
    dst.conv_expand.bias[:m] = src.conv_expand.bias[idx]


def _hidden_importance(t) -> torch.Tensor:
    w = t.conv_pwl.weight.detach().flatten(1).norm(dim=0)
    return bn_scale(t.bn1) * bn_scale(t.bn2) * w


@torch.no_grad()
def inherit_ir(m: InvertedResidual, t, kernel: int) -> bool:
    mid_c, mid_t = m.conv_pw.out_channels, t.conv_pw.out_channels
    idx = select_channels(_hidden_importance(t), mid_c) if mid_c <= mid_t else torch.arange(mid_t)
    n = len(idx)
    m.conv_pw.weight[:n] = t.conv_pw.weight[idx]
    copy_bn(m.bn1, t.bn1, idx)
    m.conv_dw.weight[:n] = fit_kernel(t.conv_dw.weight[idx], kernel)
    copy_bn(m.bn2, t.bn2, idx)
    _copy_se(m.se, t.se, idx)
    m.conv_pwl.weight.zero_()
    m.conv_pwl.weight[:, :n] = t.conv_pwl.weight[:, idx]
    copy_bn(m.bn3, t.bn3)
    return True


@torch.no_grad()
def inherit_er_from_ir(m: EdgeResidual, t, kernel: int) -> bool:
    mid_c, mid_t = m.conv_exp.out_channels, t.conv_pw.out_channels
    idx = select_channels(_hidden_importance(t), mid_c) if mid_c <= mid_t else torch.arange(mid_t)
    n = len(idx)
    s1 = t.bn1.weight / torch.sqrt(t.bn1.running_var + t.bn1.eps)
    b1 = t.bn1.bias - t.bn1.running_mean * s1
    dw = fit_kernel(t.conv_dw.weight[idx], kernel)                       # (n, 1, k, k)
    pw = t.conv_pw.weight[idx, :, 0, 0] * s1[idx, None]                 # (n, in)
    m.conv_exp.weight[:n] = pw[:, :, None, None] * dw                   # (n, in, k, k)
    copy_bn(m.bn1, t.bn2, idx)
    m.bn1.running_mean[:n] -= b1[idx] * dw.sum((1, 2, 3))
    _copy_se(m.se, t.se, idx)
    m.conv_pwl.weight.zero_()
    m.conv_pwl.weight[:, :n] = t.conv_pwl.weight[:, idx]
    copy_bn(m.bn2, t.bn3)
    return True


@torch.no_grad()
def inherit_er(m: EdgeResidual, t, kernel: int) -> bool:
    mid_c, mid_t = m.conv_exp.out_channels, t.conv_exp.out_channels
    imp = bn_scale(t.bn1) * t.conv_pwl.weight.detach().flatten(1).norm(dim=0)
    idx = select_channels(imp, mid_c) if mid_c <= mid_t else torch.arange(mid_t)
    n = len(idx)
    m.conv_exp.weight[:n] = fit_kernel(t.conv_exp.weight[idx], kernel)
    copy_bn(m.bn1, t.bn1, idx)
    _copy_se(m.se, t.se, idx)
    m.conv_pwl.weight.zero_()
    m.conv_pwl.weight[:, :n] = t.conv_pwl.weight[:, idx]
    copy_bn(m.bn2, t.bn2)
    return True


@torch.no_grad()
def inherit_ds(m: DepthwiseSeparable, t, kernel: int) -> bool:
    idx = torch.arange(m.conv_dw.out_channels)
    m.conv_dw.weight.copy_(fit_kernel(t.conv_dw.weight, kernel))
    copy_bn(m.bn1, t.bn1)
    _copy_se(m.se, t.se, idx)
    m.conv_pw.weight.copy_(t.conv_pw.weight)
    copy_bn(m.bn2, t.bn2)
    return True


@register_family("ir", options=("kernel", "exp", "se", "act"), required=("kernel", "exp"),
                 doc="inverted residual (MBConv): 1x1 expand, kxk depthwise, [SE], 1x1 project")
def build_ir(spec, slot, teacher):
    stride = check_stride(slot, "ir")
    mid = make_divisible(slot.in_chs * spec.exp)
    m = InvertedResidual(slot.in_chs, slot.out_chs, mid, spec.kernel, stride, spec.act or slot.act,
                         se_channels(slot.in_chs, spec.se) if spec.se else 0, has_skip(slot))
    kind = _kind(teacher)
    if kind == "ir" and _same_io(teacher, slot):
        return m, inherit_ir(m, teacher, spec.kernel)
    return m, False


@register_family("er", options=("kernel", "exp", "se", "act"), required=("kernel", "exp"),
                 doc="fused MBConv / EdgeResidual: kxk expand conv, [SE], 1x1 project")
def build_er(spec, slot, teacher):
    stride = check_stride(slot, "er")
    mid = make_divisible(slot.in_chs * spec.exp)
    m = EdgeResidual(slot.in_chs, slot.out_chs, mid, spec.kernel, stride, spec.act or slot.act,
                     se_channels(slot.in_chs, spec.se) if spec.se else 0, has_skip(slot))
    kind = _kind(teacher)
    if kind == "ir" and _same_io(teacher, slot):
        return m, inherit_er_from_ir(m, teacher, spec.kernel)
    if kind == "er" and _same_io(teacher, slot):
        return m, inherit_er(m, teacher, spec.kernel)
    return m, False


@register_family("ds", options=("kernel", "se", "act"), required=("kernel",),
                 doc="depthwise-separable: kxk depthwise, [SE], 1x1 pointwise")
def build_ds(spec, slot, teacher):
    stride = check_stride(slot, "ds")
    m = DepthwiseSeparable(slot.in_chs, slot.out_chs, spec.kernel, stride, spec.act or slot.act,
                           se_channels(slot.in_chs, spec.se) if spec.se else 0, has_skip(slot))
    if _kind(teacher) == "ds" and _same_io(teacher, slot):
        return m, inherit_ds(m, teacher, spec.kernel)
    return m, False


__all__ = ["InvertedResidual", "EdgeResidual", "DepthwiseSeparable", "make_divisible", "math"]
