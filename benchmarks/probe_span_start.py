"""Where a fused span's candidate starts (issue 9, kernel fusion): error of the span's output,
relative to the span's residual energy ‖y − x‖² (or ‖y‖² when the shape changes), on 64 images of
the run's eval split, for the span's blocks merged in parallel (`merge_parallel`), the first block
with the rest skipped, and fused ops inheriting the merge (`span_source`), before any training.

    .venv/bin/python benchmarks/probe_span_start.py [RUN_DIR]   (default runs/lite0_dev_small)
"""
import json
import sys
from pathlib import Path

import torch

from hant_trt.config import from_dict
from hant_trt.distill.capture import capture, module_slot_of, span_teacher
from hant_trt.distill.stage import data_splits
from hant_trt.ops import build
from hant_trt.ops.families.mbconv import merge_parallel
from hant_trt.teacher.stage import load_from_config

run = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/lite0_dev_small")
cfg = from_dict(json.loads((run / "run.json").read_text())["config"])
teacher, d = load_from_config(cfg)
ev = data_splits(cfg, teacher.data_config, train_augment=False).eval
xs = torch.stack([ev[i][0] for i in range(64)])
with torch.no_grad():
    acts, _ = capture(d, xs)
    for first, last in [(6, 7), (9, 10), (12, 13), (13, 14), (12, 14), (5, 6), (8, 9)]:
        x, y = acts[first], acts[last + 1]
        den = ((y - x) ** 2).mean() if x.shape == y.shape else (y ** 2).mean()
        rel = lambda o: round(float(((o - y) ** 2).mean() / den), 3)  # noqa: E731
        slot, t = module_slot_of(d.slots, first, last), span_teacher(d, first, last)
        row = {}
        merged = merge_parallel(list(t))
        if merged is not None:
            row.update(skip=rel(x), first_then_skip=rel(d.blocks[first](x)), merged=rel(merged(x)))
        for e in (3, 4, 6, 8):
            op = f"ir_k{slot.kernel}_e{e}_relu6"
            row[op] = rel(build(op, slot, t).eval()(x))
        print(f"{first}-{last}", row, flush=True)
