"""The control for a student fine-tuned on labels: the teacher's own blocks, trained at the
positions the student replaced, with the student's exact fine-tune (same loss — KD, features,
`build.ce_weight` × CE —, steps, lr, data, seed), then int8 like the student. Same trainable
positions, same training; only the operations differ. What the student gains over the teacher
that this control gains too comes from the labels, not from the changed operations.

    .venv/bin/python benchmarks/label_control.py STUDENT_COPY_DIR [--holdout ../shared/data/imagenet-sample/holdout]

STUDENT_COPY_DIR: a built run (e.g. a peers student `runs/peers14_lite1_ce2/students/i1.30`):
its solution.json says which positions were replaced, its run.json the fine-tune. Prints both
models' holdout top-1 (int8 simulated in PyTorch, as `eval_holdout.py`) with paired 95 % intervals
against the teacher. Trains on dev only; holdout is only evaluated.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

ROOT = Path(__file__).resolve().parents[1]


def _peers():
    spec = importlib.util.spec_from_file_location("peers", ROOT / "benchmarks/peers.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@torch.no_grad()
def correct_of(model, loader) -> np.ndarray:
    model.eval()
    return np.concatenate([(model(x).argmax(1) == y).numpy() for x, y in loader])


def main() -> None:
    from hant_trt.config import from_dict
    from hant_trt.data import FolderDataset, data_splits, eval_transform, scan_folder
    from hant_trt.student.assemble import Choice, assemble, load_deployed
    from hant_trt.student.stage import finetune_student, full_res_set, int8_plan
    from hant_trt.teacher.stage import load_from_config

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run_dir")
    ap.add_argument("--holdout", default=str(ROOT.parent / "shared/data/imagenet-sample/holdout"))
    a = ap.parse_args()
    torch.set_num_threads(2)
    run = Path(a.run_dir)
    cfg = from_dict(json.loads((run / "run.json").read_text())["config"])
    teacher, d = load_from_config(cfg)
    sol = json.loads((run / "solution.json").read_text())
    replaced = sorted({i for c in sol["choices"] if c["op"] != "keep" for i in range(c["first"], c["last"] + 1)})
    # the teacher, every slot its own block at the student's precision
    prec = {i: c.get("precision", "fp32") for c in sol["choices"] for i in range(c["first"], c["last"] + 1)}
    choices = [Choice(i, i, "keep", prec.get(i, "fp32")) for i in range(len(d.slots))]
    control = assemble(d, choices, {})
    trainable = [control.parts[i] for i in replaced]
    splits = data_splits(cfg, teacher.data_config, train_resolution=cfg.distill.resolution)
    ckpt = run / "label_control_ckpt"
    fp = json.dumps({"replaced": replaced, "build": vars(cfg.build)}, sort_keys=True, default=str)
    info = finetune_student(control, teacher.model, d, choices, splits.train, cfg, ckpt, fp, trainable=trainable,
                            full_set=full_res_set(cfg, teacher.data_config))
    fixed = {f["part"]: f["precision"] for f in sol.get("fixed_parts") or []}
    deploy_train = data_splits(cfg, teacher.data_config, train_augment=False).train
    _, deployed, _ = int8_plan(control, choices, deploy_train, cfg, fixed, cache_dir=run / "calib")
    student, _ = load_deployed(run / "student")
    items, _, _ = scan_folder(a.holdout)
    loader = DataLoader(FolderDataset(items, eval_transform(teacher.data_config)), batch_size=50)
    t = correct_of(teacher.model, loader)
    paired = _peers().paired_delta
    print(f"{run}: positions replaced {replaced}; fine-tune {info.get('steps')} steps, "
          f"build.ce_weight {cfg.build.ce_weight}")
    print(f"teacher top-1 {100 * t.mean():.1f} % on {len(t)} holdout images")
    for name, model in (("student (changed operations)", student), ("control (teacher's blocks, same fine-tune)", deployed)):
        c = correct_of(model, loader)
        p = paired(c, t)
        lo, hi = p["top1_delta_ci95"]
        print(f"{name:<44} top-1 {100 * c.mean():5.1f} %  ({p['top1_delta']:+.1f}, 95 % [{lo:+.1f}, {hi:+.1f}])", flush=True)


if __name__ == "__main__":
    main()
