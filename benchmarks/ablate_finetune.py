"""Fine-tune ablation: one student chosen by the search at a predicted speedup, fine-tuned
under several settings; agreement and top-1 on the run's eval split (a held-out part of dev).

    .venv/bin/python benchmarks/ablate_finetune.py RUN_DIR [--speedup 1.3] [--metric agreement]
        [--variants base,lr3e-4,feat0,steps300,res224,bnall]

A variant is a comma-free name; its settings are in VARIANTS below (steps, lr, feature weight,
BatchNorm mode, fine-tune resolution, BN re-estimation after).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from quality_lite0 import Bench  # noqa: E402

from hant_trt.student.assemble import Choice  # noqa: E402
from hant_trt.student.finetune import agreement, eval_objective, finetune, finetune_rejected  # noqa: E402
from hant_trt.student.stage import recalibrate, trainable_parts  # noqa: E402
from hant_trt.data import data_splits  # noqa: E402
from hant_trt.rundir import RunDir  # noqa: E402
from hant_trt.search.stage import pose, solve_posed  # noqa: E402

BASE = dict(steps=100, lr=1e-4, feature_weight=1.0, bn="frozen", res="distill", recal="none", mixup=0.0,
            ce=0.5, train="all")
VARIANTS = {
    "base": {},
    "lr3e-4": dict(lr=3e-4),
    "lr1e-3": dict(lr=1e-3),
    "feat0": dict(feature_weight=0.0),
    "feat3": dict(feature_weight=3.0),
    "bntrain": dict(bn="train"),
    "steps300": dict(steps=300),
    "steps300lr3e-4": dict(steps=300, lr=3e-4),
    "res224": dict(res="deploy"),
    "recal_replaced": dict(recal="replaced"),
    "recal_all": dict(recal="all"),
    "mixup0.4": dict(mixup=0.4),
    "mixup1": dict(mixup=1.0),
    "steps300mixup1": dict(steps=300, mixup=1.0),
    "steps300mixup1lr3e-4": dict(steps=300, mixup=1.0, lr=3e-4),
    "steps300ce0": dict(steps=300, ce=0.0),
    "steps300replaced": dict(steps=300, train="replaced"),
    "steps300replacedce0": dict(steps=300, train="replaced", ce=0.0),
    "steps300replacedmixup1": dict(steps=300, train="replaced", mixup=1.0),
    "steps300replacedmixup1lr3e-4": dict(steps=300, train="replaced", mixup=1.0, lr=3e-4),
    "steps300replacedlr3e-4": dict(steps=300, train="replaced", lr=3e-4),
    "steps600replaced": dict(steps=600, train="replaced"),
    "steps600replacedlr3e-4": dict(steps=600, train="replaced", lr=3e-4),
    "steps300adjacent": dict(steps=300, train="adjacent"),
    "steps1200replacedlr3e-4": dict(steps=1200, train="replaced", lr=3e-4),
    "steps1200replacedmixup1lr3e-4": dict(steps=1200, train="replaced", lr=3e-4, mixup=1.0),
    "steps2400replacedlr3e-4": dict(steps=2400, train="replaced", lr=3e-4),
    "steps1200skipadjlr3e-4": dict(steps=1200, train="skipadj", lr=3e-4),
    "steps1200alllr3e-4": dict(steps=1200, train="all", lr=3e-4),
    "steps1200replacedlr3e-4res224": dict(steps=1200, train="replaced", lr=3e-4, res="deploy"),
}


def trainable(m, choices: list[Choice], which: str):
    """The build's `build.train` values, plus two experiments: adjacent (the replaced parts and the
    kept parts next to them; measured worse than replaced at 1.55x) and skipadj (the replaced parts
    and the kept parts next to a `skip`: a skip has nothing to train, so its error can only be
    absorbed by a neighbour)."""
    if which not in ("adjacent", "skipadj"):
        return trainable_parts(m, choices, which)
    rep = [c.op != "keep" for c in choices]
    src = rep if which == "adjacent" else [c.op == "skip" for c in choices]
    rep = [r or (i > 0 and src[i - 1]) or (i + 1 < len(src) and src[i + 1]) for i, r in enumerate(rep)]
    return [p for p, r in zip(m.parts, rep) if r]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run_dir")
    ap.add_argument("--speedup", type=float, default=1.3)
    ap.add_argument("--metric", default="agreement")
    ap.add_argument("--variants", default="base,lr3e-4,feat0,steps300,res224,recal_replaced")
    ap.add_argument("--holdout", default=None, help="labelled folder to also report on (never to choose by)")
    ap.add_argument("--measure", type=int, default=0,
                    help="time the student beside the teacher in N paired rounds (ORT CPU) before fine-tuning")
    a = ap.parse_args()
    run = Path(a.run_dir)
    b = Bench(run, run / "quality", 0, None, 2, holdout=a.holdout)
    b.cfg.search.budget, b.cfg.search.metric, b.cfg.search.devices = f"speedup={a.speedup}", a.metric, [b.device]
    rd = RunDir(run, create=False)
    sol, _ = solve_posed(rd, b.cfg, pose(rd, b.cfg))        # as the search stage solves it
    choices = sorted((Choice(o.first, o.last, o.op) for o in sol.choices), key=lambda c: c.first)
    print("replaced:", ", ".join(f"{c.first}:{c.op}" for c in choices if c.op != "keep"))
    assembled = b.evaluate(b.student(choices))
    print(f"assembled: {assembled}", flush=True)
    if a.measure:
        lat = b.measure({"student": b.student(choices, trained=False)}, rounds=a.measure)
        print(f"measured: student {lat['student']:.3f} ms, teacher {lat['teacher']:.3f} ms = "
              f"{lat['teacher'] / lat['student']:.2f}x ({a.measure} paired rounds)", flush=True)
    full = data_splits(b.cfg, b.teacher.data_config).train
    for name in a.variants.split(","):
        v = {**BASE, **VARIANTS[name]}
        m = b.student(choices)
        finetune(m, b.teacher.model, full if v["res"] == "deploy" else b.train, v["steps"],
                 b.cfg.build.batch_size, v["lr"], b.tmp / f"abl_{name}", seed=0, fingerprint=name,
                 decomposition=b.d, boundaries=[c.last + 1 for c in choices],
                 feature_weight=v["feature_weight"], bn=v["bn"], mixup=v["mixup"], ce_weight=v["ce"],
                 trainable=trainable(m, choices, v["train"]))
        recalibrate(m, choices, b.bn_batches, v["recal"])
        r = b.evaluate(m)
        worse = finetune_rejected(assembled, r, b.cfg.build.ce_weight)
        print(f"{name:<16} eval objective {eval_objective(r, b.cfg.build.ce_weight):.3f} "
              f"(assembled {eval_objective(assembled, b.cfg.build.ce_weight):.3f}{'; keep_best would ship the assembled weights' if worse else ''})")
        print(f"{name:<16} agreement {r['agreement']:.1f}%  KL {r['kl']:.3f}  top-1 {r.get('student_top1', float('nan')):.1f} "
              f"(teacher {r.get('teacher_top1', float('nan')):.1f})  {v}", flush=True)
        if b.holdout_loader is not None:
            h = agreement(m, b.teacher.model, b.holdout_loader)
            print(f"{'':<16} holdout: agreement {h['agreement']:.1f}%  KL {h['kl']:.3f}  top-1 {h['student_top1']:.1f} "
                  f"(teacher {h['teacher_top1']:.1f})", flush=True)


if __name__ == "__main__":
    main()
