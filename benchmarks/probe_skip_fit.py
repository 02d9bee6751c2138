"""What a `skip` loses, and how much of it cheap closed-form replacements of a residual block's
branch recover (issue 9): per slot, least squares per channel on 200 training images of the run's
dev split at the deploy resolution, error on its eval split relative to the branch's (skip = 1.0).

    .venv/bin/python benchmarks/probe_skip_fit.py [RUN_DIR]   (default runs/lite0_dev_small)
"""
import json
import sys

import torch
import torch.nn.functional as F
from pathlib import Path
from torch.utils.data import DataLoader
from hant_trt.config import from_dict
from hant_trt.teacher.stage import load_from_config
from hant_trt.distill.stage import data_splits
from hant_trt.distill.capture import capture
torch.manual_seed(0)
run = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/lite0_dev_small")
cfg = from_dict(json.loads((run / "run.json").read_text())["config"])
teacher, d = load_from_config(cfg)
sp = data_splits(cfg, teacher.data_config, train_augment=False)
SLOTS = [2, 4, 6, 7, 9, 10, 12, 13, 14]
def grab(ds, n):
    xs = torch.stack([ds[i][0] for i in range(min(n, len(ds)))])
    ins, outs = {s: [] for s in SLOTS}, {s: [] for s in SLOTS}
    with torch.no_grad():
        for b in xs.split(25):
            acts, _ = capture(d, b)
            for s in SLOTS:
                ins[s].append(acts[s]); outs[s].append(acts[s + 1])
    return {s: torch.cat(ins[s]) for s in SLOTS}, {s: torch.cat(outs[s]) for s in SLOTS}
Xtr, Ytr = grab(sp.train, 200)
Xev, Yev = grab(sp.eval, 100)
def feats(x, kind):
    N, C, H, W = x.shape
    if kind == "bias":
        return torch.ones(N, C, H, W, 1)
    if kind == "affine":
        return torch.stack([x, torch.ones_like(x)], -1)
    p = F.pad(x, (1, 1, 1, 1))
    taps = [p[:, :, i:i + H, j:j + W] for i in range(3) for j in range(3)]
    return torch.stack(taps + [torch.ones_like(x)], -1)
res = {}
for s in SLOTS:
    row = {}
    Rtr, Rev = Ytr[s] - Xtr[s], Yev[s] - Xev[s]
    den = (Rev ** 2).mean()
    row["skip"] = 1.0
    for kind in ("bias", "affine", "dw3"):
        A = feats(Xtr[s], kind)                   # N C H W K
        K = A.shape[-1]
        A2 = A.permute(1, 0, 2, 3, 4).reshape(A.shape[1], -1, K)
        r2 = Rtr.permute(1, 0, 2, 3).reshape(Rtr.shape[1], -1, 1)
        AtA = A2.transpose(1, 2) @ A2 + 1e-3 * torch.eye(K)
        w = torch.linalg.solve(AtA, A2.transpose(1, 2) @ r2)   # C K 1
        Ae = feats(Xev[s], kind)
        pred = (Ae * w.squeeze(-1)[None, :, None, None, :]).sum(-1)
        row[kind] = float(((Rev - pred) ** 2).mean() / den)
    res[s] = row
    print(s, {k: round(v, 3) for k, v in row.items()}, flush=True)
