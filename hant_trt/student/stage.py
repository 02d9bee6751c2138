"""The build stage's student side: the chosen candidates loaded, BatchNorm re-estimation, the
end-to-end fine-tune as `cfg.build` sets it, and the int8 plan of the parts chosen at int8."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import RunConfig
from .assemble import Choice, replaced_parts


def trained_modules(candidates: Path, d, choices: list[Choice]) -> dict:
    """{(first, last, op): module} of the chosen candidates, as phase 1 distilled them."""
    from ..distill.pool import load_trained

    wanted = {(c.first, c.last, c.op) for c in choices if c.op != "keep"}
    return {p.where: p.module for p in load_trained(candidates, d) if p.where in wanted}


def recalibrate(student, ordered: list[Choice], batches, which: str) -> None:
    """BN re-estimation of the student's replaced parts, of everything, or of nothing."""
    from ..errors import UserError
    from .finetune import recalibrate_bn

    if which == "none":
        return
    if which not in ("replaced", "all"):
        raise UserError(f"build.bn_recalibrate must be none, replaced or all, not '{which}'")
    recalibrate_bn(student, batches, None if which == "all" else replaced_parts(student, ordered))


def trainable_parts(student, ordered: list[Choice], which: str):
    """What the fine-tune trains: None (the whole student) or the replaced parts only."""
    from ..errors import UserError

    if which == "all":
        return None
    if which != "replaced":
        raise UserError(f"build.train must be replaced or all, not '{which}'")
    return replaced_parts(student, ordered)


def full_res_set(cfg: RunConfig, data_config: dict):
    """The fine-tune's training images at the deploy resolution, for its last
    `build.full_res_steps` steps and `build.polish_steps` (None when both are 0)."""
    from ..data import data_splits

    if cfg.build.full_res_steps <= 0 and cfg.build.polish_steps <= 0:
        return None
    return data_splits(cfg, data_config, train_on_eval=cfg.build.finetune_images == "all").train


def finetune_seed(cfg: RunConfig) -> int:
    """The fine-tune's seed: `build.seed`, else `distill.seed` (the split's, so runs before
    `build.seed` existed fine-tune as they did)."""
    return cfg.distill.seed if cfg.build.seed is None else cfg.build.seed


def kd_logits_model(cfg: RunConfig, data_config: dict):
    """`build.kd_model` in eval mode (None when unset): the model whose logits the fine-tune's
    student learns from instead of the teacher's. It reads the fine-tune's images as they come, so
    it must normalise its input as the teacher does."""
    from ..errors import UserError
    from ..teacher.load import load_teacher

    b = cfg.build
    if b.kd_model is None:
        return None
    kd = load_teacher(b.kd_model, b.kd_weights)
    if kd.data_config.get("num_classes") != data_config.get("num_classes"):
        raise UserError(f"build.kd_model '{b.kd_model}' has {kd.data_config.get('num_classes')} classes, the teacher "
                        f"{data_config.get('num_classes')}: its logits are not the teacher's classes")
    for key in ("mean", "std"):
        ours, theirs = [round(float(v), 4) for v in data_config[key]], [round(float(v), 4) for v in kd.data_config[key]]
        if ours != theirs:
            raise UserError(f"build.kd_model '{b.kd_model}' normalises its input with {key} {theirs}, the teacher with "
                            f"{ours}: its logits would be taken on images it does not expect")
    return kd.model


def finetune_student(student, teacher_model, d, ordered: list[Choice], train_set, cfg: RunConfig, ckpt_dir: Path,
                     fingerprint: str, steps: int | None = None, lr: float | None = None, device="cpu",
                     trainable: list | None = None, int8_calib=None, full_set=None,
                     sides: tuple[int, int] | None = None, logits_teacher=None) -> dict:
    """The build's end-to-end fine-tune of an assembled student, every setting from `cfg.build`
    (steps and lr overridable: benchmarks sweep them; `trainable`: these modules instead of what
    `build.train` names — benchmarks/label_control.py trains the teacher's blocks at a student's
    positions). int8_calib: the int8 parts' ranges (`int8_calibration`) to train through their
    roundings (`build.qat`; `quant/qat.py`), taken off again when it returns. full_set: `full_res_set`,
    for the last `build.full_res_steps` steps. sides: `BuildData.sides`. logits_teacher:
    `BuildData.logits_teacher`."""
    from ..quant.qat import rounded
    from .finetune import finetune

    b = cfg.build
    total = b.finetune_steps if steps is None else steps
    with rounded(student, int8_calib):
        return finetune(student, teacher_model, train_set, total, b.batch_size,
                        b.finetune_lr if lr is None else lr, ckpt_dir, seed=finetune_seed(cfg), fingerprint=fingerprint,
                        decomposition=d, boundaries=[c.last + 1 for c in ordered], feature_weight=b.feature_weight,
                        bn=b.bn, mixup=b.mixup, ce_weight=b.ce_weight, ema=b.ema,
                        trainable=trainable if trainable is not None else trainable_parts(student, ordered, b.train),
                        full_set=full_set, full_from=max(0, total - b.full_res_steps), device=device,
                        sides=sides, logits_teacher=logits_teacher)


