"""Top-1 of the teacher and of a built student on a labelled folder (the shared ImageNet sample's
holdout split), with the student's measured speedup from its build.

    .venv/bin/python benchmarks/eval_holdout.py RUN_DIR [--data ../shared/data/imagenet-sample/holdout] [--fp32]

Tune on dev, report on holdout: this script only evaluates, it never trains.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from hant_trt.student.finetune import agreement
from hant_trt.student.assemble import load_deployed, load_student
from hant_trt.data import FolderDataset, eval_transform, scan_folder
from hant_trt.teacher.load import load_teacher


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run_dir")
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared/data/imagenet-sample/holdout"))
    ap.add_argument("--fp32", action="store_true",
                    help="also the student with its int8 parts in float: what int8 costs it")
    a = ap.parse_args()
    run = Path(a.run_dir)
    student, spec = load_deployed(run / "student")   # int8 parts simulated as the build deployed them
    cfg = json.loads((run / "run.json").read_text())["config"]["teacher"]
    teacher = load_teacher(cfg["model"], cfg["weights"], cfg["resolution"])
    items, skipped, _ = scan_folder(a.data)
    loader = DataLoader(FolderDataset(items, eval_transform(teacher.data_config)), batch_size=50)
    with torch.no_grad():
        res = agreement(student, teacher.model, loader)
    build = json.loads((run / "build.json").read_text()) if (run / "build.json").exists() else {}
    print(f"{len(items)} images from {a.data}")
    print(f"teacher top-1 {res.get('teacher_top1', float('nan')):.1f} %, student top-1 "
          f"{res.get('student_top1', float('nan')):.1f} %, agreement {res['agreement']:.1f} %")
    if a.fp32:
        with torch.no_grad():
            float_res = agreement(load_student(run / "student")[0], teacher.model, loader)
        print(f"student top-1 with its int8 parts in float {float_res.get('student_top1', float('nan')):.1f} %")
    if build:
        print(f"measured on {build.get('backend')}: teacher {build['teacher_latency_ms']:.3f} ms, student "
              f"{build['student_latency_ms']:.3f} ms, speedup {build['speedup']:.2f}x")
    print("choices:", ", ".join(f"{c.first}{'-' + str(c.last) if c.last != c.first else ''}:{c.op}"
                                for c in spec.choices if c.op != "keep") or "all keep")


if __name__ == "__main__":
    main()
