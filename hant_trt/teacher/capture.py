"""Run the teacher once and keep every slot's input and output (forward hooks)."""

from __future__ import annotations

import torch

from .decompose import Decomposition


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


def capture_fisher(d: Decomposition, x: torch.Tensor, seed: int) -> tuple[list[torch.Tensor], torch.Tensor,
                                                                          list[torch.Tensor | None]]:
    """`capture` plus, for every slot output acts[i] (i ≥ 1), the squared gradient of
    −log p_teacher(y | x) w.r.t. it, with y drawn from the teacher's own softmax (seeded by `seed`).

    Why: in expectation over y that is the diagonal of the Fisher information of the teacher's
    predictive distribution at that feature map, and KL(teacher ‖ swapped) ≈ ½ Δᵀ F Δ for a small
    error Δ there. Weighting a candidate's feature error by it (BRECQ's Fisher-weighted block
    reconstruction, Li et al. 2021, with the teacher's own labels instead of ground truth) makes
    the distillation care about the directions the rest of the network reads; a plain MSE does not
    (on Lite0's late slots cheap candidates beat `skip` on MSE and lose to it on swap-one KL).
    One backward pass through the frozen teacher per batch, shared by all candidates."""
    with torch.enable_grad():
        h = d.stem(x).detach().requires_grad_(True)
        acts = [h]
        for block in d.blocks:
            h = block(h)
            acts.append(h)
        logits = d.head(h)
        logp = torch.log_softmax(logits.float(), dim=1)
        g = torch.Generator().manual_seed(int(seed))
        y = torch.multinomial(logp.detach().exp().cpu(), 1, generator=g).to(logits.device)
        # ×4096 keeps fp16 gradients (CUDA autocast) clear of underflow; the weights' scale cancels.
        # autograd.grad, not backward: nothing accumulates in the teacher's parameters
        grads = torch.autograd.grad(-logp.gather(1, y).sum() * 4096.0, acts[1:])
    weights = [None] + [gr.detach().float() ** 2 for gr in grads]
    return [a.detach() for a in acts], logits.detach(), weights


def fisher_mse(out: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Σ w (out − target)² / Σ w target²: `normalised_mse` with per-element weights (1.0 = zeros)."""
    return (weight * (out - target) ** 2).sum() / (weight * target.pow(2)).sum().clamp_min(1e-20)


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