def polish_student(student, teacher_model, data: "BuildData", cfg: RunConfig, ckpt_dir: Path, fingerprint: str,
                   device="cpu", int8_calib=None) -> dict:
    """`build.polish_steps` after the fine-tune: every weight trains, on the training images at the
    deploy resolution, on the logits alone (`data.logits_teacher`'s when set) at `build.polish_lr`.
    The fine-tune first settles the replaced parts against the teacher's feature maps; a whole
    network moved to a logits target at the deploy side is what carried a stronger model's
    knowledge into the unchanged teacher (benchmarks/probe_resolution.py --kd-model). On a student
    of 400 training images it undid what the fine-tune built (docs/RESULTS.md, session 31)."""
    from ..quant.qat import rounded
    from .finetune import finetune

    b = cfg.build
    deploy_side = data.sides[1] if data.sides else None
    with rounded(student, int8_calib):
        return finetune(student, teacher_model, data.full, b.polish_steps, b.batch_size, b.polish_lr, ckpt_dir,
                        seed=finetune_seed(cfg), fingerprint=fingerprint, feature_weight=0.0, bn=b.bn, mixup=b.mixup,
                        ce_weight=b.ce_weight, ema=b.ema, trainable=None, device=device,
                        sides=(deploy_side, deploy_side) if deploy_side else None, logits_teacher=data.logits_teacher)


def int8_calibration(student, choices: list[Choice], calib_set, cfg: RunConfig, fixed: dict | None = None,
                     cache_dir: Path | None = None):
    """The CalibResult of the parts chosen at int8 (and of an int8 stem / head), or None."""
    from ..quant.layouts import layout_for
    from ..quant.parts import int8_fixed, int8_parts
    from ..quant.plan import calibrate_parts
    from ..training import eval_batches

    parts = int8_parts(choices)
    fixed = int8_fixed(fixed or {})
    if not parts and not fixed:
        return None
    batches = eval_batches(calib_set, cfg.profile.calib_images, cfg.build.batch_size)
    return calibrate_parts(student, parts, batches, cfg.profile.calib_method, layout=layout_for(cfg.profile),
                           fixed=fixed, cache_dir=cache_dir)


def int8_plan(student, choices: list[Choice], calib_set, cfg: RunConfig, fixed: dict | None = None,
              cache_dir: Path | None = None):
    """(CalibResult, simulated student, notes) for the parts chosen at int8 — slots, and the stem /
    head when `fixed` ({"stem": precision, ...}, solution.json's fixed_parts) says int8;
    (None, student, {}) when there are none. cache_dir: the calibration cache folder."""
    from ..quant.parts import int8_fixed, int8_parts
    from ..quant.plan import simulate_int8

    calib = int8_calibration(student, choices, calib_set, cfg, fixed, cache_dir)
    if calib is None:
        return None, student, {}
    parts = int8_parts(choices)
    return calib, simulate_int8(student, parts, calib), {"int8_parts": parts, "int8_fixed": list(int8_fixed(fixed or {})),
                                                         "calib_method": calib.method,
                                                         "int8_layout": calib.extra["layout"],
                                                         "calib_images": cfg.profile.calib_images}


