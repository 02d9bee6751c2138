"""`build` stage: solution.json → fine-tuned student (`student.stage`) → verified ONNX → engine +
metadata → Triton repository → measured speed and agreement next to the teacher → report."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

from .. import atomic
from ..config import BUILD_OPT_INS, RunConfig
from ..rundir import RunDir, stage_fingerprint, without_defaults
from ..runfiles import BUILD, CANDIDATES, INT8_CALIB, SOLUTION, STUDENT
from ..student.assemble import Choice, StudentSpec, assemble, save_student
from ..student.stage import build_data, train_student, trained_modules


_OMITTED_AT_DEFAULT = {"ema": 0.0, "qat": False, "full_res_steps": 0, "finetune_images": "train", **BUILD_OPT_INS}


def build_fingerprint(run: RunDir, cfg: RunConfig) -> str:
    build = without_defaults(dataclasses.asdict(cfg.build), _OMITTED_AT_DEFAULT)
    return stage_fingerprint({"build": build, "backend": cfg.profile.backend, "batch": cfg.profile.batch},
                             upstream={"search": run.stage("search").fingerprint})


def read_solution(run: RunDir) -> dict:
    run.require("search")
    return json.loads(run.path(SOLUTION).read_text())


def run_build(run: RunDir, cfg: RunConfig, engines_dir: Path | None = None) -> dict:
    from ..teacher.stage import load_from_config
    from ..training import resolve_device
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
    data = build_data(cfg, teacher.data_config)
    t = train_student(student, teacher.model, d, choices, fixed, data, cfg, run.root / STUDENT / "ckpt", fp,
                      device=resolve_device(cfg.distill.device), calib_cache=run.root / "calib")
    spec = StudentSpec(model=teacher.name, resolution=teacher.resolution, data_config=teacher.data_config,
                       choices=choices, fixed_precision=fixed, notes={"agreement_assembled": t.before,
                                                                      "agreement": t.after,
                                                                      "finetune": t.finetune, **t.notes})
    save_student(run.root / STUDENT, student, spec)
    if t.calib is not None:
        atomic.write_json(run.root / STUDENT / INT8_CALIB, t.calib.to_json())
    result = deploy(run, cfg, student, teacher, solution, spec, t.after, data.eval_loader, engines_dir,
                    calib=t.calib, reference=t.deployed, eval_side=data.eval_side)
    info = {"seconds": round(time.time() - t0, 1), "agreement_assembled": t.before["agreement"],
            "agreement": t.after["agreement"], **result}
    if t.notes.get("eval_split_trained_on"):
        info["eval_split_trained_on"] = True
    atomic.write_json(run.path(BUILD), info)
    run.set_stage("build", "done", fp, info)
    return info
