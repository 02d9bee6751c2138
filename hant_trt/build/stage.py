"""`build` stage: solution.json → fine-tuned student → verified ONNX → engine + metadata → Triton
repository → measured speed and agreement next to the teacher → report."""

from __future__ import annotations

import json
import time
from pathlib import Path

from .. import atomic
from ..config import RunConfig
from ..rundir import RunDir, fingerprint
from ..runfiles import BUILD, CANDIDATES, INT8_CALIB, SOLUTION, STUDENT
from .assemble import Choice, StudentSpec, assemble, replaced_parts, save_student


def build_fingerprint(run: RunDir, cfg: RunConfig) -> str:
    sol = run.stage("search").fingerprint
    return fingerprint({"search": sol, "build": cfg.build, "backend": cfg.profile.backend,
                        "batch": cfg.profile.batch})


def read_solution(run: RunDir) -> dict:
    run.require("search")
    return json.loads(run.path(SOLUTION).read_text())


def _trained_modules(run: RunDir, d, choices: list[Choice]) -> dict:
    from ..distill.pool import load_trained

    wanted = {(c.first, c.last, c.op) for c in choices if c.op != "keep"}
    return {(f, l, op): m for _, f, l, op, m in load_trained(run.root / CANDIDATES, d) if (f, l, op) in wanted}


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


def finetune_student(student, teacher_model, d, ordered: list[Choice], train_set, cfg: RunConfig, ckpt_dir: Path,
                     fingerprint: str, steps: int | None = None, lr: float | None = None, device="cpu") -> dict:
    """The build's end-to-end fine-tune of an assembled student, every setting from `cfg.build`
    (steps and lr overridable: benchmarks sweep them)."""
    from .finetune import finetune

    b = cfg.build
    return finetune(student, teacher_model, train_set, b.finetune_steps if steps is None else steps, b.batch_size,
                    b.finetune_lr if lr is None else lr, ckpt_dir, seed=cfg.distill.seed, fingerprint=fingerprint,
                    decomposition=d, boundaries=[c.last + 1 for c in ordered], feature_weight=b.feature_weight,
                    bn=b.bn, mixup=b.mixup, ce_weight=b.ce_weight, trainable=trainable_parts(student, ordered, b.train),
                    device=device)


def int8_plan(student, choices: list[Choice], calib_set, cfg: RunConfig, fixed: dict | None = None,
              cache_dir: Path | None = None):
    """(CalibResult, simulated student, notes) for the parts chosen at int8 — slots, and the stem /
    head when `fixed` ({"stem": precision, ...}, solution.json's fixed_parts) says int8;
    (None, student, {}) when there are none. cache_dir: the calibration cache folder."""
    from ..training import eval_batches
    from ..quant.layouts import layout_for
    from ..quant.parts import int8_fixed, int8_parts
    from ..quant.plan import calibrate_parts, simulate_int8

    parts = int8_parts(choices)
    fixed = int8_fixed(fixed or {})
    if not parts and not fixed:
        return None, student, {}
    batches = eval_batches(calib_set, cfg.profile.calib_images, cfg.build.batch_size)
    calib = calibrate_parts(student, parts, batches, cfg.profile.calib_method, layout=layout_for(cfg.profile),
                            fixed=fixed, cache_dir=cache_dir)
    return calib, simulate_int8(student, parts, calib), {"int8_parts": parts, "int8_fixed": list(fixed),
                                                         "calib_method": calib.method,
                                                         "int8_layout": calib.extra["layout"],
                                                         "calib_images": cfg.profile.calib_images}


def run_build(run: RunDir, cfg: RunConfig, engines_dir: Path | None = None) -> dict:
    from torch.utils.data import DataLoader

    from ..data import data_splits
    from ..training import resolve_device
    from ..teacher.stage import load_from_config
    from .deploy import deploy
    from ..training import eval_batches
    from .finetune import agreement, eval_objective

    fp = build_fingerprint(run, cfg)
    if run.is_done("build", fp):
        return run.stage("build").info or {}
    solution = read_solution(run)
    run.set_stage("build", "running", fp)
    t0 = time.time()
    teacher, d = load_from_config(cfg)
    choices = [Choice(c["first"], c["last"], c["op"], c.get("precision", "fp32")) for c in solution["choices"]]
    fixed = {f["part"]: f["precision"] for f in solution.get("fixed_parts") or []}
    student = assemble(d, choices, _trained_modules(run, d, choices))
    splits = data_splits(cfg, teacher.data_config, train_resolution=cfg.distill.resolution)
    deploy_train = data_splits(cfg, teacher.data_config, train_augment=False).train
    eval_loader = DataLoader(splits.eval, batch_size=32)
    bn_batches = eval_batches(deploy_train, cfg.build.bn_images, cfg.build.batch_size)
    before = agreement(student, teacher.model, eval_loader)
    ft = {"steps": 0}
    ordered = sorted(choices, key=lambda c: c.first)
    keep_check = cfg.build.keep_best and cfg.build.finetune_steps > 0
    assembled = {k: v.detach().clone() for k, v in student.state_dict().items()} if keep_check else None
    if cfg.build.finetune_steps > 0:
        ft = finetune_student(student, teacher.model, d, ordered, splits.train, cfg, run.root / STUDENT / "ckpt",
                              fp, device=resolve_device(cfg.distill.device))
    recalibrate(student, ordered, bn_batches, cfg.build.bn_recalibrate)
    after = agreement(student, teacher.model, eval_loader)
    if keep_check and eval_objective(after, cfg.build.ce_weight) > eval_objective(before, cfg.build.ce_weight):
        # with few images a fine-tune can move a good assembly away from the teacher: measured on
        # the eval split, the assembled weights are kept then
        student.load_state_dict(assembled)
        after = dict(before)
        ft["kept"] = "assembled"
    calib, deployed, notes = int8_plan(student, choices, deploy_train, cfg, fixed, cache_dir=run.root / "calib")
    if calib is not None:
        notes["agreement_fp32"] = after
        after = agreement(deployed, teacher.model, eval_loader)    # what is deployed: int8 parts simulated
    spec = StudentSpec(model=teacher.name, resolution=teacher.resolution, data_config=teacher.data_config,
                       choices=choices, fixed_precision=fixed, notes={"agreement_assembled": before, "agreement": after,
                                               "finetune": ft, **notes})
    save_student(run.root / STUDENT, student, spec)
    if calib is not None:
        atomic.write_json(run.root / STUDENT / INT8_CALIB, calib.to_json())
    result = deploy(run, cfg, student, teacher, solution, spec, after, eval_loader, engines_dir,
                    calib=calib, reference=deployed)
    info = {"seconds": round(time.time() - t0, 1), "agreement_assembled": before["agreement"],
            "agreement": after["agreement"], **result}
    atomic.write_json(run.path(BUILD), info)
    run.set_stage("build", "done", fp, info)
    return info