@dataclass
class BuildData:
    """What the build trains and measures a student on: the fine-tune's training images (at the
    distillation resolution, and at the deploy resolution for its last steps), un-augmented
    training images for BN estimation and int8 calibration, and the eval split. With
    `build.teacher_resolution` the fine-tune's images and the eval split come at the teacher's side
    and `sides` says the student's (during the fine-tune's first steps, from `full_res_steps` on):
    the student sees them resized (`finetune.student_view`). logits_teacher: `build.kd_model`, whose
    logits the fine-tune learns from instead of the teacher's (None: the teacher's)."""

    train: Any
    full: Any
    deploy_train: Any
    eval_loader: Any
    bn_batches: list
    sides: tuple[int, int] | None = None
    logits_teacher: Any = None

    @property
    def eval_side(self) -> int | None:
        """The student's side on the eval split's images (None: they are at it already)."""
        return self.sides[1] if self.sides else None


def build_data(cfg: RunConfig, data_config: dict) -> BuildData:
    from torch.utils.data import DataLoader

    from ..data import data_splits
    from ..training import eval_batches

    # BN estimation and int8 calibration stay on the train split: ranges are not fitted to what is evaluated
    deploy_train = data_splits(cfg, data_config, train_augment=False).train
    bn_batches = eval_batches(deploy_train, cfg.build.bn_images, cfg.build.batch_size)
    kd = kd_logits_model(cfg, data_config)
    big = cfg.build.teacher_resolution
    if big is not None:
        # one set at the teacher's side serves both phases of the fine-tune: only the student's
        # side changes at `full_res_steps`, and the same seeded steps draw the same crops
        run_side = int(data_config["input_size"][-1])
        splits = data_splits(cfg, data_config, train_resolution=big, resolution=big,
                             train_on_eval=cfg.build.finetune_images == "all")
        full = splits.train if cfg.build.full_res_steps > 0 or cfg.build.polish_steps > 0 else None
        return BuildData(splits.train, full, deploy_train, DataLoader(splits.eval, batch_size=32), bn_batches,
                         sides=(cfg.distill.resolution or run_side, run_side), logits_teacher=kd)
    splits = data_splits(cfg, data_config, train_resolution=cfg.distill.resolution,
                         train_on_eval=cfg.build.finetune_images == "all")
    return BuildData(splits.train, full_res_set(cfg, data_config), deploy_train, DataLoader(splits.eval, batch_size=32),
                     bn_batches, logits_teacher=kd)


def tune_once(student, teacher_model, d, ordered: list[Choice], data: BuildData, cfg: RunConfig, ckpt_dir: Path,
              fingerprint: str, device, qat) -> dict:
    """One fine-tune of an assembled student as `cfg.build` sets it, its polish included."""
    ft = finetune_student(student, teacher_model, d, ordered, data.train, cfg, ckpt_dir, fingerprint, device=device,
                          int8_calib=qat, full_set=data.full, sides=data.sides, logits_teacher=data.logits_teacher)
    if cfg.build.polish_steps > 0:
        ft["polish"] = polish_student(student, teacher_model, data, cfg, Path(ckpt_dir) / "polish", fingerprint,
                                      device=device, int8_calib=qat)
    return ft


def soup_seeds(cfg: RunConfig) -> list[int]:
    """The fine-tune seeds of `build.soup`'s ingredients; one seed, the build's own, without a soup."""
    first = finetune_seed(cfg)
    return [first + k for k in range(max(1, cfg.build.soup))]


def ingredient_dir(ckpt_dir: Path, k: int) -> Path:
    """Where the k-th fine-tune of a soup checkpoints: the first in the fine-tune's own folder."""
    return Path(ckpt_dir) / f"soup{k}" if k else Path(ckpt_dir)


def average_states(states: list[dict]) -> dict:
    """The uniform average of state dicts of one architecture; entries equal in all of them (the
    parts no fine-tune trained, integer counters) are kept bit for bit."""
    import torch

    out = {}
    for key, first in states[0].items():
        if not first.is_floating_point() or all(torch.equal(first, s[key]) for s in states[1:]):
            out[key] = first
        else:
            out[key] = (sum(s[key].double() for s in states) / len(states)).to(first.dtype)
    return out


