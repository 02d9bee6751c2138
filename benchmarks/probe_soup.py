"""Probe: does the average of several fine-tunes of one pick (a uniform model soup) beat them?

    .venv/bin/python benchmarks/probe_soup.py STUDENT_RUN STUDENT_RUN [...] [--data HOLDOUT]
    .venv/bin/python benchmarks/probe_soup.py --ingredients SOUP_RUN [--data HOLDOUT]

First form: earlier builds of one pick (e.g. at `build.seed` 0 and 1 by `benchmarks/peers.py
--picks`), their saved students averaged. Second form: a build made with `build.soup = N`, its
ingredients read back from the fine-tune's last checkpoints (`student/ckpt/`, `ckpt/soup1/`, ...).
Each ingredient and their average get their int8 parts calibrated as the build calibrates them
(the run's training images, `profile.calib_images`) and simulated; printed: top-1 and agreement
with the teacher on the holdout, KL on the run's eval split, the fp32 soup's top-1 too. Tune on
dev, report on holdout: this script only evaluates.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from torch.utils.data import DataLoader

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hant_trt import config  # noqa: E402
from hant_trt.data import FolderDataset, eval_transform, scan_folder  # noqa: E402
from hant_trt.student.assemble import load_student  # noqa: E402
from hant_trt.student.finetune import agreement  # noqa: E402
from hant_trt.student.stage import average_states, build_data, ingredient_dir, int8_plan  # noqa: E402
from hant_trt.teacher.load import load_teacher  # noqa: E402


def checkpoint_states(run: Path, spec) -> list[tuple[str, dict]]:
    """(label, weights) of a soup build's ingredients: the last checkpoint of each fine-tune."""
    seeds = spec.notes.get("finetune", {}).get("soup", {}).get("seeds", [])
    if len(seeds) < 2:
        raise SystemExit(f"{run}: one fine-tune only, no soup to compare")
    ckpt = run / "student" / "ckpt"
    dirs = [ingredient_dir(ckpt, k) for k in range(len(seeds))]
    out = []
    for folder in dirs:
        if (folder / "polish").is_dir():
            folder = folder / "polish"          # the fine-tune went on into `build.polish_steps`
        last = sorted(folder.glob("ft.s*.pt"))
        if not last:
            raise SystemExit(f"{folder}: no fine-tune checkpoint (a build with build.soup >= 2 keeps them)")
        blob = torch.load(last[-1], map_location="cpu", weights_only=True)
        # saved while `build.qat`'s roundings were attached: a weight parametrized, its float original kept
        weights = {k.replace(".parametrizations.weight.original", ".weight"): v for k, v in blob["model"].items()}
        out.append((f"{folder.relative_to(run)} ({last[-1].name})", weights))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("runs", nargs="*", help="built students of one pick (their run folders)")
    ap.add_argument("--ingredients", metavar="SOUP_RUN", help="a build with build.soup >= 2")
    ap.add_argument("--data", default=str(ROOT.parent / "shared/data/imagenet-sample/holdout"))
    a = ap.parse_args()
    if bool(a.runs) == bool(a.ingredients) or (a.runs and len(a.runs) < 2):
        ap.error("give two or more student runs, or --ingredients SOUP_RUN")
    first = Path(a.ingredients or a.runs[0])
    cfg = config.from_dict(json.loads((first / "run.json").read_text())["config"])
    solution = json.loads((first / "solution.json").read_text())
    fixed = {f["part"]: f["precision"] for f in solution.get("fixed_parts") or []}
    teacher = load_teacher(cfg.teacher.model, cfg.teacher.weights, cfg.teacher.resolution)
    items, _, _ = scan_folder(a.data)
    holdout = DataLoader(FolderDataset(items, eval_transform(teacher.data_config)), batch_size=50)
    dev = build_data(cfg, teacher.data_config)
    student, spec = load_student(first / "student")
    if a.ingredients:
        states = checkpoint_states(first, spec)
    else:
        states = [(r, load_student(Path(r) / "student")[0].state_dict()) for r in a.runs]
        for r in a.runs[1:]:
            other = load_student(Path(r) / "student")[1]
            if [(c.first, c.last, c.op) for c in other.choices] != [(c.first, c.last, c.op) for c in spec.choices]:
                raise SystemExit(f"{r} is another pick than {a.runs[0]}: nothing to average")

    def report(label: str, weights: dict, fp32_too: bool = False) -> float:
        student.load_state_dict(weights)
        _, deployed, _ = int8_plan(student, spec.choices, dev.deploy_train, cfg, fixed)
        with torch.no_grad():
            h = agreement(deployed, teacher.model, holdout)
            e = agreement(deployed, teacher.model, dev.eval_loader, dev.eval_side)
            f = agreement(student, teacher.model, holdout) if fp32_too else None
        print(f"{label}: holdout top-1 {h['student_top1']:.1f} (teacher {h['teacher_top1']:.1f}), agreement "
              f"{h['agreement']:.1f}; eval split KL {e['kl']:.3f}"
              + (f"; fp32 holdout top-1 {f['student_top1']:.1f}" if f else ""), flush=True)
        return h["student_top1"]

    alone = [report(label, w) for label, w in states]
    soup = report(f"soup of {len(states)}", average_states([w for _, w in states]), fp32_too=True)
    print(f"soup − mean of its ingredients: {soup - sum(alone) / len(alone):+.1f} points; − best: {soup - max(alone):+.1f}")


if __name__ == "__main__":
    main()
