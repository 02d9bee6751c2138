"""End-to-end fine-tune of the assembled student: distillation from the teacher's logits (plus
cross-entropy when labels exist) and, at every part boundary, from the teacher's feature maps.

The feature term is what makes composition work with a few hundred images: each part learns to
map the *student's* (already perturbed) input to the teacher's output at that boundary, so the
error that compounds through a chain of distilled candidates is trained away, and the teacher's
features regularise far more than 1000 logits can. BatchNorm stays frozen (running statistics of
the teacher or of phase 1): batch statistics of 16 images are noisier than those. The build trains
only the replaced parts (`build.train`): the teacher's own blocks are exact already, and training
them on a few hundred images moves the student away from the teacher (docs/RESULTS.md).

Resumable: model + optimizer + step checkpointed atomically; batches are seeded by (seed, step)
like phase 1."""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .. import atomic
from ..progress import progress
from ..teacher.capture import capture, normalised_mse
from ..training import adamw, autocast_of, estimate_bn, labelled_batch_for_step, lr_at, set_train_mode


def kd_loss(student_logits, teacher_logits, labels=None, temperature: float = 1.0, ce_weight: float = 0.5,
            mixed: tuple[torch.Tensor, torch.Tensor] | None = None):
    """KL(teacher || student) at `temperature`, plus weighted CE on labelled samples (label >= 0).
    mixed: (perm, lam) of a mixed batch (`mix_batch`): each image's CE is lam × CE(its label) +
    (1 − lam) × CE(the label of the image mixed in), on images where both are labelled."""
    t = temperature
    loss = F.kl_div(F.log_softmax(student_logits / t, 1), F.log_softmax(teacher_logits / t, 1),
                    log_target=True, reduction="batchmean") * t * t
    if labels is None:
        return loss
    mask = labels >= 0
    if mixed is not None:
        perm, lam = mixed
        mask = mask & (labels[perm] >= 0)
    if mask.any():
        ce = F.cross_entropy(student_logits, labels.clamp(min=0), reduction="none")
        if mixed is not None:
            ce = lam * ce + (1 - lam) * F.cross_entropy(student_logits, labels[perm].clamp(min=0), reduction="none")
        loss = loss + ce_weight * ce[mask].mean()
    return loss


