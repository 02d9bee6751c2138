"""Run the teacher once and keep every slot's input and output (forward hooks)."""

from __future__ import annotations

import torch
from torch import nn

from ..teacher.decompose import Decomposition


@torch.no_grad()
def capture(d: Decomposition, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
    """(acts, logits): acts[i] is the input of slot i and acts[i+1] its output; acts has
    len(slots) + 1 entries (the last is the input of the head)."""
    acts = []
    h = d.stem(x)
    acts.append(h)
    for block in d.blocks:
        h = block(h)
        acts.append(h)
    return acts, d.head(h)


@torch.no_grad()
def suffix(d: Decomposition, h: torch.Tensor, start: int) -> torch.Tensor:
    """Logits from the input of slot `start` onwards (start == len(blocks): head only)."""
    for block in d.blocks[start:]:
        h = block(h)
    return d.head(h)


def suffix_logits(d: Decomposition, h: torch.Tensor, start: int) -> torch.Tensor:
    """`suffix` with gradients flowing back to `h` (the teacher's weights stay frozen)."""
    for block in d.blocks[start:]:
        h = block(h)
    return d.head(h)


def kl_to_teacher(teacher_logits: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """KL(softmax(teacher) ‖ softmax(student)), mean over the batch."""
    t = torch.log_softmax(teacher_logits.float(), dim=1)
    return (t.exp() * (t - torch.log_softmax(logits.float(), dim=1))).sum(1).mean()


def teacher_modules_eval(d: Decomposition) -> None:
    for m in (d.stem, d.head, *d.blocks):
        m.eval()
        for p in m.parameters():
            p.requires_grad_(False)


def normalised_mse(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """MSE divided by the target's mean square: comparable across slots whose feature maps
    differ in scale by orders of magnitude (1.0 = predicting zeros)."""
    return ((out - target) ** 2).mean() / target.pow(2).mean().clamp_min(1e-8)


from ..teacher.decompose import module_slot_of, span_teacher  # noqa: E402,F401  (re-exported)
