"""Pareto sweep: solve the same problem for N latency budgets and draw the frontier."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path

from .. import atomic
from ..errors import UserError
from .ilp import Problem, Solution, _cover_extreme, fixed_groups, min_latency, solve


@dataclass
class ParetoPoint:
    """One solved budget. budget_s / predicted_s: on the swept device (seconds); score: Σ chosen;
    predicted_s_by_device: every constrained device; choices: [first, last, op, precision] each."""

    budget_s: float
    predicted_s: float
    score: float
    status: str
    device: str
    predicted_s_by_device: dict = field(default_factory=dict)
    choices: list = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"budget_s": self.budget_s, "predicted_s": self.predicted_s, "score": self.score,
                "status": self.status, "device": self.device,
                "predicted_s_by_device": self.predicted_s_by_device, "choices": self.choices}


def sweep_budgets(problem: Problem, n: int, device: str, solver: str = "cbc",
                  time_limit: float = 60.0) -> list[float]:
    """n budgets (s) on `device`, evenly spaced from the smallest reachable latency to the latency of
    the best-scoring selection (beyond it the frontier is flat). The other devices keep their
    budgets. n: at least 1 (1 → just the best-scoring end)."""
    if n < 1:
        raise UserError(f"sweep needs at least 1 budget, got {n}")
    usable = replace(problem, options=[o for o in problem.options if all(d in o.latency_s for d in problem.budget_s)])
    lo = min_latency(usable, device)
    if not math.isfinite(lo):
        raise UserError(f"no complete selection has a latency on {device}")
    # the unconstrained end: a budget no selection can exceed on `device`
    loosest = problem.fixed_s.get(device, 0.0) + _cover_extreme(
        usable.n_slots, usable.options, lambda o: o.latency_s[device], pick=max) + sum(
        max(o.latency_s.get(device, 0.0) for o in g) for g in fixed_groups(usable))
    top = solve(_with_budget(problem, device, loosest * (1 + 1e-6) + 1e-9), solver, time_limit)
    hi = max(top.predicted_s[device], lo)
    if n == 1:
        return [hi]
    return [lo + (hi - lo) * i / (n - 1) for i in range(n)]


def _with_budget(p: Problem, device: str, budget: float) -> Problem:
    return replace(p, budget_s={**p.budget_s, device: budget})


def pareto_sweep(problem: Problem, n: int, device: str | None = None, solver: str = "cbc",
                 time_limit: float = 60.0) -> tuple[list[ParetoPoint], int]:
    """Solve for `n` budgets on `device` (default: the first device in sorted order), the other
    devices and params/MACs limits unchanged. Returns (points, n_infeasible): budgets that the other
    constraints make infeasible are skipped and counted."""
    device = device or sorted(problem.budget_s)[0]
    points, skipped = [], 0
    for b in sweep_budgets(problem, n, device, solver, time_limit):
        try:
            # 1e-9: the smallest budget is exactly the fastest selection's latency
            s: Solution = solve(_with_budget(problem, device, b * (1 + 1e-9)), solver, time_limit)
        except UserError as exc:
            if "infeasible" in str(exc) or "cannot all be met" in str(exc):
                skipped += 1
                continue
            raise
        points.append(ParetoPoint(b, s.predicted_s[device], s.score, s.status, device, dict(s.predicted_s),
                                  [[o.first, o.last, o.op, o.precision] for o in s.choices]))
    return points, skipped


def plot_pareto(points: list[ParetoPoint], path: str | Path, chosen: Solution | None = None,
                teacher_s: float | None = None, metric: str = "") -> Path:
    """Write the frontier as a PNG (atomically). chosen: the configured solution, drawn as a star;
    teacher_s: the teacher's measured latency, drawn at score 0; metric: y-axis label."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    pts = sorted(points, key=lambda p: p.predicted_s)
    ax.step([p.predicted_s * 1e3 for p in pts], [p.score for p in pts], "o-", where="post", label="frontier")
    if chosen is not None:
        dev = chosen.primary
        ax.plot([chosen.predicted_s[dev] * 1e3], [chosen.score], "r*", ms=14, label="chosen")
        if dev in chosen.budget_s:
            ax.axvline(chosen.budget_s[dev] * 1e3, color="r", ls=":", lw=1, label="budget")
    if teacher_s:
        ax.plot([teacher_s * 1e3], [0.0], "ks", label="teacher (measured)")
    ax.set_xlabel(f"predicted latency (ms){' on ' + pts[0].device if pts else ''}"[:80])
    ax.set_ylabel(f"predicted score (Σ over slots{', ' + metric if metric else ''})")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    try:
        atomic.write_with(Path(path), lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    finally:
        plt.close(fig)
    return Path(path)
