"""What a module costs: multiply-accumulates (the params are a sum of `numel`)."""

from __future__ import annotations

import torch
from torch import nn


def count_macs(module: nn.Module, x: torch.Tensor) -> int:
    """Multiply-accumulates of Conv2d/Linear layers for one sample of `x`'s shape."""
    total = 0

    def hook(m, inp, out):
        nonlocal total
        if isinstance(m, nn.Conv2d):
            k = m.kernel_size[0] * m.kernel_size[1] * (m.in_channels // m.groups)
            total += int(out[0].numel() * k)
        elif isinstance(m, nn.Linear):
            total += int(out[0].numel() * m.in_features)

    handles = [m.register_forward_hook(hook) for m in module.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    try:
        with torch.no_grad():
            module(x)
    finally:
        for h in handles:
            h.remove()
    return total
