"""Training utilities shared by distillation, scoring, the search's evaluator and the build's
fine-tune: optimizer, device and mixed precision, LR schedule, seeded batches, BatchNorm estimation."""

from __future__ import annotations

import math

import torch
from torch import nn

from .errors import UserError


def adamw(params, lr: float, weight_decay: float = 0.0) -> torch.optim.AdamW:
    """AdamW with the fused kernel: on CPU the default per-tensor loop costs ~4x more per step over
    the thousands of small tensors of a candidate pool (small preset on Lite0: 204 vs 56 ms)."""
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=True)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("distill.device is 'cuda' but no CUDA device is visible")
    if name not in ("cpu", "cuda"):
        raise UserError(f"distill.device must be auto, cpu or cuda, not '{name}'")
    return torch.device(name)


def set_train_mode(module: nn.Module, bn: str = "frozen") -> None:
    """Train mode, with BatchNorm layers kept in eval mode when `bn == "frozen"`: with a few hundred
    images, batch statistics of small batches are noisier than the teacher's (or the least-squares
    refit's) running statistics, and frozen statistics make the result independent of the
    distillation resolution."""
    module.train()
    if bn == "frozen":
        for m in module.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()
    elif bn != "train":
        raise UserError(f"distill.bn must be 'frozen' or 'train', not '{bn}'")


def lr_at(step: int, total: int, base: float, warmup: int) -> float:
    """Linear warm-up then cosine decay to 1% of base."""
    if step < warmup:
        return base * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return base * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))


def step_items(dataset, step: int, batch_size: int, seed: int) -> list:
    """The step's (image, label) items: indices and augmentation seeded by (seed, step) only, so a
    resumed run sees exactly the data an uninterrupted one would."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + step)
    idx = torch.randint(0, len(dataset), (batch_size,), generator=g).tolist()
    state = torch.get_rng_state()
    torch.manual_seed(seed * 7_919 + step)
    try:
        return [dataset[i] for i in idx]
    finally:
        torch.set_rng_state(state)


def batch_for_step(dataset, step: int, batch_size: int, seed: int) -> torch.Tensor:
    """The step's images (`step_items`)."""
    return torch.stack([x for x, _ in step_items(dataset, step, batch_size, seed)])


def labelled_batch_for_step(dataset, step: int, batch_size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The step's images and labels (`step_items`)."""
    items = step_items(dataset, step, batch_size, seed)
    return torch.stack([x for x, _ in items]), torch.tensor([int(y) for _, y in items])


def autocast_of(dev: torch.device) -> tuple[bool, torch.dtype]:
    """(mixed precision on, its dtype): bf16 on GPUs that have it (no loss scaling needed), fp16
    with gradient scaling on older ones, off on the CPU."""
    if dev.type != "cuda":
        return False, torch.float32
    return True, torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def eval_batches(dataset, n_images: int, batch_size: int) -> list[torch.Tensor]:
    n = min(n_images, len(dataset))
    xs = [dataset[i][0] for i in range(n)]
    return [torch.stack(xs[i:i + batch_size]) for i in range(0, n, batch_size)]


@torch.no_grad()
def estimate_bn(modules: list[nn.Module], forward) -> None:
    """Re-estimate the statistics of every BatchNorm inside `modules` as a cumulative average over
    what `forward()` feeds them. Only those BatchNorms are in train mode meanwhile; they are left in
    eval mode."""
    bns = [m for mod in modules for m in mod.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return
    moms = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
        m.train()
    forward()
    for m, mom in zip(bns, moms):
        m.momentum = mom
        m.eval()
