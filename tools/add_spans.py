"""Kernel fusion added to a finished run: distil only the fused-span candidates (one op replacing
`--spans` consecutive blocks, `distill.spans`) into a copy of SRC_RUN, reusing its distilled
single-slot candidates, so the ablation "with vs without fusion" costs the spans' training alone.

The copy is what `distill.spans = N` would have produced: the single-slot jobs, their data and
their seeds do not depend on the spans (each candidate trains alone on the shared teacher pass),
so the copied slot files are theirs. Score, profile and search then run on DST_RUN as usual:

    .venv/bin/python tools/add_spans.py runs/lite0_dev_small runs/lite0_dev_small_spans --spans 2
    .venv/bin/hant-trt score runs/lite0_dev_small_spans
    HANT_TRT_LUT=runs/lut_small.sqlite .venv/bin/hant-trt profile runs/lite0_dev_small_spans

Spans distilled longer than the run's single slots (what a span replacing two blocks has to learn
is more than one slimmer block): `--set distill.steps=1440 --set distill.full_res_steps=360`, and
`--slots 2,3,4,5` to train only the spans inside those slots, `--ops es,es_k5` only those ops. With DST_RUN a copy of a run that has
spans already, the spans trained here replace its files of the same spans and the others stay.

Resumable: a kill leaves a checkpoint under DST_RUN/spans_work; run the same command again.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from hant_trt.commands import apply_overrides
from hant_trt.config import from_dict
from hant_trt.errors import UserError
from hant_trt.distill.extend import copy_distilled
from hant_trt.distill.stage import distill_fingerprint, distill_sets
from hant_trt.distill.train import distill
from hant_trt.rundir import RunDir
from hant_trt.runfiles import CANDIDATES
from hant_trt.teacher.stage import load_from_config


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("src")
    ap.add_argument("dst")
    ap.add_argument("--spans", type=int, default=2)
    ap.add_argument("--slots", default=None, help="comma-separated slot indices: spans inside them only")
    ap.add_argument("--ops", default=None, help="comma-separated op strings: only these span ops (e.g. es,es_k5)")
    ap.add_argument("--set", action="append", default=[], metavar="distill.KEY=VALUE",
                    help="distillation setting of the spans (e.g. distill.steps=1440), repeatable")
    a = ap.parse_args()
    if any(not kv.startswith("distill.") for kv in a.set):
        print("error: --set takes distill.KEY=VALUE only", file=sys.stderr)
        return 2
    src, dst = Path(a.src), Path(a.dst)
    src_run = RunDir(src, create=False)
    if src_run.stage("distill").status != "done":
        print(f"error: {src} has no finished distill stage", file=sys.stderr)
        return 2
    cfg = from_dict(src_run.manifest()["config"])
    if cfg.distill.spans >= a.spans:
        print(f"error: {src} already has spans of up to {cfg.distill.spans} slots", file=sys.stderr)
        return 2
    cand = dst / CANDIDATES
    copy_distilled(src, dst)
    run = RunDir(dst, create=False)
    cfg.distill.spans = a.spans
    only_ops = None
    try:
        if a.ops:
            from hant_trt.ops import canonical
            only_ops = {canonical(o.strip()) for o in a.ops.split(",") if o.strip()}
        if a.slots:
            cfg.distill.slots = [int(x) for x in a.slots.split(",")]
        apply_overrides(cfg, a.set)
    except (UserError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    cfg.run_dir = str(dst)
    run.update(config=cfg.to_dict())
    fp = distill_fingerprint(cfg)
    if run.is_done("distill", fp):
        print(f"{dst}: spans already distilled")
        return 0
    run.invalidate_from("distill")
    run.set_stage("distill", "running", fp)
    teacher, d = load_from_config(cfg)
    sets = distill_sets(cfg, teacher.data_config)
    work = dst / "spans_work"
    resume = (work / "ckpt").exists()
    summary = distill(d, sets.train, sets.eval, cfg.distill, work, fp, resume=resume,
                      bn_set=sets.bn, full_set=sets.full, only_spans=True, only_ops=only_ops)
    for f in work.glob("slot*"):
        os.replace(f, cand / f.name)
    singles = sum(len(json.loads(p.read_text())["candidates"]) for p in cand.glob("slot*.json")
                  if "-" not in p.stem)
    info = {"candidates": singles + summary["candidates"], "steps": summary["steps"],
            "seconds": summary["seconds"], "data": sets.description,
            "note": f"single-slot candidates copied from {src}; spans distilled by tools/add_spans.py"
                    + (f" ({' '.join(a.set)}; single slots at {src}'s settings)" if a.set else "")
                    + (f"; ops {a.ops} only" if a.ops else "")}
    run.set_stage("distill", "done", fp, info)
    print(json.dumps({"span_candidates": summary["candidates"], "seconds": summary["seconds"]}))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
