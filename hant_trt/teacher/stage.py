"""The teacher stage: load the teacher, cut it into slots, write `teacher.json`."""

from __future__ import annotations

from .. import atomic
from ..config import RunConfig
from ..rundir import RunDir, stage_fingerprint
from ..runfiles import TEACHER
from .decompose import Decomposition, decompose
from .load import Teacher, load_teacher
from .slot import Slot


def teacher_fingerprint(cfg: RunConfig) -> str:
    return stage_fingerprint({"teacher": cfg.teacher})


def load_from_config(cfg: RunConfig) -> tuple[Teacher, Decomposition]:
    t = load_teacher(cfg.teacher.model, cfg.teacher.weights, cfg.teacher.resolution)
    return t, decompose(t.model, t.resolution)


def slot_table(slots: list[Slot]) -> str:
    rows = [("idx", "path", "kind", "teacher op", "in", "out", "s", "params", "MMACs")]
    for s in slots:
        rows.append((str(s.index), s.path, s.kind, s.teacher_op, "x".join(map(str, s.in_shape)),
                     "x".join(map(str, s.out_shape)), str(s.stride), f"{s.params:,}", f"{s.macs / 1e6:.1f}"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def teacher_record(t: Teacher, d: Decomposition) -> dict:
    return {
        "model": t.name,
        "weights": t.weights,
        "resolution": t.resolution,
        "data_config": t.data_config,
        "family": d.family,
        "fixed": d.fixed,
        "params": sum(p.numel() for p in t.model.parameters()),
        "slots": [s.to_dict() for s in d.slots],
    }


def run_teacher(run: RunDir, cfg: RunConfig) -> dict:
    """Write teacher.json (slot table + data config); skipped when already done."""
    fp = teacher_fingerprint(cfg)
    if run.is_done("teacher", fp) and run.path(TEACHER).exists():
        import json

        return json.loads(run.path(TEACHER).read_text())
    run.set_stage("teacher", "running", fp)
    t, d = load_from_config(cfg)
    rec = teacher_record(t, d)
    atomic.write_json(run.path(TEACHER), rec)
    run.update(teacher={"model": t.name, "weights": t.weights, "resolution": t.resolution,
                        "slots": len(d.slots)})
    run.set_stage("teacher", "done", fp, {"slots": len(d.slots)})
    return rec


def read_slots(run: RunDir) -> list[Slot]:
    import json

    run.require("teacher")
    return [Slot.from_dict(s) for s in json.loads(run.path(TEACHER).read_text())["slots"]]
