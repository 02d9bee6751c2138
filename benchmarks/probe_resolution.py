"""Probe: the unchanged teacher at lower input resolutions — holdout top-1 and ORT CPU speed.

    .venv/bin/python benchmarks/probe_resolution.py --model efficientnet_lite1 --sizes 240,224,208,192
        [--holdout DIR] [--calib DIR] [--rounds 9] [--finetune STEPS [--lr 1e-4] [--ce-weight 0.5] [--train DIR]
        [--kd-model NAME --kd-weights W]] [--upsampled] [--out FILE.json]

Why: the first lever a deployment engineer tries is a smaller input, with no training at all. Its
speed beside its accuracy is the peer any "speed at the teacher's accuracy" has to be read
against, and it composes with what the search changes (hant-trt runs at any side from 32 px via
`teacher.resolution`; `build.teacher_resolution` fine-tunes the student from the teacher at its
own). Per size: the teacher exported as ONNX at that size (batch 1), in fp32 and as ONNX
Runtime's `quantize_static` (the peers benchmark's plain int8, calibrated on 64 images of `--calib`
at that size), top-1 on the holdout (timm's eval transform at that size: resize to
size / crop_pct, centre crop); every model timed beside the fp32 teacher at its own size in the same
rounds. Printed: top-1, speedup over the fp32 teacher and over plain int8 at the teacher's size.

`--finetune STEPS` adds the next peer, one that trains: at each smaller size a copy of the teacher
fine-tuned to that input (`finetune_at`: distilled from the teacher at its own size on the same
crops, all weights, BatchNorm frozen) on the train part of `--train` (the split phase 1 uses: 80 %
of the dev images, seed 0; never the holdout), then exported, quantized and timed like the others.
A network trained at one size sees objects smaller at a smaller input (Touvron et al., "Fixing the
train-test resolution discrepancy", 2019); a short fine-tune at the new size recovers part of it.
With `--kd-model` the fine-tune's logits come from that model instead (on the same crops at the
teacher's size, as `build.kd_model` gives a student's), and the first size is fine-tuned too: the
control for a student fine-tuned from a stronger model — what that model adds to the unchanged
teacher.

`--upsampled` answers which way a resize may go when the student runs at a smaller side than its
teacher (`build.teacher_resolution`): the fp32 teacher at the first size, fed each smaller size's
crops resized up to it (bilinear and bicubic, antialiased), beside the same crops at their own size.
If the upsampled crops score below the small ones, the teacher's targets must come from the photo at
the larger side and the student's input be resized down, as `student_view` does.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA = ROOT.parent / "shared" / "data" / "imagenet-sample"


def finetune_at(teacher: torch.nn.Module, train_set, size: int, steps: int, lr: float, batch_size: int = 16,
                seed: int = 0, ce_weight: float = 0.5, logits_from: torch.nn.Module | None = None) -> torch.nn.Module:
    """A copy of `teacher` fine-tuned for `size` px inputs: each step's crops (at the teacher's own
    size, from `train_set`) go to the teacher as they are and to the copy resized to `size`; the loss
    is the fine-tune's (`kd_loss`: KL to the teacher's logits + `ce_weight` × CE on labels). All
    weights train, BatchNorm keeps the teacher's statistics (batches of 16 are noisier than those).
    logits_from: the targets' model instead of the teacher (`--kd-model`)."""
    import copy

    import torch.nn.functional as F

    from hant_trt.progress import progress
    from hant_trt.student.finetune import kd_loss
    from hant_trt.training import adamw, labelled_batch_for_step, lr_at, set_train_mode

    student = copy.deepcopy(teacher)
    set_train_mode(student, "frozen")
    opt = adamw(list(student.parameters()), lr)
    with progress(steps, desc=f"fine-tune at {size} px") as bar:
        for step in range(steps):
            x, y = labelled_batch_for_step(train_set, step, batch_size, seed)
            with torch.no_grad():
                target = (teacher if logits_from is None else logits_from)(x)
            small = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
            for g in opt.param_groups:
                g["lr"] = lr_at(step, steps, lr, warmup=10)
            loss = kd_loss(student(small), target, y, ce_weight=ce_weight)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            bar.update()
            bar.set_postfix(loss=f"{loss.item():.3f}")
    return student.eval()


