"""`distill` stage over a run directory (single process, or one rank under torchrun)."""

from __future__ import annotations

import dataclasses
import json
import os
import time

from .. import atomic
from ..config import RunConfig
from ..data import data_splits
from ..quant.layouts import layout_for
from ..rundir import RunDir, stage_fingerprint
from ..runfiles import CANDIDATES, FIXED_SCORES, SCORE_PARTIAL, SCORES
from ..teacher.stage import load_from_config, run_teacher, teacher_fingerprint
from .pool import TrainedPart
from .train import distill, merge_slot_files


def distill_fingerprint(cfg: RunConfig) -> str:
    d = dict(vars(cfg.distill))
    d.pop("checkpoint_every", None)
    d.pop("cuda_graph", None)       # how steps are launched, not what they compute
    if not d.get("suffix_kl"):      # left out when off: saved runs' fingerprints stay valid
        d.pop("suffix_kl", None), d.pop("suffix_kl_slots", None)
    if not d.get("fisher"):
        d.pop("fisher", None)
    if not d.get("align"):
        d.pop("align", None)
    return stage_fingerprint({"data": cfg.data, "distill": d}, upstream={"teacher": teacher_fingerprint(cfg)})


@dataclasses.dataclass(frozen=True)
class DistillSets:
    """The image sets one distillation reads: train and eval at `distill.resolution`, the
    un-augmented set the candidates' BN statistics are re-estimated on, and the deploy-resolution
    set of the last `full_res_steps` (None when there are none)."""
    train: object
    eval: object
    bn: object
    full: object | None
    description: str


def distill_sets(cfg: RunConfig, data_config: dict) -> DistillSets:
    splits = data_splits(cfg, data_config, train_resolution=cfg.distill.resolution)
    bn = data_splits(cfg, data_config, train_augment=False).train
    full = data_splits(cfg, data_config).train if cfg.distill.full_res_steps > 0 else None
    return DistillSets(splits.train, splits.eval, bn, full, splits.description)


def run_distill(run: RunDir, cfg: RunConfig, resume: bool = False, restart: bool = False) -> dict:
    fp = distill_fingerprint(cfg)
    if run.is_done("distill", fp):
        return run.stage("distill").info or {}
    run_teacher(run, cfg)
    rank = int(os.environ.get("RANK", "0"))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    run.set_stage("distill", "running", fp)
    teacher, d = load_from_config(cfg)
    sets = distill_sets(cfg, teacher.data_config)
    out = run.root / CANDIDATES
    if world > 1:  # this rank's outputs of an earlier launch must not be merged into this one
        for f in (out / f"rank{rank}").glob("*"):
            if f.name == "DONE" or f.name.startswith("slot"):
                f.unlink()
    summary = distill(d, sets.train, sets.eval, cfg.distill, out, fp, resume=resume,
                      restart=restart, rank=rank, world=world, bn_set=sets.bn, full_set=sets.full)
    n_candidates = summary["candidates"]
    if world > 1:
        n_candidates = _merge_ranks(run, world, rank, fp)
        if rank != 0:
            return summary
    info = {"candidates": n_candidates, "steps": summary["steps"],
            "seconds": summary["seconds"], "timings": summary["timings"], "data": sets.description}
    run.set_stage("distill", "done", fp, info)
    return info


def _merge_ranks(run: RunDir, world: int, rank: int, fp: str, timeout_s: float = 24 * 3600) -> int:
    """Ranks write into candidates/rankR/; rank 0 waits for all and merges deterministically
    (candidates of a slot sorted by op). Returns the number of merged candidates (rank 0) or
    -1 (other ranks)."""
    out = run.root / CANDIDATES
    stamp = {"fingerprint": fp, "world": world}
    # a rank without candidates has no folder yet; the stamp keeps a stale DONE from going unnoticed
    atomic.write_json(out / f"rank{rank}" / "DONE", stamp)
    if rank != 0:
        return -1

    def done(r: int) -> bool:
        try:
            return json.loads((out / f"rank{r}" / "DONE").read_text()) == stamp
        except (OSError, ValueError):
            return False

    t0 = time.time()
    while not all(done(r) for r in range(world)):
        if time.time() - t0 > timeout_s:
            raise RuntimeError("timed out waiting for the other ranks")
        time.sleep(2)
    return merge_slot_files([(out / f"rank{r}", None) for r in range(world)], out)


def score_fingerprint(cfg: RunConfig) -> str:
    int8 = [cfg.profile.calib_method, cfg.profile.calib_images] if "int8" in cfg.profile.precisions else False
    if int8 and layout_for(cfg.profile).in_fingerprint:     # runs from before layouts keep their fingerprints
        int8.append(layout_for(cfg.profile).name)
    return stage_fingerprint({"score": cfg.score, "int8": int8}, upstream={"distill": distill_fingerprint(cfg)})