def mix_batch(x: torch.Tensor, alpha: float, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x mixed with a seeded permutation of itself, perm, lam): one Beta(alpha, alpha) weight per
    image (drawn as a ratio of seeded gammas, so a resumed fine-tune sees the same batches)."""
    g = torch.Generator().manual_seed(seed)
    a = torch._standard_gamma(torch.full((x.shape[0],), float(alpha)), generator=g)
    b = torch._standard_gamma(torch.full((x.shape[0],), float(alpha)), generator=g)
    lam = a / (a + b)
    perm = torch.randperm(x.shape[0], generator=g)
    return lam.view(-1, 1, 1, 1) * x + (1 - lam.view(-1, 1, 1, 1)) * x[perm], perm, lam


def student_features(student: nn.Module, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
    """(outputs of every part, logits) of a Student (stem → parts → head)."""
    h = student.stem(x)
    feats = []
    for p in student.parts:
        h = p(h)
        feats.append(h)
    return feats, student.head(h)


def student_view(x: torch.Tensor, side: int | None) -> torch.Tensor:
    """The student's input from the teacher's: the same crops at `side` px, antialiased as a resize
    of the photo is (x itself when `side` is None or already x's). Not the other way round: the
    teacher on 208 px crops upsampled to 224 lost 1.6 holdout points (Lite0, bicubic; 3.8 bilinear)
    against 0.8 at 208 as they are, so the larger side has to come from the photo."""
    if side is None or x.shape[-1] == side:
        return x
    return F.interpolate(x, size=(side, side), mode="bilinear", antialias=True, align_corners=False)


def finetune(student: nn.Module, teacher: nn.Module, train_set, steps: int, batch_size: int, lr: float,
             ckpt_dir: Path, seed: int = 0, fingerprint: str = "", warmup: int = 5,
             checkpoint_every: int = 25, decomposition=None, boundaries: list[int] | None = None,
             feature_weight: float = 1.0, bn: str = "frozen", mixup: float = 0.0, ce_weight: float = 0.5,
             trainable: list[nn.Module] | None = None, ema: float = 0.0,
             full_set=None, full_from: int | None = None, device: str | torch.device = "cpu",
             sides: tuple[int, int] | None = None, logits_teacher: nn.Module | None = None) -> dict:
    """Fine-tune `student` in place; resumes from `ckpt_dir` when it holds the same fingerprint.

    decomposition + boundaries: the teacher's Decomposition and, per student part, the index of the
    teacher activation it must reproduce (`choice.last + 1`); with both and feature_weight > 0 the
    loss adds feature_weight × mean normalised MSE over the boundaries. bn: "frozen" or "train".
    mixup: alpha of a Beta(alpha, alpha) mix of each batch with a shuffled copy of itself (0: off).
    Teacher and student see the same mixed image ("function matching"): every step shows new
    inputs, which is what a few hundred images lack; the label term mixes both images' labels
    by the same weight.
    ce_weight: weight of the label cross-entropy (on labelled images). trainable: only these
    modules' parameters are trained (e.g. the replaced parts; None: the whole student).
    ema: decay of an exponential moving average of the trained weights, which replace them at the
    end (0: off); the decay ramps up as (1 + step) / (10 + step) so early steps do not dominate.
    Averaging the last few hundred steps' weights is what keeps a student from fitting the last
    batches of a few hundred images.
    full_set, full_from: steps from `full_from` on take their batches from `full_set` (training
    images at the deploy resolution) instead of `train_set`.
    sides: (before full_from, from it on) the student's input side when the batches come at the
    teacher's own (`build.teacher_resolution`): the teacher's logits are taken on them as they are,
    the student and the feature-map targets on `student_view`s of them.
    logits_teacher: the logits the student learns come from this model (on the teacher's images)
    instead of the teacher (`build.kd_model`); the feature-map targets stay the teacher's.
    device: where to train; on CUDA in mixed precision (bf16 autocast, or fp16 with gradient scaling
    on GPUs without bf16). Student
    and teacher are back on the CPU when it returns.
    """
    use_feats = decomposition is not None and boundaries is not None and feature_weight > 0
    if use_feats and len(boundaries) != len(student.parts):
        raise ValueError(f"{len(boundaries)} boundaries for {len(student.parts)} student parts")
    params = {id(p): p for m in (trainable if trainable is not None else [student]) for p in m.parameters()
              if p.requires_grad}
    if not params:
        return {"steps": 0, "skipped": "nothing to train"}
    dev = torch.device(device)
    amp, amp_dtype = autocast_of(dev)
    logits_from = teacher if logits_teacher is None else logits_teacher
    for m in (m for m in (teacher, logits_teacher) if m is not None):
        m.eval()
        for p in m.parameters():
            p.requires_grad_(False)
    moved = ([student, teacher] + ([logits_teacher] if logits_teacher is not None else [])
             + ([decomposition.stem, decomposition.head, *decomposition.blocks] if use_feats else []))
    for m in moved:
        m.to(dev)
    frozen = [p for p in student.parameters() if p.requires_grad and id(p) not in params]
    try:
        scaler = torch.amp.GradScaler("cuda", enabled=amp and amp_dtype == torch.float16)
        for p in frozen:
            p.requires_grad_(False)     # no weight gradients for them; inputs' gradients still flow through
        opt = adamw(list(params.values()), lr, weight_decay=1e-5)
        ckpt_dir = Path(ckpt_dir)
        state_p = ckpt_dir / "state.json"
        start = 0
        resumed_ema = None
        if state_p.exists():
            st = json.loads(state_p.read_text())
            if st.get("fingerprint") == fingerprint:
                blob = torch.load(ckpt_dir / f"ft.s{st['step']:07d}.pt", map_location="cpu", weights_only=True)
                student.load_state_dict(blob["model"])
                opt.load_state_dict(blob["opt"])
                if scaler.is_enabled() and blob.get("scaler"):
                    scaler.load_state_dict(blob["scaler"])
                start = st["step"]
                resumed_ema = blob.get("ema")
        averaged = None
        if ema > 0:
            averaged = [p.detach().clone() for p in params.values()]
            if start and resumed_ema is not None:
                for a, v in zip(averaged, resumed_ema):
                    a.copy_(v)
        t0 = time.time()
        bar = progress(steps, start, "fine-tune")
        losses = []
        set_train_mode(student, bn)
        for step in range(start, steps):
            at_full = full_set is not None and full_from is not None and step >= full_from
            x, y = labelled_batch_for_step(full_set if at_full else train_set, step, batch_size, seed)
            mixed = None
            if mixup > 0:
                x, perm, lam = mix_batch(x, mixup, seed * 1_000_003 + step)
                mixed = (perm.to(dev), lam.to(dev))
            x_teacher = x.to(dev, non_blocking=True)
            x = student_view(x_teacher, (sides[1] if at_full else sides[0]) if sides else None)
            y = y.to(dev) if y is not None else None
            for pg in opt.param_groups:
                pg["lr"] = lr_at(step, steps, lr, warmup)
            with torch.autocast("cuda", dtype=amp_dtype, enabled=amp):
                if use_feats:
                    acts, t_logits = capture(decomposition, x)
                    if x_teacher is not x or logits_teacher is not None:
                        with torch.no_grad():
                            t_logits = logits_from(x_teacher)
                    feats, logits = student_features(student, x)
                    f_loss = sum(normalised_mse(f.float(), acts[b].float()) for f, b in zip(feats, boundaries)) / len(feats)
                    loss = (kd_loss(logits.float(), t_logits.float(), y, ce_weight=ce_weight, mixed=mixed)
                            + feature_weight * f_loss)
                else:
                    with torch.no_grad():
                        t_logits = logits_from(x_teacher)
                    loss = kd_loss(student(x).float(), t_logits.float(), y, ce_weight=ce_weight,
                                   mixed=mixed)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            opt.zero_grad(set_to_none=True)
            if averaged is not None:
                with torch.no_grad():
                    torch._foreach_lerp_(averaged, [p.detach() for p in params.values()],
                                         1.0 - min(ema, (1 + step) / (10 + step)))
            losses.append(float(loss.detach()))
            bar.update(1)
            bar.set_postfix(loss=f"{losses[-1]:.4f}")
            done = step + 1
            if done % checkpoint_every == 0 or done == steps:
                blob = {"model": student.state_dict(), "opt": opt.state_dict(),
                        "scaler": scaler.state_dict() if scaler.is_enabled() else None,
                        "ema": averaged}
                atomic.write_with(ckpt_dir / f"ft.s{done:07d}.pt", lambda tmp, b=blob: torch.save(b, tmp))
                atomic.write_json(state_p, {"step": done, "fingerprint": fingerprint})
                for f in ckpt_dir.glob("ft.s*.pt"):
                    if not f.name.endswith(f".s{done:07d}.pt"):
                        f.unlink(missing_ok=True)
        bar.close()
        if averaged is not None:
            with torch.no_grad():
                for p, a in zip(params.values(), averaged):
                    p.copy_(a)
    finally:        # a failed fine-tune leaves nothing frozen or on the GPU
        for p in frozen:
            p.requires_grad_(True)
        for m in moved:
            m.to("cpu")
    student.eval()
    return {"steps": steps, "seed": seed, "resumed_from": start, "seconds": round(time.time() - t0, 1),
            "final_loss": losses[-1] if losses else None, "images": len(train_set)}


@torch.no_grad()
def recalibrate_bn(model: nn.Module, batches: list[torch.Tensor], modules: list[nn.Module] | None = None) -> None:
    """BatchNorm statistics re-estimated (cumulative average) at the deploy resolution; only the
    BatchNorms inside `modules` when given (e.g. the replaced parts: the teacher's own statistics
    come from far more images than a user has)."""
    if not batches:
        return
    model.eval()
    estimate_bn(modules if modules is not None else [model], lambda: [model(x) for x in batches])


@torch.no_grad()
def agreement(model: nn.Module, teacher: nn.Module, loader, side: int | None = None) -> dict:
    """Top-1 agreement with the teacher, mean KL(teacher ‖ model) in nats (a finer measure than
    agreement on a few hundred images), and when labelled top-1 accuracy of both and the model's
    mean cross-entropy on the labels (`ce`). side: the model sees `student_view`s at this side of
    the loader's images, the teacher the images as they are."""
    model.eval()
    teacher.eval()
    n = agree = s_ok = t_ok = 0
    kl = ce = 0.0
    labelled = True
    for x, y in loader:
        s_logits, t_logits = model(student_view(x, side)), teacher(x)
        kl += float(F.kl_div(F.log_softmax(s_logits, 1), F.log_softmax(t_logits, 1), log_target=True,
                             reduction="sum"))
        s, t = s_logits.argmax(1), t_logits.argmax(1)
        agree += int((s == t).sum())
        if (y >= 0).all():
            ce += float(F.cross_entropy(s_logits, y, reduction="sum"))
            s_ok += int((s == y).sum())
            t_ok += int((t == y).sum())
        else:
            labelled = False
        n += x.shape[0]
    out = {"images": n, "agreement": 100.0 * agree / max(1, n), "kl": kl / max(1, n)}
    if labelled and n:
        out.update(student_top1=100.0 * s_ok / n, teacher_top1=100.0 * t_ok / n, ce=ce / n)
    return out


def eval_objective(res: dict, ce_weight: float) -> float:
    """What the fine-tune optimises, on an `agreement` result: KL to the teacher + ce_weight × CE
    on the labels when it has them. `build.keep_best` compares this before and after the
    fine-tune: with labels, KL alone would discard a fine-tune that traded a little KL for top-1."""
    return res["kl"] + (ce_weight * res["ce"] if "ce" in res else 0.0)


def finetune_rejected(before: dict, after: dict, ce_weight: float) -> bool:
    """`build.keep_best`'s decision on two `agreement` results of the eval split: ship the assembled
    weights instead of the fine-tuned ones. Without labels: when the KL to the teacher rose. With
    labels: only when the objective rose *and* top-1 did not: on ~100 images a fine-tune with the
    label term can make a few wrong answers confident, raising the mean CE while more answers turn
    right (a Lite1 student: eval top-1 65 → 71, objective up; holdout 68.6 shipped vs 73.4 discarded)."""
    worse = eval_objective(after, ce_weight) > eval_objective(before, ce_weight)
    if "student_top1" in before and "student_top1" in after:
        return worse and after["student_top1"] <= before["student_top1"]
    return worse


__all__ = ["finetune", "student_features", "recalibrate_bn", "agreement", "eval_objective", "finetune_rejected",
           "kd_loss"]
