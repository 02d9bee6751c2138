"""The search's student at a budget with each `skip` given a per-channel bias (the teacher's mean
residual on 256 training images, then trained with the replaced parts): assembled and fine-tuned
figures on dev's eval split, and holdout (issue 9; a probe that did not help).

    HANT_TRT_LUT=runs/lut_small.sqlite .venv/bin/python benchmarks/probe_skip_bias.py SPEEDUP [STEPS]
"""
import sys, torch
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parent))
from quality_lite0 import Bench
from hant_trt.build.assemble import Choice
from hant_trt.build.finetune import agreement, finetune
from hant_trt.build.stage import trainable_parts
from hant_trt.distill.capture import capture
from hant_trt.search.ilp import solve
from hant_trt.search.tables import build_problem, load_tables
from torch import nn

class BiasSkip(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(1, c, 1, 1))
    def forward(self, x):
        return x + self.bias

sp = float(sys.argv[1]); steps = int(sys.argv[2]) if len(sys.argv) > 2 else 300
run = Path("runs/lite0_dev_small")
b = Bench(run, run / "quality", 0, None, 2, holdout="../shared/data/imagenet-sample/holdout")
tables = load_tables(run, "kl")
sol = solve(build_problem(tables, b.n, f"speedup={sp}", [b.device]), "cbc", 60)
choices = sorted((Choice(o.first, o.last, o.op) for o in sol.choices), key=lambda c: c.first)
print("replaced:", [f"{c.first}:{c.op}" for c in choices if c.op != "keep"])
m = b.student(choices)
# mean residual of each skipped slot on the un-augmented training images at deploy resolution
sums = {}
with torch.no_grad():
    for x in b.bn_batches:
        acts, _ = capture(b.d, x)
        for i, c in enumerate(choices):
            if c.op == "skip":
                r = (acts[c.first + 1] - acts[c.first]).mean((0, 2, 3))
                sums[i] = sums.get(i, 0) + r / len(b.bn_batches)
for i, mean in sums.items():
    bs = BiasSkip(mean.numel()); bs.bias.data = mean.view(1, -1, 1, 1).clone(); m.parts[i] = bs
print("assembled (bias skips):", b.evaluate(m), flush=True)
finetune(m, b.teacher.model, b.train, steps, b.cfg.build.batch_size, 1e-4, b.tmp / "bs", seed=0, fingerprint="bs",
         decomposition=b.d, boundaries=[c.last + 1 for c in choices], feature_weight=1.0, bn="frozen",
         trainable=trainable_parts(m, choices, "replaced"))
print("fine-tuned:", b.evaluate(m))
print("holdout:", agreement(m, b.teacher.model, b.holdout_loader), flush=True)
