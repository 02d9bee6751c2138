"""The build stage's student side: the chosen candidates loaded, BatchNorm re-estimation, the
end-to-end fine-tune as `cfg.build` sets it, and the int8 plan of the parts chosen at int8."""

from __future__ import annotations

from pathlib import Path

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
    `build.full_res_steps` steps (None when that is 0)."""
    from ..data import data_splits

    return data_splits(cfg, data_config).train if cfg.build.full_res_steps > 0 else None


def finetune_student(student, teacher_model, d, ordered: list[Choice], train_set, cfg: RunConfig, ckpt_dir: Path,
                     fingerprint: str, steps: int | None = None, lr: float | None = None, device="cpu",
                     trainable: list | None = None, int8_calib=None, full_set=None) -> dict:
    """The build's end-to-end fine-tune of an assembled student, every setting from `cfg.build`
    (steps and lr overridable: benchmarks sweep them; `trainable`: these modules instead of what
    `build.train` names — benchmarks/label_control.py trains the teacher's blocks at a student's
    positions). int8_calib: the int8 parts' ranges (`int8_calibration`) to train through their
    roundings (`build.qat`; `quant/qat.py`), taken off again when it returns. full_set: `full_res_set`,
    for the last `build.full_res_steps` steps."""
    from ..quant.qat import attach
    from .finetune import finetune

    b = cfg.build
    total = b.finetune_steps if steps is None else steps
    attached = attach(student, int8_calib) if int8_calib is not None else None
    try:
        return finetune(student, teacher_model, train_set, total, b.batch_size,
                        b.finetune_lr if lr is None else lr, ckpt_dir, seed=cfg.distill.seed, fingerprint=fingerprint,
                        decomposition=d, boundaries=[c.last + 1 for c in ordered], feature_weight=b.feature_weight,
                        bn=b.bn, mixup=b.mixup, ce_weight=b.ce_weight, ema=b.ema,
                        trainable=trainable if trainable is not None else trainable_parts(student, ordered, b.train),
                        full_set=full_set, full_from=max(0, total - b.full_res_steps), device=device)
    finally:
        if attached is not None:
            attached.remove()


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
