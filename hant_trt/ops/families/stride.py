"""`es` (early stride): a strided span's own blocks, every weight inherited, with the downsampling
moved into the first block's depthwise conv.

    es        the blocks as they are, the stride taken from the later block's conv to the first's
    es_k5     the same, with the first block's depthwise conv (the one that now subsamples) widened
              to 5x5 (zero-padded: it starts as `es`), so the subsampling sees more context

Why: on ONNX Runtime CPU in int8 the blocks at the stem's resolution (Lite0: 112², slot 0 and slot
1's expansion) cost about a quarter of a fast student, and no single-slot candidate makes them
cheap without losing what they compute. Moving the stride of slot 1 into slot 0's depthwise conv
runs everything after it at a quarter of the pixels and keeps every weight; the distillation then
fits the depthwise convs to the coarser grid. The op is bound to the teacher's blocks, so its
signature names them (`Candidate.signature`) and it cannot be built without them.

Fits a span whose first block is a non-residual depthwise block at stride 1 (timm's
DepthwiseSeparableConv, or an InvertedResidual without skip) followed by blocks whose only
downsampling is one strided conv; anything else is refused with a UserError.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from ...errors import UserError
from ..grammar import register_family
from ..layers import fit_kernel


class EarlyStride(nn.Module):
    """`blocks` (an nn.Sequential, already restrided) applied in order."""

    def __init__(self, blocks: nn.Sequential):
        super().__init__()
        self.blocks = blocks

    def forward(self, x):
        return self.blocks(x)


def _strided_convs(block: nn.Module) -> list[tuple[nn.Module, str, nn.Conv2d]]:
    return [(parent, name, c) for parent in block.modules() for name, c in parent.named_children()
            if isinstance(c, nn.Conv2d) and c.stride[0] > 1]


def _widened(c: nn.Conv2d, k: int, stride: int) -> nn.Conv2d:
    """`c` at kernel k (zero-padded or centre-cropped weights) and the given stride."""
    if c.padding_mode != "zeros" or not isinstance(c.padding, tuple) or c.padding[0] != c.kernel_size[0] // 2:
        raise UserError("'es' needs depthwise convs with symmetric zero padding (kernel // 2)")
    k = k or c.kernel_size[0]
    out = nn.Conv2d(c.in_channels, c.out_channels, k, stride=stride, padding=k // 2, groups=c.groups,
                    bias=c.bias is not None)
    with torch.no_grad():
        out.weight.copy_(fit_kernel(c.weight, k))
        if c.bias is not None:
            out.bias.copy_(c.bias)
    return out


def _validate(spec, slot) -> None:
    if getattr(slot, "kind", None) != "span" or slot.stride != 2:
        raise UserError(f"'es' replaces a span of blocks with stride 2, not slot {slot.name}")


def early_stride(blocks: nn.Sequential, kernel: int | None, in_shape, out_shape) -> EarlyStride:
    """The restrided copy of `blocks` (see the module docstring); UserError where it does not fit."""
    blocks = copy.deepcopy(blocks)
    first = blocks[0]
    dw = getattr(first, "conv_dw", None)
    if (not isinstance(dw, nn.Conv2d) or dw.groups != dw.in_channels or dw.stride[0] != 1
            or getattr(first, "has_skip", False)):
        raise UserError("'es' needs a first block with a stride-1 depthwise conv and no residual")
    later = [s for b in list(blocks)[1:] for s in _strided_convs(b)]
    if len(later) != 1 or later[0][2].stride[0] != 2:
        raise UserError("'es' needs exactly one stride-2 conv after the first block")
    parent, name, conv = later[0]
    if conv.groups != conv.in_channels or conv.kernel_size[0] == 1:
        raise UserError("'es' moves the stride of a depthwise conv only")
    setattr(parent, name, _widened(conv, None, 1))
    first.conv_dw = _widened(dw, kernel, 2)
    m = EarlyStride(blocks).eval()
    with torch.no_grad():
        got = tuple(m(torch.zeros(1, *in_shape)).shape[1:])
    if got != tuple(out_shape):
        raise UserError(f"'es' gives {got}, the span needs {tuple(out_shape)}")
    return m


@register_family("es", options=("kernel",), validate=_validate, teacher_bound=True,
                 doc="early stride: a span's own blocks with the downsampling moved to the first depthwise conv")
def build_es(spec, slot, teacher):
    if not isinstance(teacher, nn.Sequential) or len(teacher) < 2:
        raise UserError(f"'es' needs the teacher's blocks of span {slot.name}")
    return early_stride(teacher, spec.kernel, slot.in_shape, slot.out_shape), True


__all__ = ["EarlyStride", "early_stride"]
