"""Built students' ONNX (any precision plan) timed beside the teacher, paired rounds, one process.

    .venv/bin/python benchmarks/remeasure_onnx.py RUN_DIR [RUN_DIR ...] [--rounds 7]

Each round times the teacher (fp32 ONNX) then each student's `student/student.onnx` right after a
teacher timing; a student's speedup is the median over rounds of (teacher / student) from those
pairs, so the host's drift between rounds cancels.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np

from hant_trt.latency.backends.ort import OrtBackend
from hant_trt.latency.export import export_onnx
from hant_trt.latency.paired import time_beside
from hant_trt.teacher.load import load_teacher


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--seconds", type=float, default=1.0)
    a = ap.parse_args()
    cfg = json.loads((Path(a.runs[0]) / "run.json").read_text())["config"]["teacher"]
    t = load_teacher(cfg["model"], cfg["weights"], cfg["resolution"])
    backend = OrtBackend(threads=2)
    with tempfile.TemporaryDirectory() as tmp:
        shape = (1, 3, t.resolution, t.resolution)
        teacher = backend.prepare(export_onnx(t.model.eval(), shape, Path(tmp) / "teacher.onnx"))
        students = {r: backend.prepare(str(Path(r) / "student" / "student.onnx")) for r in a.runs}
        pairs = dict(zip(students, time_beside(backend, teacher, list(students.values()), a.rounds,
                                               max_seconds=a.seconds)))
        ratios = {r: [tt / ts for tt, ts in p] for r, p in pairs.items()}
        t_ms = [tt * 1e3 for p in pairs.values() for tt, _ in p]
    print(f"teacher {np.median(t_ms):.3f} ms (median of {len(t_ms)} timings), {a.rounds} paired rounds")
    for r, v in ratios.items():
        print(f"{r}: speedup {np.median(v):.2f}x (rounds {min(v):.2f}–{max(v):.2f}x)")


if __name__ == "__main__":
    main()