def soup_finetune(student, teacher_model, d, ordered: list[Choice], data: BuildData, cfg: RunConfig, ckpt_dir: Path,
                  fingerprint: str, device, qat) -> dict:
    """`build.soup` fine-tunes of the assembled student (`tune_once`), each from the same weights
    at its own seed, then their average in place — a uniform model soup (Wortsman et al. 2022):
    fine-tunes of one start differ in their batches' order and crops, and their average sits nearer
    the middle of the basin they share than any of them, for no latency. The first ingredient is
    the build without a soup (same seed, `ckpt_dir`); the k-th checkpoints under `ckpt_dir/soup{k}`,
    so a killed soup resumes where it was. Its record: the first ingredient's, with `soup` added."""
    import copy
    import sys

    seeds = soup_seeds(cfg)
    if len(seeds) == 1:
        return tune_once(student, teacher_model, d, ordered, data, cfg, ckpt_dir, fingerprint, device, qat)
    start = {k: v.detach().clone() for k, v in student.state_dict().items()}
    states, records = [], []
    for k, seed in enumerate(seeds):
        print(f"fine-tune {k + 1} of a soup of {len(seeds)} (seed {seed})", file=sys.stderr, flush=True)
        if k:
            student.load_state_dict(start)
        kcfg = copy.deepcopy(cfg)
        kcfg.build.seed = seed
        records.append(tune_once(student, teacher_model, d, ordered, data, kcfg, ingredient_dir(ckpt_dir, k),
                                 fingerprint, device, qat))
        states.append({key: v.detach().clone() for key, v in student.state_dict().items()})
    student.load_state_dict(average_states(states))
    return {**records[0], "soup": {"seeds": seeds, "final_losses": [r.get("final_loss") for r in records],
                                   "seconds": round(sum(r.get("seconds", 0.0) for r in records), 1)}}


@dataclass
class Trained:
    """A student as the build leaves it: eval-split agreement before and after (after: as deployed,
    int8 parts simulated), the fine-tune's record, the int8 ranges and simulated student, notes."""

    before: dict
    after: dict
    finetune: dict
    calib: Any
    deployed: Any
    notes: dict


def train_student(student, teacher_model, d, choices: list[Choice], fixed: dict, data: BuildData, cfg: RunConfig,
                  ckpt_dir: Path, fingerprint: str, device="cpu", calib_cache: Path | None = None) -> Trained:
    """The build's student side on an assembled student, in place: fine-tune as `cfg.build` sets it
    (`build.qat`: through its int8 roundings), BN re-estimation, `build.keep_best`'s decision, the
    int8 plan. The build and the search's fine-tune judge (`search/judge.py`) both run this, so a
    judgement is what the build would make of a selection."""
    from .finetune import agreement, finetune_rejected

    b = cfg.build
    before = agreement(student, teacher_model, data.eval_loader, data.eval_side)
    ft: dict = {"steps": 0}
    ordered = sorted(choices, key=lambda c: c.first)
    # trained on the eval split (`finetune_images = "all"`), it can no longer judge the fine-tune
    keep_check = b.keep_best and b.finetune_steps > 0 and b.finetune_images == "train"
    assembled = {k: v.detach().clone() for k, v in student.state_dict().items()} if keep_check else None
    if b.finetune_steps > 0:
        # build.qat: ranges of the assembled student, which its fine-tune learns to round with
        qat = int8_calibration(student, choices, data.deploy_train, cfg, fixed, cache_dir=calib_cache) if b.qat else None
        ft = soup_finetune(student, teacher_model, d, ordered, data, cfg, ckpt_dir, fingerprint, device, qat)
        if qat is not None:
            ft["qat_sites"] = len(qat.amax)
        if b.kd_model is not None:
            ft["logits_from"] = f"{b.kd_model} ({b.kd_weights})"
    recalibrate(student, ordered, data.bn_batches, b.bn_recalibrate)
    after = agreement(student, teacher_model, data.eval_loader, data.eval_side)
    if keep_check and finetune_rejected(before, after, b.ce_weight):
        # with few images a fine-tune can move a good assembly away from the teacher: measured on
        # the eval split, the assembled weights are kept then
        student.load_state_dict(assembled)
        ft["kept"] = "assembled"
        ft["rejected_eval"] = after      # what the discarded fine-tune scored: the decision stays readable
        after = dict(before)
    calib, deployed, notes = int8_plan(student, choices, data.deploy_train, cfg, fixed, cache_dir=calib_cache)
    if b.finetune_images == "all" and b.finetune_steps > 0:
        notes["eval_split_trained_on"] = True
    if calib is not None:
        notes["agreement_fp32"] = after
        after = agreement(deployed, teacher_model, data.eval_loader, data.eval_side)   # as deployed: int8 simulated
    return Trained(before, after, ft, calib, deployed, notes)