def run_score(run: RunDir, cfg: RunConfig) -> dict:
    """Swap-one scores of every candidate (keep included) → scores.csv."""
    from .pool import load_trained, keep_entries, signature_of, cost_of
    from ..scores import ScoreRow, write_scores
    from .score import score_candidates
    from ..progress import progress

    fp = score_fingerprint(cfg)
    if run.is_done("score", fp):
        if "int8" in cfg.profile.precisions and not run.path(FIXED_SCORES).is_file():
            teacher, d = load_from_config(cfg)  # runs scored before the stem/head became choices
            _write_fixed_scores(run, cfg, teacher, d, *_score_loader(cfg, teacher))
        return run.stage("score").info or {}
    run.require("distill")
    run.set_stage("score", "running", fp)
    t0 = time.time()
    teacher, d = load_from_config(cfg)
    loader, labelled = _score_loader(cfg, teacher)
    entries = keep_entries(d) + load_trained(run.root / CANDIDATES, d)
    if "int8" in cfg.profile.precisions:
        entries += int8_entries(d, entries, data_splits(cfg, teacher.data_config, train_augment=False).train,
                                cfg.score.batch_size, cfg.profile.calib_images, cfg.profile.calib_method,
                                layout_for(cfg.profile))
    dev = score_device(cfg)
    for m in (d.stem, d.head, *d.blocks, *(e.module for e in entries)):
        m.to(dev)
    bar = progress(len(loader), 0, f"score {len(entries)} candidates")
    # a distillation run again (same settings, other weights on a GPU) must not resume older sums
    metrics = score_candidates(d, entries, loader, labelled, bar, dev, checkpoint=run.path(SCORE_PARTIAL),
                               fingerprint=f"{fp}:{run.stage('distill').finished}")
    bar.close()
    for m in (d.stem, d.head, *d.blocks, *(e.module for e in entries)):
        m.to("cpu")                     # parameter and MAC counts below run on CPU inputs
    rows = []
    for e in entries:
        params, macs = cost_of(d, e.first, e.last, e.op, e.module)
        rows.append(ScoreRow(first=e.first, last=e.last, op=e.op, precision=e.precision,
                             signature=signature_of(d, e.first, e.last, e.op), params=params, macs=macs,
                             **metrics[e.key]))
    rows.sort(key=lambda r: (r.first, r.last, r.op != "keep", r.op, r.precision))
    write_scores(run.path(SCORES), rows)
    if "int8" in cfg.profile.precisions:
        _write_fixed_scores(run, cfg, teacher, d, loader, labelled)
    info = {"rows": len(rows), "eval_images": len(loader.dataset), "seconds": round(time.time() - t0, 1)}
    run.set_stage("score", "done", fp, info)
    run.path(SCORE_PARTIAL).unlink(missing_ok=True)
    return info


def score_device(cfg: RunConfig):
    """Where swap-one scoring runs: distillation's device, except that int8 runs score on the CPU (the
    int8 simulation keeps its scales there)."""
    import torch

    from ..training import resolve_device

    dev = resolve_device(cfg.distill.device)
    return torch.device("cpu") if "int8" in cfg.profile.precisions else dev


def _score_loader(cfg: RunConfig, teacher):
    """(loader, labelled): the eval split scoring runs on (at most `score.max_images`)."""
    from torch.utils.data import DataLoader, Subset

    splits = data_splits(cfg, teacher.data_config)
    ev = splits.eval
    if cfg.score.max_images and len(ev) > cfg.score.max_images:
        ev = Subset(ev, range(cfg.score.max_images))
    return DataLoader(ev, batch_size=cfg.score.batch_size, shuffle=False), bool(getattr(splits.eval, "labelled", False))


def _write_fixed_scores(run: RunDir, cfg: RunConfig, teacher, d, loader, labelled: bool) -> None:
    """scores_fixed.json: the stem and head at int8, scored on the eval split like the slots."""
    from .score import score_fixed_int8
    from ..training import eval_batches

    calib = eval_batches(data_splits(cfg, teacher.data_config, train_augment=False).train,
                         cfg.profile.calib_images, cfg.score.batch_size)
    got = score_fixed_int8(d, loader, calib, labelled, cfg.profile.calib_method, layout_for(cfg.profile))
    atomic.write_json(run.path(FIXED_SCORES), got)


def int8_entries(d, entries: list[TrainedPart], calib_set, batch_size: int, images: int = 32,
                 method: str = "max", layout=None) -> list[TrainedPart]:
    """Each (fp32) entry again with simulated int8: ranges from `quant.calibrate` (`method`) on the
    slot's real inputs from `images` un-augmented training images, simulated by
    the layout's simulation (`quant.layouts`) — the code and arithmetic of the Q/DQ ONNX the build writes for int8 parts."""
    import torch

    from ..quant.calibrate import QUANT_LAYERS
    from ..quant.layouts import simulated_int8
    from ..teacher.capture import capture
    from ..training import eval_batches

    acts = [capture(d, x)[0] for x in eval_batches(calib_set, images, batch_size)]
    out = []
    with torch.no_grad():
        for e in entries:
            if not any(isinstance(m, QUANT_LAYERS) for m in e.module.modules()):
                continue        # nothing to quantize (skip): int8 would be the fp32 entry again
            q = simulated_int8(e.module, [a[e.first] for a in acts], method, layout)
            out.append(dataclasses.replace(e, key=e.key + ":int8", module=q, precision="int8"))
    return out
