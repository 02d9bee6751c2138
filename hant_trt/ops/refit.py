"""Data-driven start for a candidate: least-squares refit of its linear read-out.

A candidate's last 1x1 conv + BN (its "read-out") is linear in the hidden features. Given the
slot's real inputs and the teacher's outputs, the read-out that best reproduces the teacher from
the candidate's current hidden features is a ridge regression — the feature-reconstruction step of
channel-pruning methods. Pruned or randomly initialised hidden channels then start from the best
linear combination instead of a biased copy, which matters with few training images.
"""

from __future__ import annotations

import torch
from torch import nn

READOUTS = (("conv_pwl", "bn3"), ("conv_pwl", "bn2"), ("conv_pw", "bn2"), ("conv", "bn"), ("conv3", "bn3"))


def readout_of(module: nn.Module) -> tuple[nn.Conv2d, nn.BatchNorm2d] | None:
    for c, b in READOUTS:
        conv, bn = getattr(module, c, None), getattr(module, b, None)
        if (isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d) and conv.kernel_size == (1, 1)
                and conv.groups == 1 and bn.num_features == conv.out_channels):
            return conv, bn
    return None


@torch.no_grad()
def refit_readout(module: nn.Module, x: torch.Tensor, target: torch.Tensor, ridge: float = 1e-3,
                  max_samples: int = 50_000) -> bool:
    """Refit the read-out so that module(x) ≈ target in least squares. Returns whether it applied.

    Skipped for modules whose output is not read-out + optional identity skip (e.g. ResNet blocks
    with a final activation after the sum).
    """
    ro = readout_of(module)
    if ro is None or hasattr(module, "act3") or hasattr(module, "act2") and hasattr(module, "conv2"):
        return False
    conv, bn = ro
    feats = []
    h = conv.register_forward_hook(lambda m, inp, out: feats.append(inp[0]))
    was = module.training
    module.eval()
    try:
        base = module(x)
    finally:
        h.remove()
        module.train(was)
    hid = feats[0]                                    # (N, C_in, H, W)
    skip = getattr(module, "has_skip", False)
    resid = target - x if skip else target            # what the read-out must produce
    if resid.shape != base.shape:
        return False
    H = hid.permute(0, 2, 3, 1).reshape(-1, hid.shape[1]).double()
    T = resid.permute(0, 2, 3, 1).reshape(-1, resid.shape[1]).double()
    if H.shape[0] > max_samples:
        g = torch.Generator().manual_seed(0)       # CPU generator: the same rows on every device
        sel = torch.randperm(H.shape[0], generator=g)[:max_samples].to(H.device)
        H, T = H[sel], T[sel]
    hm, tm = H.mean(0), T.mean(0)
    Hc, Tc = H - hm, T - tm
    gram = Hc.T @ Hc
    # stronger shrinkage when there are few samples per feature (late, low-resolution slots)
    lam = ridge * max(1.0, 4.0 * H.shape[1] / H.shape[0]) * gram.diagonal().mean().clamp_min(1e-12)
    W = torch.linalg.solve(gram + lam * torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device), Hc.T @ Tc).T  # (out, in)
    b = tm - W @ hm
    z = H @ W.T                                        # read-out conv output on the samples
    mu, var = z.mean(0), z.var(0, unbiased=False).clamp_min(1e-6)
    conv.weight.copy_(W.float()[:, :, None, None])
    # BN chosen so that eval-mode BN(z) = z + b, and train-mode batch statistics start close to it
    bn.running_mean.copy_(mu.float())
    bn.running_var.copy_((var - bn.eps).clamp_min(1e-6).float())
    bn.weight.copy_(torch.sqrt(var).float())
    bn.bias.copy_((mu + b).float())
    return True
