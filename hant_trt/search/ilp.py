"""The integer program of HANT, with kernel fusion (spans) and per-layer precision.

One binary variable per option = (span of consecutive slots, op, precision). Every slot is covered
by exactly one chosen option; the objective maximises the summed score; for every target device the
predicted latency (fixed parts + additivity correction + Σ chosen) stays within that device's
budget; optional params / MACs limits.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

from ..errors import UserError


@dataclass(frozen=True)
class Option:
    first: int
    last: int
    op: str
    precision: str
    score: float                          # higher is better (e.g. agreement − 100)
    latency_s: dict                       # device → seconds
    params: int = 0
    macs: int = 0
    signature: str = ""


@dataclass
class Problem:
    n_slots: int
    options: list[Option]
    budget_s: dict                        # device → seconds (whole model)
    fixed_s: dict                         # device → stem + head + correction
    max_params: int | None = None
    max_macs: int | None = None


@dataclass
class Solution:
    status: str
    choices: list[Option]
    predicted_s: dict                     # device → seconds
    score: float
    solver: str
    solve_seconds: float
    budget_s: dict = field(default_factory=dict)


def min_latency(p: Problem, device: str) -> float:
    """Smallest reachable latency on `device` (shortest path over slot coverings)."""
    best = [math.inf] * (p.n_slots + 1)
    best[0] = 0.0
    for end in range(p.n_slots):
        for o in p.options:
            if o.last == end and device in o.latency_s and best[o.first] < math.inf:
                best[end + 1] = min(best[end + 1], best[o.first] + o.latency_s[device])
    return p.fixed_s.get(device, 0.0) + best[p.n_slots]


def _check(p: Problem) -> None:
    covered = set()
    for o in p.options:
        if not 0 <= o.first <= o.last < p.n_slots:
            raise UserError(f"option {o.op} covers slots {o.first}-{o.last}, outside 0..{p.n_slots - 1}")
        covered.update(range(o.first, o.last + 1))
    missing = sorted(set(range(p.n_slots)) - covered)
    if missing:
        raise UserError(f"no candidate with a score and a latency for slot(s) {missing}: profile/score them first")
    for dev in p.budget_s:
        lo = min_latency(p, dev)
        if lo > p.budget_s[dev] * (1 + 1e-9):
            raise UserError(f"budget {p.budget_s[dev] * 1e3:.4f} ms on {dev} is infeasible: the smallest "
                            f"reachable latency is {lo * 1e3:.4f} ms")


def solve(p: Problem, solver: str = "cbc", time_limit: float = 60.0) -> Solution:
    import pulp

    _check(p)
    t0 = time.perf_counter()
    prob = pulp.LpProblem("hant", pulp.LpMaximize)
    xs = [pulp.LpVariable(f"x{i}", cat="Binary") for i in range(len(p.options))]
    # tiny latency tie-break so equal scores resolve to the faster, deterministically
    lat_scale = max((sum(o.latency_s.values()) for o in p.options), default=1.0) or 1.0
    prob += pulp.lpSum((o.score - 1e-7 * sum(o.latency_s.values()) / lat_scale) * x for o, x in zip(p.options, xs))
    for s in range(p.n_slots):
        prob += pulp.lpSum(x for o, x in zip(p.options, xs) if o.first <= s <= o.last) == 1, f"cover{s}"
    for k, (dev, budget) in enumerate(sorted(p.budget_s.items())):
        prob += (pulp.lpSum(o.latency_s[dev] * x for o, x in zip(p.options, xs) if dev in o.latency_s)
                 + p.fixed_s.get(dev, 0.0) <= budget), f"latency{k}"
        for o, x in zip(p.options, xs):  # an option without a latency on a target can't be chosen
            if dev not in o.latency_s:
                prob += x == 0
    if p.max_params is not None:
        prob += pulp.lpSum(o.params * x for o, x in zip(p.options, xs)) <= p.max_params, "params"
    if p.max_macs is not None:
        prob += pulp.lpSum(o.macs * x for o, x in zip(p.options, xs)) <= p.max_macs, "macs"
    if solver == "highs":
        try:
            import highspy  # noqa: F401
        except ImportError:
            raise UserError("solver 'highs' needs highspy: pip install highspy") from None
        cmd = pulp.HiGHS(msg=False, timeLimit=time_limit)
    elif solver == "cbc":
        cmd = pulp.PULP_CBC_CMD(msg=False, timeLimit=time_limit, threads=1)
    else:
        raise UserError(f"unknown solver '{solver}' (known: cbc, highs)")
    prob.solve(cmd)
    status = pulp.LpStatus[prob.status]
    if status != "Optimal":
        raise UserError(f"the integer program ended with status '{status}' (time limit {time_limit}s?)")
    chosen = [o for o, x in zip(p.options, xs) if (x.value() or 0) > 0.5]
    chosen.sort(key=lambda o: o.first)
    pred = {dev: p.fixed_s.get(dev, 0.0) + sum(o.latency_s[dev] for o in chosen) for dev in p.budget_s}
    return Solution(status, chosen, pred, sum(o.score for o in chosen), solver, time.perf_counter() - t0,
                    dict(p.budget_s))
