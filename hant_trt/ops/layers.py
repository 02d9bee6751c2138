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
    """timm-style SE: global pool → 1x1 reduce → act → 1x1 expand → gate.

    chs: channels it gates. rd_chs: reduced channels. act: activation between the 1x1 convs
    (default "relu"). hard: hard-sigmoid gate as in MobileNetV3 (default False: sigmoid).
    """

    def __init__(self, chs: int, rd_chs: int, act: str | None = "relu", hard: bool = False):
        super().__init__()
        self.conv_reduce = nn.Conv2d(chs, rd_chs, 1, bias=True)
        self.act = act_layer(act)
        self.conv_expand = nn.Conv2d(rd_chs, chs, 1, bias=True)
        self.gate = nn.Hardsigmoid() if hard else nn.Sigmoid()

    def forward(self, x):
        s = x.mean((2, 3), keepdim=True)
        return x * self.gate(self.conv_expand(self.act(self.conv_reduce(s))))


def make_divisible(v: float, divisor: int = 8) -> int:
    """timm's rounding of channel counts (never more than 10 % below v)."""
    new = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new + divisor if new < 0.9 * v else new


def se_layer(spec, block_in: int, se_in: int, act: str | None) -> nn.Module:
    """The SE an op asks for (nn.Identity without `se`). block_in: the block's input channels (the
    base of `se<pct>` in timm EfficientNet style); se_in: the channels the SE gates (the base with
    the `hse` flag, MobileNetV3 style: ReLU, hard-sigmoid, rounded to 8); act: the block's act."""
    if not spec.se:
        return nn.Identity()
    if "hse" in spec.flags:
        return SqueezeExcite(se_in, make_divisible(se_in * spec.se / 100), "relu", hard=True)
    return SqueezeExcite(se_in, max(1, int(round(block_in * spec.se / 100))), act)


def out_hw(size: int, stride: int) -> int:
    """Spatial size after a "same"-padded odd-kernel conv of `stride` (what timm blocks give)."""
    return -(-size // stride)


def check_stride(slot, op: str, allowed=(1, 2)) -> int:
    """slot.stride if the op can realise it (one strided conv: 1 or 2 unless `allowed` says more)
    and the slot's output resolution is what that stride gives; else UserError."""
    if slot.stride not in allowed:
        raise UserError(f"op '{op}' cannot realise stride {slot.stride} of slot {slot.name} (allowed {allowed})")
    _, h, w = slot.in_shape
    if tuple(slot.out_shape[1:]) != (out_hw(h, slot.stride), out_hw(w, slot.stride)):
        raise UserError(f"slot {slot.name}: output {tuple(slot.out_shape)} is not input {tuple(slot.in_shape)} "
                        f"at stride {slot.stride}")
    return slot.stride


def has_skip(slot, spec=None) -> bool:
    """Residual connection: where input and output shapes agree, unless the op says `noskip`."""
    if spec is not None and "noskip" in spec.flags:
        return False
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


# -- data-free statistics for pruning (the teacher's BNs say how each channel is distributed) ----------
def act_after(block: nn.Module, bn_name: str, act_name: str) -> nn.Module:
    """The activation applied after `block.<bn_name>`: timm's BatchNormAct2d carries it inside the
    BN; our own blocks (and older timm) keep it in `block.<act_name>`."""
    bn = getattr(block, bn_name)
    act = getattr(bn, "act", None)
    if act is None:
        act = getattr(block, act_name, None)
    return act if isinstance(act, nn.Module) else nn.Identity()


@torch.no_grad()
def act_stats(bn: nn.BatchNorm2d, act: nn.Module, points: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel (mean, RMS) of act(BN output), taking the BN output as N(bias, weight²) — what it
    is on data matching the running statistics. Deterministic quadrature over normal quantiles."""
    p = (torch.arange(points, dtype=torch.float64) + 0.5) / points
    q = torch.special.ndtri(p).float()[:, None]                      # (points, 1)
    h = bn.bias.detach()[None] + bn.weight.detach().abs()[None] * q  # (points, C)
    a = act(h.clone())
    return a.mean(0), a.square().mean(0).sqrt()


@torch.no_grad()
def prune_hidden(proj_w: torch.Tensor, mean: torch.Tensor, rms: torch.Tensor, keep: int):
    """(kept indices, compensation) for keeping `keep` of a hidden layer read out by `proj_w`
    (out, hidden, 1, 1). Importance = RMS of the channel x L2 norm of its read-out column (how much
    it moves the output); the dropped channels' mean contribution is returned so the caller can fold
    it into the read-out BN (running_mean -= compensation) instead of shifting the output."""
    w = proj_w.detach().flatten(1)
    if keep >= w.shape[1]:
        return torch.arange(w.shape[1]), w.new_zeros(w.shape[0])
    idx = select_channels(rms * w.norm(dim=0), keep)
    drop = torch.ones(w.shape[1], dtype=torch.bool)
    drop[idx] = False
    return idx, w[:, drop] @ mean[drop]


@torch.no_grad()
def kernel_shift(w_old: torch.Tensor, w_new: torch.Tensor, mean_in: torch.Tensor, groups: int) -> torch.Tensor:
    """Change of a conv's per-output-channel mean when its kernel goes from w_old to w_new (cropping),
    for inputs with per-channel mean `mean_in`: added to the following BN's running_mean."""
    d = (w_new - w_old).sum((2, 3))                                   # (out, in / groups)
    if groups == 1:
        return d @ mean_in
    per = w_old.shape[0] // groups
    ins = mean_in.view(groups, -1)                                    # (groups, in / groups)
    return (d.view(groups, per, -1) * ins[:, None, :]).sum(-1).flatten()
