"""`profile` stage: every unique candidate signature of the run timed on the target backend.

Rows go to the shared latency table (measured once per signature × precision × backend × device);
the run gets `latency.csv` (one row per candidate it can use) and `latency_fixed.json` (stem, head,
whole teacher, and the additivity correction: measured teacher − (stem + head + Σ keep)).
"""

from __future__ import annotations

import csv
import io
import json
import time

import torch

from .. import atomic
from ..config import RunConfig
from ..rundir import RunDir, fingerprint

LATENCY_COLUMNS = ["first", "last", "op", "precision", "signature", "median_s", "p90_s", "stdev_s",
                   "count", "backend", "device"]


def profile_fingerprint(run: RunDir, cfg: RunConfig) -> str:
    return fingerprint({"score": run.stage("score").fingerprint, "profile": cfg.profile,
                        "teacher": cfg.teacher})


def _candidate_rows(run: RunDir) -> list[tuple[int, int, str, str]]:
    """(first, last, op, signature) of every scored candidate (keep included)."""
    from ..distill.score import read_scores

    run.require("score")
    seen, out = set(), []
    for r in read_scores(run.path("scores.csv")):
        key = (r.first, r.last, r.op)
        if key not in seen:
            seen.add(key)
            out.append((r.first, r.last, r.op, r.signature))
    return out


def run_profile(run: RunDir, cfg: RunConfig) -> dict:
    from ..teacher.decompose import module_slot_of, span_teacher
    from ..ops import build
    from ..teacher.stage import load_from_config
    from .backends import get_backend
    from .lut import LatencyTable, default_lut_path
    from ..errors import UserError
    from .precision import base_precision
    from .profile import ProfileItem, measure_module, profile_items

    if not {"fp32", "fp16"} & set(cfg.profile.precisions):
        raise UserError(f"profile.precisions {cfg.profile.precisions} needs fp32 or fp16: the teacher, stem "
                        "and head run at one of them, and every int8 part is measured against it")
    fp = profile_fingerprint(run, cfg)
    if run.is_done("profile", fp):
        return run.stage("profile").info or {}
    rows = _candidate_rows(run)
    run.set_stage("profile", "running", fp)
    t0 = time.time()
    teacher, d = load_from_config(cfg)
    batch = cfg.profile.batch
    backend = get_backend(cfg.profile.backend, threads=cfg.profile.threads)
    table = LatencyTable(cfg.profile.lut or default_lut_path())
    workdir = run.root / "profile"

    def maker(first, last, op):
        slot = module_slot_of(d.slots, first, last)
        teacher_block = span_teacher(d, first, last)
        return lambda: build(op, slot, teacher_block).eval()

    items, by_sig = [], {}
    for first, last, op, sig in rows:
        if sig not in by_sig:
            slot = module_slot_of(d.slots, first, last)
            by_sig[sig] = ProfileItem(signature=sig, input_shape=(batch, *slot.in_shape),
                                      make_module=maker(first, last, op), calib=None)
            items.append(by_sig[sig])
    results = profile_items(items, backend, table, cfg.profile.precisions, workdir,
                            max_seconds=cfg.profile.max_seconds, cv_target=cfg.profile.cv_target)
    res = {(r.signature, r.precision): r for r in results}
    device = backend.device().fingerprint
    out_rows, failed = [], 0
    for first, last, op, sig in rows:
        for prec in cfg.profile.precisions:
            r = res.get((sig, prec))
            if r is None or r.error:
                failed += 1
                continue
            out_rows.append({"first": first, "last": last, "op": op, "precision": prec, "signature": sig,
                             "median_s": r.median_s, "p90_s": r.p90_s, "stdev_s": r.stdev_s,
                             "count": r.count, "backend": backend.name, "device": device})
    res_shape = (batch, 3, teacher.resolution, teacher.resolution)
    base = base_precision(cfg.profile.precisions)   # the teacher and fixed parts as they deploy
    fixed = {}
    for name, module, shape in (("stem", d.stem, res_shape),
                                ("head", d.head, (batch, *d.fixed["head"]["in_shape"])),
                                ("teacher", teacher.model, res_shape)):
        fixed[f"{name}_s"] = measure_module(module, shape, backend, table, workdir,
                                            signature=f"{teacher.name}:{name}|{teacher.resolution}",
                                            precision=base, max_seconds=max(cfg.profile.max_seconds, 1.0),
                                            cv_target=cfg.profile.cv_target).median_s
    keep = {r["first"]: r["median_s"] for r in out_rows
            if r["op"] == "keep" and r["precision"] == base and r["first"] == r["last"]}
    fixed["teacher_sum_s"] = fixed["stem_s"] + fixed["head_s"] + sum(keep.values())
    fixed["correction_s"] = fixed["teacher_s"] - fixed["teacher_sum_s"]
    fixed["additivity_error"] = (fixed["teacher_sum_s"] - fixed["teacher_s"]) / fixed["teacher_s"]
    fixed_doc = {"device": {device: {**fixed, "precision": base, "backend": backend.name,
                                     "version": backend.version()}}}
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=LATENCY_COLUMNS, lineterminator="\n")
    w.writeheader()
    w.writerows(out_rows)
    atomic.write_text(run.path("latency.csv"), buf.getvalue())
    atomic.write_json(run.path("latency_fixed.json"), fixed_doc)
    info = {"unique_signatures": len(items), "rows": len(out_rows), "failed": failed,
            "teacher_ms": round(fixed["teacher_s"] * 1e3, 4),
            "additivity_error_pct": round(100 * fixed["additivity_error"], 2),
            "backend": backend.name, "device": device, "seconds": round(time.time() - t0, 1)}
    run.set_stage("profile", "done", fp, info)
    return info
