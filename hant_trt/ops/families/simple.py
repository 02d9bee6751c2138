"""`keep` (the teacher's own block), `skip` (identity), `proj` (cheap projection), `conv` (plain)."""

from __future__ import annotations

import copy

import torch
from torch import nn

from ...errors import UserError
from ..grammar import register_family
from ..layers import act_layer, check_stride, conv, copy_bn, fit_kernel, has_skip


@register_family("keep", validate=lambda spec, slot: None,
                 doc="the teacher's own block(s), with the teacher's weights")
def build_keep(spec, slot, teacher):
    if teacher is None:
        raise UserError(f"'keep' needs the teacher's block for slot {slot.name}")
    return copy.deepcopy(teacher), True


def _validate_skip(spec, slot) -> None:
    if tuple(slot.in_shape) != tuple(slot.out_shape) or slot.stride != 1:
        raise UserError(f"'skip' needs equal input and output shapes; slot {slot.name} maps "
                        f"{tuple(slot.in_shape)} to {tuple(slot.out_shape)} (use 'proj')")


@register_family("skip", validate=_validate_skip,
                 doc="identity: drops the layer (only where input and output shapes agree)")
def build_skip(spec, slot, teacher):
    # exact for a residual teacher block whose branch contributes little; never "inherited" weights
    return nn.Identity(), False


class Projection(nn.Module):
    """Average-pool to the output resolution, then 1x1 conv + BN: the cheapest shape change.
    in_chs/out_chs: channels; stride: pooling window and step (1 = no pooling)."""

    def __init__(self, in_chs: int, out_chs: int, stride: int):
        super().__init__()
        # ceil_mode: odd sizes round up like the teacher's "same"-padded strided convs
        self.pool = (nn.AvgPool2d(stride, stride, ceil_mode=True, count_include_pad=False)
                     if stride > 1 else nn.Identity())
        self.conv = conv(in_chs, out_chs)
        self.bn = nn.BatchNorm2d(out_chs)

    def forward(self, x):
        return self.bn(self.conv(self.pool(x)))


@register_family("proj", validate=lambda spec, slot: check_stride(slot, "proj", (1, 2, 4, 8)),
                 doc="average pool (stride) + 1x1 conv + BN, for slots whose shapes change")
def build_proj(spec, slot, teacher):
    return Projection(slot.in_chs, slot.out_chs, slot.stride), False


class ConvBnAct(nn.Module):
    """kxk conv + BN + act, plus the input where `skip` (timm's ConvBnAct). in_chs/out_chs: channels;
    kernel; stride; act: activation name; groups (default 1); skip: residual (default False)."""

    def __init__(self, in_chs: int, out_chs: int, kernel: int, stride: int, act: str | None, groups: int = 1,
                 skip: bool = False):
        super().__init__()
        self.conv = conv(in_chs, out_chs, kernel, stride, groups=groups)
        self.bn1 = nn.BatchNorm2d(out_chs)
        self.act = act_layer(act)
        self.has_skip = skip

    def forward(self, x):
        y = self.act(self.bn1(self.conv(x)))
        return x + y if self.has_skip else y


def _validate_conv(spec, slot) -> None:
    check_stride(slot, "conv")
    if slot.in_chs % spec.groups or slot.out_chs % spec.groups:
        raise UserError(f"conv groups {spec.groups} do not divide {slot.in_chs}/{slot.out_chs} channels")


@register_family("conv", options=("kernel", "groups", "act"), required=("kernel",), flags=("noskip",),
                 validate=_validate_conv,
                 doc="plain kxk convolution + BN + activation (+ input where shapes agree, unless noskip)")
def build_conv(spec, slot, teacher):
    m = ConvBnAct(slot.in_chs, slot.out_chs, spec.kernel, slot.stride, spec.act or slot.act, spec.groups,
                  has_skip(slot, spec))
    tconv = getattr(teacher, "conv", None)
    if (isinstance(tconv, nn.Conv2d) and tconv.in_channels == slot.in_chs and tconv.out_channels == slot.out_chs
            and tconv.groups == spec.groups and hasattr(teacher, "bn1")):
        with torch.no_grad():
            m.conv.weight.copy_(fit_kernel(tconv.weight, spec.kernel))
        copy_bn(m.bn1, teacher.bn1)
        return m, True
    return m, False
