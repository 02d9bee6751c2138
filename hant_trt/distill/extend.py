"""A distilled run's candidate set changed without training again what it already has.

Each candidate trains alone on the shared teacher pass (its batches and steps do not depend on the
others), so when the candidate set changes — widths aligned (`distill.align`), fused spans added
(`distill.spans`), another preset or slots — a candidate both sets list is the same either way,
and a new one that inherits the teacher's weights gets what a fresh distillation gives it (one
initialised at random draws other numbers from the seeded stream: it is an equally good draw). `extend_run` copies SRC's distillation into DST, trains only what DST's set
lists and SRC lacks, drops what DST's set no longer lists, and marks DST's distill stage done under
its own fingerprint. Score, profile and search then run on DST as usual (the latency table already
has every reused candidate's rows).

Only the settings that define the set may change: anything that changes how a candidate trains
would leave the reused ones trained otherwise than the fingerprint says.
"""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

from .. import atomic
from ..config import RunConfig, from_dict
from ..errors import UserError
from ..rundir import RunDir
from ..runfiles import CANDIDATES, MANIFEST, TEACHER
from ..teacher.stage import load_from_config
from .stage import distill_fingerprint, distill_sets
from .train import distill, merge_slot_files, plan_jobs

SET_KEYS = ("preset", "align", "spans", "slots")
HOW_KEYS = ("checkpoint_every", "cuda_graph", "device", "group_mb")   # how it runs, not what it learns
WORK = "extend_work"


def copy_distilled(src: Path, dst: Path) -> None:
    """SRC's teacher description, candidates and manifest into DST; what DST has is kept (a rerun
    after a kill must not overwrite merged slot files)."""
    cand = dst / CANDIDATES
    cand.mkdir(parents=True, exist_ok=True)
    if (src / TEACHER).exists() and not (dst / TEACHER).exists():
        shutil.copy2(src / TEACHER, dst / TEACHER)
    for f in (src / CANDIDATES).glob("slot*"):
        if not (cand / f.name).exists():
            shutil.copy2(f, cand / f.name)
    if not (dst / MANIFEST).exists():
        atomic.write_json(dst / MANIFEST, json.loads((src / MANIFEST).read_text()))


def trained_keys(folder: Path) -> set[tuple[int, int, str]]:
    """(first, last, op) of every candidate in a candidates folder."""
    keys = set()
    for p in Path(folder).glob("slot*.json"):
        m = json.loads(p.read_text())
        keys |= {(m["first"], m["last"], c["op"]) for c in m["candidates"]}
    return keys


def extend_run(src: Path, dst: Path, cfg: RunConfig) -> dict:
    """DST = SRC's distillation with the candidate set of `cfg` (SRC's config with a changed
    `distill.align`, `spans`, `preset` or `slots`). Resumable: a kill leaves a checkpoint under
    DST/extend_work; the same call again goes on. Returns the distill stage's info."""
    src, dst = Path(src), Path(dst)
    src_run = RunDir(src, create=False)
    if src_run.stage("distill").status != "done":
        raise UserError(f"{src} has no finished distill stage")
    if dst.resolve() == src.resolve():
        raise UserError("DST must be another folder than SRC")
    old = from_dict(src_run.manifest()["config"])
    changed = [k for k, v in vars(cfg.distill).items() if getattr(old.distill, k) != v and k not in HOW_KEYS]
    other = [f"distill.{k}" for k in changed if k not in SET_KEYS]
    if other or old.data != cfg.data or old.teacher != cfg.teacher:
        raise UserError(f"only the candidate set may change (distill.{', distill.'.join(SET_KEYS)}), not "
                        f"{', '.join(other) or 'the teacher or the data'}: that needs a distillation of its own")
    copy_distilled(src, dst)
    run = RunDir(dst, create=False)
    cfg = copy.deepcopy(cfg)
    cfg.run_dir = str(dst)
    run.update(config=cfg.to_dict())
    fp = distill_fingerprint(cfg)
    if run.is_done("distill", fp):
        return run.stage("distill").info or {}
    run.invalidate_from("distill")
    run.set_stage("distill", "running", fp)
    teacher, d = load_from_config(cfg)
    wanted = {(j.first, j.last, j.op) for j in plan_jobs(d, cfg.distill)}
    cand, work = dst / CANDIDATES, dst / WORK
    plan = work / "new.json"        # fixed at the first call: a rerun resumes the same jobs
    if plan.exists():
        new = {tuple(k) for k in json.loads(plan.read_text())}
    else:
        new = wanted - trained_keys(cand)
        atomic.write_json(plan, sorted(new))
    summary = {"candidates": 0, "steps": 0, "seconds": 0.0}
    if new:
        sets = distill_sets(cfg, teacher.data_config)
        summary = distill(d, sets.train, sets.eval, cfg.distill, work, fp, resume=(work / "ckpt").exists(),
                          bn_set=sets.bn, full_set=sets.full, only_keys=new)
    total = merge_slot_files([(cand, wanted - new), (work, new)], cand)
    shutil.rmtree(work, ignore_errors=True)
    info = {"candidates": total, "steps": summary["steps"], "seconds": summary["seconds"],
            "data": (src_run.stage("distill").info or {}).get("data"),
            "note": f"{total - summary['candidates']} candidates of {src} reused, {summary['candidates']} trained "
                    f"({', '.join(f'distill.{k}={getattr(cfg.distill, k)}' for k in changed) or 'no change'})"}
    run.set_stage("distill", "done", fp, info)
    return info


__all__ = ["extend_run", "copy_distilled", "trained_keys", "SET_KEYS"]
