"""Small layers shared by the families, and the weight-copy helpers of teacher inheritance."""

from __future__ import annotations

import torch
from torch import nn

from ..errors import UserError
from .grammar import ACTIVATIONS


def act_layer(name: str | None) -> nn.Module:
    return ACTIVATIONS[name]() if name else nn.Identity()


def conv(in_chs: int, out_chs: int, k: int = 1, stride: int = 1, groups: int = 1, bias: bool = False) -> nn.Conv2d:
    return nn.Conv2d(in_chs, out_chs, k, stride=stride, padding=k // 2, groups=groups, bias=bias)


class SqueezeExcite(nn.Module):
    """timm-style SE: global pool → 1x1 reduce → act → 1x1 expand → sigmoid gate."""

    def __init__(self, chs: int, rd_chs: int, act: str | None = "relu"):
        super().__init__()
        self.conv_reduce = nn.Conv2d(chs, rd_chs, 1, bias=True)
        self.act = act_layer(act)
        self.conv_expand = nn.Conv2d(rd_chs, chs, 1, bias=True)

    def forward(self, x):
        s = x.mean((2, 3), keepdim=True)
        return x * torch.sigmoid(self.conv_expand(self.act(self.conv_reduce(s))))


def check_stride(slot, op: str, allowed=(1, 2)) -> int:
    if slot.stride not in allowed:
        raise UserError(f"op '{op}' cannot realise stride {slot.stride} of slot {slot.name} (allowed {allowed})")
    return slot.stride


def has_skip(slot) -> bool:
    return tuple(slot.in_shape) == tuple(slot.out_shape) and slot.stride == 1


# -- inheritance helpers -----------------------------------------------------------------------------
@torch.no_grad()
def copy_bn(dst: nn.BatchNorm2d, src: nn.BatchNorm2d, idx: torch.Tensor | None = None) -> None:
    """Copy a BatchNorm's affine parameters and running statistics (a subset of channels)."""
    n = dst.num_features
    sel = idx if idx is not None else torch.arange(min(n, src.num_features))
    m = len(sel)
    for name in ("weight", "bias", "running_mean", "running_var"):
        d, s = getattr(dst, name), getattr(src, name)
        if d is None or s is None:
            continue
        d[:m] = s[sel]


@torch.no_grad()
def fit_kernel(w: torch.Tensor, k: int) -> torch.Tensor:
    """Centre-crop or zero-pad the spatial kernel of conv weight `w` to k x k."""
    kt = w.shape[-1]
    if kt == k:
        return w.clone()
    if kt > k:
        o = (kt - k) // 2
        return w[..., o:o + k, o:o + k].clone()
    out = w.new_zeros(*w.shape[:-2], k, k)
    o = (k - kt) // 2
    out[..., o:o + kt, o:o + kt] = w
    return out


def bn_scale(bn: nn.BatchNorm2d) -> torch.Tensor:
    return bn.weight.detach().abs() / torch.sqrt(bn.running_var.detach() + bn.eps)


def select_channels(importance: torch.Tensor, keep: int) -> torch.Tensor:
    """Indices of the `keep` most important channels, in their original order."""
    keep = min(keep, importance.numel())
    top = torch.topk(importance, keep).indices
    return torch.sort(top).values


def init_bn_identity(bn: nn.BatchNorm2d) -> None:
    nn.init.ones_(bn.weight)
    nn.init.zeros_(bn.bias)
