"""Budget calibration on the real engine: solve, time the chosen student beside the teacher, and
solve again with the budget corrected until the measured student meets the asked budget.

Why: the latency table times each part alone, and some ops (on ORT CPU: fused `e8` spans, `e5.5`
widths) save in the whole model half or less of what they save alone. The search seeks exactly
those, so its students missed their budget by up to 15 % (docs/RESULTS.md). Weights do not change
latency, so the student is timed as built from its op strings, untrained.
"""

from __future__ import annotations

import statistics
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

from ..errors import UserError


@dataclass
class Round:
    budget_s: float          # the budget this round's ILP was given (table units)
    predicted_s: float       # its solution's predicted latency (table units)
    measured_s: float        # the student timed beside the teacher, in table units
    score: float

    def to_dict(self) -> dict:
        return {"budget_ms": self.budget_s * 1e3, "predicted_ms": self.predicted_s * 1e3,
                "measured_ms": self.measured_s * 1e3, "score": self.score}


def calibrated_solve(problem, device: str, solve: Callable, measure: Callable, rounds: int,
                     tol: float = 0.02):
    """(solution, rounds): the best-scoring solution whose measured latency is within `tol` of
    `problem.budget_s[device]`, else the fastest one measured.

    solve(problem) -> Solution; measure(solution) -> the student's latency in table units (timed
    beside the teacher on the engine, times the table's teacher latency: `engine_measure`).
    rounds: how many solutions to time at most (≥ 1). Each round scales the budget by the ratio of
    the asked budget to the last measured latency, so it converges on the engine's own scale.
    """
    target = problem.budget_s[device]
    budget, history, tried = target, [], []
    for k in range(max(1, rounds)):
        try:
            sol = solve(replace(problem, budget_s={**problem.budget_s, device: budget}))
        except UserError:
            if k == 0:
                raise
            break                   # the corrected budget is below the fastest student: keep what we have
        measured = measure(sol)
        history.append(Round(budget, sol.predicted_s[device], measured, sol.score))
        tried.append((measured, sol))
        if target * (1 - 2 * tol) <= measured <= target * (1 + tol):
            break                   # close enough from below: a smaller budget would only lose score
        budget *= target / measured
    met = [(sol.score, -measured, sol) for measured, sol in tried if measured <= target * (1 + tol)]
    if met:
        return max(met, key=lambda t: (t[0], t[1]))[2], history
    return min(tried, key=lambda t: t[0])[1], history


def engine_measure(cfg, reference_table_s: float, rounds: int = 3, threads: int | None = None,
                   beside_int8: bool = False) -> Callable:
    """measure(solution) for `calibrated_solve`: the student assembled from the solution's op
    strings (untrained: weights do not change latency) and a reference, exported and timed in
    `rounds` alternating rounds on `cfg.profile.backend` (with the profile's `threads`); the median
    ratio × the table's figure for that reference. The reference is the fp32 teacher, or with
    `beside_int8` the teacher in plain int8: an `int8x=` budget is a ratio to that model, and the
    table's int8 teacher and fp32 teacher can have been timed minutes apart on a host whose speed
    moves (−18 % over one profile on an AMD EPYC, docs/RESULTS.md), so only a ratio to the model
    the budget names, timed in the same rounds, lands where it was asked."""
    from ..latency.backends import profile_backend
    from ..latency.export import export_onnx
    from ..latency.paired import time_beside
    from ..quant.layouts import layout_for, quantize_int8
    from ..student.plan import plan_onnx
    from ..teacher.stage import load_from_config

    teacher, d = load_from_config(cfg)
    backend = profile_backend(cfg.profile, threads)
    shape = (cfg.profile.batch, 3, teacher.resolution, teacher.resolution)
    tmp = Path(tempfile.mkdtemp(prefix="hant_calibrate_"))
    layout = layout_for(cfg.profile)
    if beside_int8:     # exported as the profile exports the teacher it times for `teacher_int8_s`
        t_prep = backend.prepare(quantize_int8(teacher.model.eval(), shape, tmp / "teacher.int8.onnx", layout=layout),
                                 "int8")
    else:
        t_prep = backend.prepare(export_onnx(teacher.model.eval(), shape, tmp / "teacher.onnx"))

    def measure(sol) -> float:
        if any(o.precision == "fp16" for o in sol.choices + list(sol.fixed_choices)):
            raise UserError("search.calibrate_rounds times fp32 and int8 students only for now "
                            "(profile.precisions without fp16)")
        s_prep = backend.prepare(plan_onnx(d, sol, shape, layout, tmp / "student.onnx"))
        pairs = time_beside(backend, t_prep, [s_prep], rounds, max_seconds=cfg.profile.max_seconds)[0]
        return statistics.median([s / t for t, s in pairs]) * reference_table_s

    return measure


__all__ = ["Round", "calibrated_solve", "engine_measure"]
