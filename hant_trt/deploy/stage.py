"""`build` stage: solution.json → fine-tuned student (`student.stage`) → verified ONNX → engine +
metadata → Triton repository → measured speed and agreement next to the teacher → report."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

from .. import atomic
from ..config import RunConfig
from ..rundir import RunDir, stage_fingerprint, without_defaults
from ..runfiles import BUILD, CANDIDATES, INT8_CALIB, SOLUTION, STUDENT
from ..student.assemble import Choice, StudentSpec, assemble, save_student
from ..student.stage import (finetune_student, full_res_set, int8_calibration, int8_plan, recalibrate,
                             trained_modules)


_OMITTED_AT_DEFAULT = {"ema": 0.0, "qat": False, "full_res_steps": 0}


def build_fingerprint(run: RunDir, cfg: RunConfig) -> str:
    build = without_defaults(dataclasses.asdict(cfg.build), _OMITTED_AT_DEFAULT)
    return stage_fingerprint({"build": build, "backend": cfg.profile.backend, "batch": cfg.profile.batch},
                             upstream={"search": run.stage("search").fingerprint})


def read_solution(run: RunDir) -> dict:
    run.require("search")
    return json.loads(run.path(SOLUTION).read_text())


def run_build(run: RunDir, cfg: RunConfig, engines_dir: Path | None = None) -> dict:
    from torch.utils.data import DataLoader

    from ..data import data_splits
    from ..student.finetune import agreement, finetune_rejected
    from ..teacher.stage import load_from_config
    from ..training import eval_batches, resolve_device
    from .deploy import deploy

    fp = build_fingerprint(run, cfg)
    if run.is_done("build", fp):
        return run.stage("build").info or {}
    solution = read_solution(run)
    run.set_stage("build", "running", fp)
    t0 = time.time()
    teacher, d = load_from_config(cfg)
    choices = [Choice(c["first"], c["last"], c["op"], c.get("precision", "fp32")) for c in solution["choices"]]
    fixed = {f["part"]: f["precision"] for f in solution.get("fixed_parts") or []}
    student = assemble(d, choices, trained_modules(run.root / CANDIDATES, d, choices))
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
        # build.qat: ranges of the assembled student, which its fine-tune learns to round with
        qat = int8_calibration(student, choices, deploy_train, cfg, fixed, cache_dir=run.root / "calib") \
            if cfg.build.qat else None
        ft = finetune_student(student, teacher.model, d, ordered, splits.train, cfg, run.root / STUDENT / "ckpt",
                              fp, device=resolve_device(cfg.distill.device), int8_calib=qat,
                              full_set=full_res_set(cfg, teacher.data_config))
        if qat is not None:
            ft["qat_sites"] = len(qat.amax)
    recalibrate(student, ordered, bn_batches, cfg.build.bn_recalibrate)
    after = agreement(student, teacher.model, eval_loader)
    if keep_check and finetune_rejected(before, after, cfg.build.ce_weight):
        # with few images a fine-tune can move a good assembly away from the teacher: measured on
        # the eval split, the assembled weights are kept then
        student.load_state_dict(assembled)
        ft["kept"] = "assembled"
        ft["rejected_eval"] = after      # what the discarded fine-tune scored: the decision stays readable
        after = dict(before)
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
