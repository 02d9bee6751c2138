"""ResNet families: `basic` (two kxk convs) and `bot` (1x1 → kxk grouped → 1x1 bottleneck), each
with an identity or 1x1-conv shortcut. Names follow timm's ResNet blocks so a teacher block's
weights copy over; a narrower bottleneck keeps the mid channels with the largest |γ/σ|."""

from __future__ import annotations

import torch
from torch import nn

from ...errors import UserError
from ..grammar import register_family
from ..layers import act_layer, bn_scale, check_stride, conv, copy_bn, fit_kernel, select_channels


def _shortcut(in_chs: int, out_chs: int, stride: int) -> nn.Module | None:
    if in_chs == out_chs and stride == 1:
        return None
    return nn.Sequential(conv(in_chs, out_chs, 1, stride), nn.BatchNorm2d(out_chs))


class BasicBlock(nn.Module):
    """timm's ResNet basic block: kxk conv (stride) → kxk conv, + shortcut, act. in_chs/out_chs:
    channels; kernel; stride; act: activation name."""

    def __init__(self, in_chs: int, out_chs: int, kernel: int, stride: int, act: str | None):
        super().__init__()
        self.conv1 = conv(in_chs, out_chs, kernel, stride)
        self.bn1 = nn.BatchNorm2d(out_chs)
        self.act1 = act_layer(act)
        self.conv2 = conv(out_chs, out_chs, kernel)
        self.bn2 = nn.BatchNorm2d(out_chs)
        self.downsample = _shortcut(in_chs, out_chs, stride)
        self.act2 = act_layer(act)

    def forward(self, x):
        sc = x if self.downsample is None else self.downsample(x)
        y = self.bn2(self.conv2(self.act1(self.bn1(self.conv1(x)))))
        return self.act2(y + sc)


class Bottleneck(nn.Module):
    """timm's ResNet(-Xt) bottleneck: 1x1 → kxk grouped (stride) → 1x1, + shortcut, act. mid_chs:
    the inner width; groups: of the kxk conv (default 1); others as `BasicBlock`."""

    def __init__(self, in_chs: int, out_chs: int, mid_chs: int, kernel: int, stride: int, act: str | None,
                 groups: int = 1):
        super().__init__()
        self.conv1 = conv(in_chs, mid_chs)
        self.bn1 = nn.BatchNorm2d(mid_chs)
        self.act1 = act_layer(act)
        self.conv2 = conv(mid_chs, mid_chs, kernel, stride, groups=groups)
        self.bn2 = nn.BatchNorm2d(mid_chs)
        self.act2 = act_layer(act)
        self.conv3 = conv(mid_chs, out_chs)
        self.bn3 = nn.BatchNorm2d(out_chs)
        self.downsample = _shortcut(in_chs, out_chs, stride)
        self.act3 = act_layer(act)

    def forward(self, x):
        sc = x if self.downsample is None else self.downsample(x)
        y = self.act1(self.bn1(self.conv1(x)))
        y = self.act2(self.bn2(self.conv2(y)))
        return self.act3(self.bn3(self.conv3(y)) + sc)


@torch.no_grad()
def _copy_shortcut(m, t) -> None:
    if m.downsample is not None and isinstance(getattr(t, "downsample", None), nn.Sequential):
        tc, tb = t.downsample[0], t.downsample[1]
        if isinstance(tc, nn.Conv2d) and tc.weight.shape == m.downsample[0].weight.shape:
            m.downsample[0].weight.copy_(tc.weight)
            copy_bn(m.downsample[1], tb)


def _validate(spec, slot) -> None:
    check_stride(slot, spec.family)  # bot rounds its mid width up to a multiple of groups itself


@register_family("basic", options=("kernel", "act"), required=("kernel",), validate=_validate,
                 doc="ResNet basic block: kxk conv, kxk conv, shortcut")
def build_basic(spec, slot, teacher):
    stride = slot.stride
    m = BasicBlock(slot.in_chs, slot.out_chs, spec.kernel, stride, spec.act or slot.act)
    t = teacher
    if (t is not None and hasattr(t, "conv2") and not hasattr(t, "conv3")
            and t.conv1.in_channels == slot.in_chs and t.conv2.out_channels == slot.out_chs):
        with torch.no_grad():
            m.conv1.weight.copy_(fit_kernel(t.conv1.weight, spec.kernel))
            m.conv2.weight.copy_(fit_kernel(t.conv2.weight, spec.kernel))
        copy_bn(m.bn1, t.bn1)
        copy_bn(m.bn2, t.bn2)
        _copy_shortcut(m, t)
        return m, True
    return m, False


@register_family("bot", options=("kernel", "exp", "groups", "act"), required=("kernel", "exp"),
                 validate=_validate, doc="ResNet(-Xt) bottleneck: 1x1 reduce to e*out, kxk (grouped) conv, 1x1 expand, shortcut")
def build_bot(spec, slot, teacher):
    stride = slot.stride
    mid = max(spec.groups, int(round(slot.out_chs * spec.exp)))
    if mid % spec.groups:
        mid = (mid // spec.groups + 1) * spec.groups
    m = Bottleneck(slot.in_chs, slot.out_chs, mid, spec.kernel, stride, spec.act or slot.act, spec.groups)
    t = teacher
    if (t is not None and hasattr(t, "conv3") and t.conv1.in_channels == slot.in_chs
            and t.conv3.out_channels == slot.out_chs and t.conv2.groups == spec.groups):
        mid_t = t.conv1.out_channels
        if spec.groups == 1 and mid <= mid_t:
            idx = select_channels(bn_scale(t.bn2) * bn_scale(t.bn1), mid)
        elif mid == mid_t:
            idx = torch.arange(mid_t)
        else:
            return m, False
        with torch.no_grad():
            m.conv1.weight.copy_(t.conv1.weight[idx])
            w2 = fit_kernel(t.conv2.weight, spec.kernel)
            m.conv2.weight.copy_(w2[idx][:, idx] if spec.groups == 1 else w2)
            m.conv3.weight.copy_(t.conv3.weight[:, idx])
        copy_bn(m.bn1, t.bn1, idx)
        copy_bn(m.bn2, t.bn2, idx)
        copy_bn(m.bn3, t.bn3)
        _copy_shortcut(m, t)
        return m, True
    return m, False


__all__ = ["BasicBlock", "Bottleneck", "UserError"]