def upsampled(batches: list, side: int, mode: str) -> list:
    """`batches` ((images, labels) of numpy arrays, as `holdout_batches` gives) resized to `side`."""
    import torch.nn.functional as F

    return [(F.interpolate(torch.from_numpy(x), size=(side, side), mode=mode, antialias=True,
                           align_corners=False).numpy(), y) for x, y in batches]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="efficientnet_lite0")
    ap.add_argument("--weights", default="default")
    ap.add_argument("--sizes", default="224,208,192", help="input sides; the first is the reference")
    ap.add_argument("--holdout", default=str(DATA / "holdout"))
    ap.add_argument("--calib", default=str(DATA / "dev"), help="images int8 is calibrated on (64 of them)")
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--seconds", type=float, default=0.4, help="timing per model per round")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default=None, help="write the figures as JSON here")
    ap.add_argument("--finetune", type=int, default=0, metavar="STEPS",
                    help="also a copy of the teacher fine-tuned this many steps at each smaller size")
    ap.add_argument("--lr", type=float, default=1e-4, help="the fine-tune's peak learning rate")
    ap.add_argument("--ce-weight", type=float, default=0.5, help="the fine-tune's weight of the label "
                                                                    "cross-entropy (the build's build.ce_weight)")
    ap.add_argument("--train", default=str(DATA / "dev"), help="images the fine-tune trains on (its 80 %% split)")
    ap.add_argument("--kd-model", default=None, help="the fine-tune's logits from this model (and the first size "
                                                      "fine-tuned too), e.g. efficientnet_lite1")
    ap.add_argument("--kd-weights", default="default", help="its weights, as --weights takes them")
    ap.add_argument("--upsampled", action="store_true",
                    help="also the fp32 teacher on each smaller size's crops resized up to the first size")
    a = ap.parse_args()
    from peers import cpu_name, holdout_batches, onnx_logits, ort_ptq

    from hant_trt.latency.backends import get_backend
    from hant_trt.latency.export import export_onnx
    from hant_trt.latency.paired import time_beside
    from hant_trt.teacher.load import load_teacher

    sizes = [int(s) for s in a.sizes.split(",")]
    teacher = load_teacher(a.model, a.weights)
    if a.threads:
        torch.set_num_threads(a.threads)
    train_set = None
    if a.finetune:
        from hant_trt.data import make_splits

        train_set = make_splits(a.train, None, teacher.data_config, eval_fraction=0.2, seed=0).train
    kd = None
    if a.kd_model:
        if not a.finetune:
            ap.error("--kd-model is the fine-tune's: give --finetune STEPS")
        from hant_trt.config import RunConfig
        from hant_trt.errors import UserError
        from hant_trt.student.stage import kd_logits_model

        kcfg = RunConfig()
        kcfg.build.kd_model, kcfg.build.kd_weights = a.kd_model, a.kd_weights
        try:        # the build's own loader and checks (same normalisation, same classes)
            kd = kd_logits_model(kcfg, teacher.data_config)
        except UserError as exc:
            ap.error(str(exc))
    work = Path(tempfile.mkdtemp(prefix="probe_res_"))
    files, rows, keys = {}, [], []
    for s in sizes:
        dc = {**teacher.data_config, "input_size": (3, s, s)}
        calib = [x for x, _ in holdout_batches(a.calib, dc, batch=64, limit=64)]
        batches = holdout_batches(a.holdout, dc)
        y = np.concatenate([b[1] for b in batches])
        models = [("", teacher.model)]
        if train_set is not None and (s < sizes[0] or kd is not None):
            tag = f"ft{a.finetune}" + (f" from {a.kd_model}" if kd is not None else "")
            models.append((tag, finetune_at(teacher.model, train_set, s, a.finetune, a.lr, ce_weight=a.ce_weight,
                                                  logits_from=kd)))
        for tag, model in models:
            fp32 = export_onnx(model, (1, 3, s, s), work / f"fp32_{s}{tag.replace(' ', '_')}.onnx")
            int8 = ort_ptq(fp32, calib, work / f"int8_{s}{tag.replace(' ', '_')}.onnx")
            for prec, path in (("fp32", fp32), ("int8", int8)):
                top1 = float((onnx_logits(path, batches).argmax(1) == y).mean() * 100)
                files[(s, prec, tag)] = path
                keys.append((s, prec, tag))
                rows.append({"size": s, "precision": prec, "trained": tag or "no", "top1": round(top1, 1),
                             "images": len(y)})
                print(f"{s} px {prec} {tag or 'as trained'}: top-1 {top1:.1f} on {len(y)} images", flush=True)
    ups = []
    if a.upsampled:
        for s in sizes[1:]:
            batches = holdout_batches(a.holdout, {**teacher.data_config, "input_size": (3, s, s)})
            y = np.concatenate([b[1] for b in batches])
            for mode in ("bilinear", "bicubic"):
                top1 = float((onnx_logits(files[(sizes[0], "fp32", "")], upsampled(batches, sizes[0], mode))
                              .argmax(1) == y).mean() * 100)
                ups.append({"size": s, "upsampled_to": sizes[0], "resize": mode, "top1": round(top1, 1),
                            "images": len(y)})
                print(f"{s} px crops resized ({mode}) to {sizes[0]} px, fp32 teacher: top-1 {top1:.1f}", flush=True)
    backend = get_backend("ort", threads=a.threads)
    ref = backend.prepare(str(files[(sizes[0], "fp32", "")]))
    pairs = time_beside(backend, ref, [backend.prepare(str(files[k])) for k in keys], a.rounds, max_seconds=a.seconds)
    for r, model in zip(rows, pairs):
        r["speedup"] = round(statistics.median(t / m for t, m in model), 3)
        r["ms"] = round(statistics.median(m for _, m in model) * 1e3, 3)
    int8_ref = next(r for r in rows if r["size"] == sizes[0] and r["precision"] == "int8" and r["trained"] == "no")
    top_ref = next(r for r in rows if r["size"] == sizes[0] and r["precision"] == "fp32" and r["trained"] == "no")["top1"]
    print(f"\n{a.model}, ONNX Runtime CPU, {cpu_name()}, {a.rounds} rounds; teacher fp32 at {sizes[0]} px "
          f"= 1.00x, top-1 {top_ref}")
    print("| size | precision | fine-tuned | top-1 | − teacher | ms | speedup | over plain int8 at the teacher's size |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        r["over_int8"] = round(r["speedup"] / int8_ref["speedup"], 3)
        print(f"| {r['size']} | {r['precision']} | {r['trained']} | {r['top1']} | {r['top1'] - top_ref:+.1f} | {r['ms']} | "
              f"{r['speedup']:.2f}x | {r['over_int8']:.2f}x |")
    if a.out:
        from hant_trt import atomic

        atomic.write_json(Path(a.out), {"model": a.model, "cpu": cpu_name(), "rounds": a.rounds,
                                        "finetune_steps": a.finetune, "lr": a.lr, "ce_weight": a.ce_weight,
                                        "kd_model": a.kd_model, "rows": rows,
                                        "upsampled": ups})


if __name__ == "__main__":
    main()
