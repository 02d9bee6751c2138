"""The integer program of HANT, with kernel fusion (spans) and per-layer precision.

One binary variable per option = (span of consecutive slots, op, precision). Every slot is covered
by exactly one chosen option (so spans never overlap); the objective maximises the summed score;
for every target device the predicted latency (fixed parts + additivity correction + Σ chosen)
stays within that device's budget; optional limits on the summed params / MACs of the chosen
options.

Works on plain dataclasses; PuLP is imported inside `solve` and HiGHS only when asked for.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import time
import warnings
from dataclasses import dataclass, field, replace

from ..errors import UserError

SOLVERS = ("cbc", "highs")
# Equal scores are broken deterministically: faster first, then the canonical preference below.
_PRECISION_ORDER = {"fp32": 0, "fp16": 1, "bf16": 1, "int8": 2}


@dataclass(frozen=True)
class Option:
    """One choice the ILP can make: `op` at `precision` replacing slots first..last (inclusive).

    score: higher is better, 0 for the teacher's own block (e.g. agreement − 100).
    latency_s: device fingerprint → measured seconds of this option on that device.
    params, macs: of the option (default 0: not limited). signature: the candidate's table key.
    """

    first: int
    last: int
    op: str
    precision: str
    score: float
    latency_s: dict
    params: int = 0
    macs: int = 0
    signature: str = ""

    @property
    def key(self) -> tuple:
        return (self.first, self.last, self.op, self.precision)

    def preference(self) -> tuple:
        """Canonical order among otherwise equal options: the teacher's block, fp32, shorter spans
        (fewer changes to the teacher), then by name."""
        return (self.op != "keep", _PRECISION_ORDER.get(self.precision, 9), self.last - self.first,
                self.first, self.op, self.precision)


@dataclass
class Problem:
    """n_slots: slots 0..n_slots-1 to cover. options: the candidates (any order).
    budget_s: device → whole-model latency budget in seconds (one constraint per device).
    fixed_s: device → seconds that every student pays (stem + head + additivity correction).
    max_params, max_macs: limits on Σ params / Σ MACs of the chosen options (None: no limit).
    pairs: interaction terms (key_a, key_b, score): `score` is added when both options are chosen
    (negative: the two together lose more than their own scores say — e.g. two consecutive
    `skip`s of one stage). Options named in a pair are exempt from dominance pruning.
    fixed_options: precision choices for the stem (first = last = -1) and the head (first = last =
    n_slots): exactly one per part is chosen; a part listed here is not in `fixed_s`.
    junction_saving_s: j = 0..n_slots → device → seconds saved when the parts on both sides of
    junction j (the input of slot j; j = n_slots: the head's input) both run int8: timed alone,
    each int8 part pays a Q at its entry and a DQ at its exit, which vanish between int8
    neighbours (`latency.junction`). Empty: no such saving.
    junction_mixed_s: j = 0..n_slots → device → seconds paid when one side of junction j is int8
    and the other a float part that computes (not a `skip`, which only passes its input on): what
    a float island inside int8 parts costs beyond its standalone timing (`latency.islands`).
    Empty: no such cost.
    at_most: (option keys, n): at most n of these options are chosen — e.g. at most one dropped
    block per stage of the teacher, where dropped blocks compound (docs/RESULTS.md). Options named
    here are exempt from dominance pruning (the one beating them may be the one a limit excludes)."""

    n_slots: int
    options: list[Option]
    budget_s: dict
    fixed_s: dict
    max_params: float | None = None
    max_macs: float | None = None
    pairs: list = field(default_factory=list)
    fixed_options: list = field(default_factory=list)
    junction_saving_s: list = field(default_factory=list)
    at_most: list = field(default_factory=list)
    junction_mixed_s: list = field(default_factory=list)


def within_limits(p: Problem, chosen: list[Option]) -> bool:
    """Whether `chosen` respects every `at_most` limit of `p`."""
    keys = {o.key for o in chosen}
    return all(sum(k in keys for k in group) <= n for group, n in p.at_most)


def is_int8(o: Option) -> bool:
    return o.precision == "int8"


def kind(o: Option) -> str:
    """What a part is at a junction: "int8", "skip" (a float `skip` passes its input on: no
    conversion of its own) or "float"."""
    return "int8" if is_int8(o) else "skip" if o.op == "skip" else "float"


def _sides(p: Problem, chosen: list[Option], fixed_chosen: list[Option]) -> tuple[dict, dict]:
    """(left, right): junction j → the `kind` of the part ending just before it / starting at it
    (the stem and head: "float" unless chosen otherwise)."""
    left = {0: "float", **{o.last + 1: kind(o) for o in chosen}}
    right = {p.n_slots: "float", **{o.first: kind(o) for o in chosen}}
    for f in fixed_chosen:
        if f.first < 0:
            left[0] = kind(f)
        else:
            right[p.n_slots] = kind(f)
    return left, right


def _junction_term(p: Problem, j: int, left: str, right: str, device: str) -> float:
    """Seconds junction j adds to the parts' sum on `device`: − its saving between two int8 parts,
    + its mixed cost between an int8 and a float part, 0 otherwise."""
    if left == right == "int8" and j < len(p.junction_saving_s):
        return -max(0.0, p.junction_saving_s[j].get(device, 0.0))
    if {left, right} == {"int8", "float"} and j < len(p.junction_mixed_s):
        return max(0.0, p.junction_mixed_s[j].get(device, 0.0))
    return 0.0


def junction_saving(p: Problem, chosen: list[Option], fixed_chosen: list[Option], device: str) -> float:
    """Seconds the junctions save on `device` in this selection: the savings between int8
    neighbours less the costs of mixed ones."""
    if not (p.junction_saving_s or p.junction_mixed_s):
        return 0.0
    left, right = _sides(p, chosen, fixed_chosen)
    return -sum(_junction_term(p, j, left.get(j, "float"), right.get(j, "float"), device)
                for j in range(p.n_slots + 1))


def predict(p: Problem, chosen: list[Option], fixed_chosen: list[Option], device: str) -> float:
    """A selection's whole-model latency on `device`: fixed + Σ parts − junction savings + mixed
    junctions' costs."""
    return (p.fixed_s.get(device, 0.0) + sum(o.latency_s[device] for o in chosen)
            + sum(o.latency_s[device] for o in fixed_chosen) - junction_saving(p, chosen, fixed_chosen, device))


def pair_score(pairs: list, chosen: list[Option]) -> float:
    """Σ of the interaction terms whose two options are both in `chosen`."""
    keys = {o.key for o in chosen}
    return sum(v for a, b, v in pairs if a in keys and b in keys)


@dataclass
class Solution:
    """The selection and its predicted figures.

    status: "optimal", or "feasible (time limit)" when the solver stopped before proving optimality.
    choices: chosen options sorted by first slot. predicted_s: device → fixed + Σ chosen latency.
    score: Σ chosen scores. budget_s: device → budget used. solver, solve_seconds: how it was found.
    n_options / n_variables: options given / binary variables left after dominance pruning.
    The remaining fields are context filled by the stage (primary device, teacher latencies, metric,
    budget text); they default to empty."""

    status: str
    choices: list[Option]
    predicted_s: dict
    score: float
    budget_s: dict
    solver: str
    solve_seconds: float
    n_options: int = 0
    n_variables: int = 0
    device: str = ""
    teacher_s: dict = field(default_factory=dict)
    metric: str = ""
    budget: str = ""
    fixed_choices: list = field(default_factory=list)   # the stem's / head's precision, when chosen

    @property
    def params(self) -> int:
        return sum(o.params for o in self.choices)

    @property
    def macs(self) -> int:
        return sum(o.macs for o in self.choices)

    @property
    def primary(self) -> str:
        return self.device or sorted(self.predicted_s)[0]

    def to_dict(self) -> dict:
        """The JSON the build stage consumes (`solution.json`); figures on the primary device at top
        level, every device under *_by_device."""
        dev = self.primary
        pred, teacher = self.predicted_s.get(dev), self.teacher_s.get(dev)
        return {
            "format": 1, "status": self.status, "solver": self.solver,
            "solve_seconds": round(self.solve_seconds, 4), "metric": self.metric, "budget": self.budget,
            "device": dev, "devices": sorted(self.predicted_s),
            "budget_s": self.budget_s.get(dev), "budget_s_by_device": dict(self.budget_s),
            "predicted_s": pred, "predicted_s_by_device": dict(self.predicted_s),
            "teacher_s": teacher, "teacher_s_by_device": dict(self.teacher_s),
            "predicted_speedup": teacher / pred if teacher and pred else None,
            "score": self.score, "params": self.params, "macs": self.macs,
            "n_options": self.n_options, "n_variables": self.n_variables,
            "choices": [_option_dict(o, dev) for o in self.choices],
            "fixed_parts": [{"part": "stem" if o.first < 0 else "head", **_option_dict(o, dev)}
                            for o in self.fixed_choices],
        }

    @classmethod
    def from_dict(cls, d: dict) -> "Solution":
        """Inverse of `to_dict` (used when the stage is skipped and by `format_table`)."""
        def option(c):
            return Option(int(c["first"]), int(c["last"]), c["op"], c.get("precision", "fp32"), float(c["score"]),
                          dict(c.get("predicted_s_by_device") or {d["device"]: c["predicted_s"]}),
                          int(c.get("params", 0)), int(c.get("macs", 0)), c.get("signature", ""))

        try:
            choices = [option(c) for c in d["choices"]]
            fixed_choices = [option(c) for c in d.get("fixed_parts") or []]
            budget = d.get("budget_s_by_device")
            if budget is None:
                budget = d["budget_s"] if isinstance(d["budget_s"], dict) else {d["device"]: d["budget_s"]}
            return cls(status=d["status"], choices=choices,
                       predicted_s=dict(d.get("predicted_s_by_device") or {d["device"]: d["predicted_s"]}),
                       score=float(d["score"]), budget_s=dict(budget), solver=d["solver"],
                       solve_seconds=float(d["solve_seconds"]), n_options=int(d.get("n_options", 0)),
                       n_variables=int(d.get("n_variables", 0)), device=d["device"],
                       teacher_s=dict(d.get("teacher_s_by_device") or {}), metric=d.get("metric", ""),
                       budget=d.get("budget", ""), fixed_choices=fixed_choices)
        except (KeyError, TypeError, ValueError) as exc:
            raise UserError(f"solution.json is malformed ({exc!r}): run `hant-trt search` again") from None


def _option_dict(o: Option, dev: str) -> dict:
    return {"first": o.first, "last": o.last, "op": o.op, "precision": o.precision, "signature": o.signature,
            "predicted_s": o.latency_s.get(dev), "predicted_s_by_device": dict(o.latency_s), "score": o.score,
            "params": o.params, "macs": o.macs}


def fixed_groups(p: Problem) -> list[list[Option]]:
    """The stem's and the head's precision options, one list per part that has any."""
    groups: dict[int, list[Option]] = {}
    for o in p.fixed_options:
        groups.setdefault(o.first, []).append(o)
    return [groups[k] for k in sorted(groups)]


# -- coverings by dynamic programming (bounds and messages, not the optimum) ----------------------

def _cover_extreme(n_slots: int, options: list[Option], cost, pick=min) -> float:
    """min (or max) of Σ cost(o) over all ways to cover 0..n_slots-1; inf when none exists."""
    worst = math.inf if pick is min else -math.inf
    best = [worst] * (n_slots + 1)
    best[0] = 0.0
    by_end: dict[int, list[Option]] = {}
    for o in options:
        by_end.setdefault(o.last, []).append(o)
    for end in range(n_slots):
        for o in by_end.get(end, ()):
            c = cost(o)
            if c is None or not math.isfinite(best[o.first]):
                continue
            best[end + 1] = pick(best[end + 1], best[o.first] + c)
    return best[n_slots] if math.isfinite(best[n_slots]) else math.inf


def min_latency(p: Problem, device: str) -> float:
    """Smallest reachable predicted latency (s) on `device`, ignoring every other constraint
    (junction terms included: the state of the walk is the `kind` of the last part)."""
    groups = {g[0].first: g for g in fixed_groups(p)}
    best: list[dict] = [dict() for _ in range(p.n_slots + 1)]
    for o in groups.get(-1, [Option(-1, -1, "stem", "fp32", 0.0, {device: 0.0})]):
        if device in o.latency_s:
            best[0][kind(o)] = min(best[0].get(kind(o), math.inf), o.latency_s[device])
    by_first: dict[int, list[Option]] = {}
    for o in p.options:
        by_first.setdefault(o.first, []).append(o)
    for pos in range(p.n_slots):
        for last, cost in list(best[pos].items()):
            for o in by_first.get(pos, ()):
                lat = o.latency_s.get(device)
                if lat is None or o.last >= p.n_slots:
                    continue
                c = cost + lat + _junction_term(p, pos, last, kind(o), device)
                if c < best[o.last + 1].get(kind(o), math.inf):
                    best[o.last + 1][kind(o)] = c
    ends = [math.inf]
    for last, cost in best[p.n_slots].items():
        for h in groups.get(p.n_slots, [Option(p.n_slots, p.n_slots, "head", "fp32", 0.0, {device: 0.0})]):
            if device in h.latency_s:
                ends.append(cost + h.latency_s[device] + _junction_term(p, p.n_slots, last, kind(h), device))
    return p.fixed_s.get(device, 0.0) + min(ends)


def max_score(p: Problem) -> float:
    """Best reachable summed score with no constraint at all (an upper bound for any budget)."""
    return (_cover_extreme(p.n_slots, p.options, lambda o: o.score, pick=max)
            + sum(max(o.score for o in g) for g in fixed_groups(p)))


# -- dominance pruning ------------------------------------------------------------------------------

def prune_dominated(options: list[Option], devices: list[str], params: bool = False,
                    macs: bool = False, by_int8: bool = False, by_kind: bool = False) -> list[Option]:
    """Drop options that another option on the same span beats or equals on everything.

    d dominates o when both cover the same slots, d.score ≥ o.score and d needs no more latency on
    any of `devices` (nor params / MACs when those are limited). Swapping o for d in any feasible
    selection keeps it feasible and does not lower the score, so the optimum is unchanged; among
    exact equals the canonical `Option.preference` survives, which is what makes ties deterministic.
    Options missing a latency on one of `devices` cannot be chosen and are dropped. by_int8: int8
    and other options are compared only among themselves (with junction savings an int8 option's
    latency depends on its neighbours). by_kind: options of each `kind` only among themselves (with
    mixed-junction costs a float part's latency depends on its neighbours too, a skip's does not).
    Returns the survivors sorted by (first, last, op, precision).
    """
    groups: dict[tuple, list[Option]] = {}
    for o in options:
        if all(d in o.latency_s for d in devices):
            group = kind(o) if by_kind else by_int8 and is_int8(o)
            groups.setdefault((o.first, o.last, group), []).append(o)

    def resources(o: Option) -> tuple:
        r = tuple(o.latency_s[d] for d in devices)
        return r + ((o.params,) if params else ()) + ((o.macs,) if macs else ())

    kept: list[Option] = []
    for group in groups.values():
        # by score descending, then resources: any dominator of o comes before o
        group.sort(key=lambda o: (-o.score, resources(o), o.preference()))
        if len(devices) + params + macs == 1:
            # one resource: o survives iff it is strictly cheaper than everything scoring at least as well
            cheapest = math.inf
            for o in group:
                r = resources(o)[0]
                if r < cheapest:
                    cheapest = r
                    kept.append(o)
            continue
        frontier: list[tuple[tuple, Option]] = []
        for o in group:
            r = resources(o)
            if not any(all(a <= b for a, b in zip(fr, r)) for fr, _ in frontier):
                frontier.append((r, o))
        kept.extend(o for _, o in frontier)
    kept.sort(key=lambda o: o.key)
    return kept


# -- validation and infeasibility messages ---------------------------------------------------------

def _validate(p: Problem) -> None:
    if p.n_slots <= 0:
        raise UserError("the teacher has no slots to choose for: check teacher.json")
    if not p.budget_s:
        raise UserError("no target device with a latency budget: run `hant-trt profile` first")
    covered: set[int] = set()
    for o in p.options:
        if not 0 <= o.first <= o.last < p.n_slots:
            raise UserError(f"option {o.op} covers slots {o.first}-{o.last}, outside 0..{p.n_slots - 1}: "
                            "the tables belong to another teacher")
        if not math.isfinite(o.score) or any(not (math.isfinite(v) and v >= 0) for v in o.latency_s.values()):
            raise UserError(f"option {o.op} on slots {o.first}-{o.last} has a non-finite score or latency: "
                            "re-run score/profile")
        if all(d in o.latency_s for d in p.budget_s):
            covered.update(range(o.first, o.last + 1))
    missing = sorted(set(range(p.n_slots)) - covered)
    if missing:
        raise UserError(f"no candidate with both a score and a latency on every target device for slot(s) "
                        f"{missing}: run score/profile for them first")
    for name, limit in (("params", p.max_params), ("MACs", p.max_macs)):
        if limit is not None and (not math.isfinite(limit) or limit <= 0):
            raise UserError(f"the {name} limit must be a positive number, got {limit}")


def infeasibility_message(p: Problem) -> str:
    """One line saying which constraint cannot be met and the smallest reachable value."""
    for dev, budget in sorted(p.budget_s.items()):
        lo = min_latency(p, dev)
        if lo > budget:
            return (f"latency budget {budget * 1e3:.4f} ms on {dev} is infeasible: the smallest reachable latency "
                    f"is {lo * 1e3:.4f} ms (fixed parts {p.fixed_s.get(dev, 0.0) * 1e3:.4f} ms included); "
                    "raise the budget")
    for name, limit, attr in (("params", p.max_params, "params"), ("MACs", p.max_macs, "macs")):
        if limit is not None:
            lo = _cover_extreme(p.n_slots, p.options, lambda o, a=attr: getattr(o, a))
            if lo > limit:
                return f"{name} limit {limit:.4g} is infeasible: the smallest reachable total is {lo:.4g}; raise it"
    lows = ", ".join(f"{min_latency(p, d) * 1e3:.4f} ms on {d}" for d in sorted(p.budget_s))
    return ("the budgets cannot all be met by one selection (each alone is reachable: smallest latencies "
            f"{lows}); raise a budget or drop a device or a params/MACs limit")


# -- the integer program ------------------------------------------------------------------------------

def _make_solver(name: str, time_limit: float):
    import pulp

    if time_limit is None or time_limit <= 0:
        raise UserError(f"search time_limit must be positive seconds, got {time_limit}")
    if name == "cbc":
        # one thread: CBC is deterministic then, and the machine is shared
        kwargs = dict(msg=False, timeLimit=time_limit, threads=1, gapRel=0.0)
        bundled = getattr(pulp, "PULP_CBC_CMD", None)
        if bundled is not None:
            # PuLP 3.x bundles CBC but announces its removal in 4.0; the bundled one is the default
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                cmd = bundled(**kwargs)
            if cmd.available():
                return cmd
        cmd = pulp.COIN_CMD(**kwargs)
        if not cmd.available():
            raise UserError("no CBC solver found: pip install 'pulp[cbc]', or use solver 'highs' (pip install highspy)")
        return cmd
    if name == "highs":
        try:
            import highspy  # noqa: F401
        except ImportError:
            raise UserError("solver 'highs' needs highspy: pip install highspy (or use solver 'cbc')") from None
        # HiGHS stops at a 1e-4 relative gap by default: ask for the proven optimum
        return pulp.HiGHS(msg=False, timeLimit=time_limit, threads=1, gapRel=0.0, gapAbs=1e-9)
    raise UserError(f"unknown solver '{name}' (known: {', '.join(SOLVERS)})")


def solve(p: Problem, solver: str = "cbc", time_limit: float = 60.0, prune: bool = True) -> Solution:
    """Maximise Σ score under every constraint of `p`.

    solver: "cbc" (PuLP's bundled CBC, default) or "highs" (needs highspy).
    time_limit: seconds for the solver (default 60); a solution found but not proven optimal in time
    is returned with status "feasible (time limit)".
    prune: drop dominated options first (default True; the optimum is the same either way).
    Raises UserError when the constraints cannot be met (naming the smallest reachable latency) or
    the solver finds nothing in time. Same inputs (in any order) → same answer.
    """
    import pulp

    _validate(p)
    cmd = _make_solver(solver, time_limit)
    t0 = time.perf_counter()
    devices = sorted(p.budget_s)
    # an option without a latency on some target cannot be chosen: leave it out of everything
    usable = replace(p, options=[o for o in p.options if all(d in o.latency_s for d in devices)],
                     fixed_options=[o for o in p.fixed_options if all(d in o.latency_s for d in devices)], pairs=[])
    # an option in an interaction term neither dominates (its partner may cost it more than its score
    # says) nor is dominated (the one beating it alone may be the one a partner penalises)
    paired = {k for a, b, _ in p.pairs for k in (a, b)} | {k for group, _ in p.at_most for k in group}
    if prune:
        opts = prune_dominated([o for o in usable.options if o.key not in paired], devices,
                               p.max_params is not None, p.max_macs is not None, bool(p.junction_saving_s),
                               bool(p.junction_mixed_s))
        opts = sorted(opts + [o for o in usable.options if o.key in paired], key=lambda o: o.key)
    else:
        opts = sorted(usable.options, key=lambda o: o.key)
    index = {o.key: i for i, o in enumerate(opts)}
    pairs = [(index[a], index[b], float(v)) for a, b, v in p.pairs if a in index and b in index and v]
    if any(min_latency(usable, dev) > p.budget_s[dev] for dev in devices):
        raise UserError(infeasibility_message(usable))

    # Objective scaled so the largest |score| is 1e4: CBC ignores improvements below ~1e-5 absolute.
    # The tie-break term (≤ 1e-2 over any covering) prefers, among equal scores, lower latency on the
    # first device, then the canonical preference order; scores closer than 1e-6 × max|score| count
    # as equal.
    scale = 1e4 / max(max((abs(o.score) for o in opts), default=0.0),
                      max((abs(v) for _, _, v in pairs), default=0.0), 1e-12)
    primary = devices[0]
    lat_span = _cover_extreme(p.n_slots, opts, lambda o: o.latency_s[primary], pick=max) or 1.0
    rank = {o.key: i for i, o in enumerate(sorted(opts, key=Option.preference))}
    n_rank = max(1, len(opts)) * p.n_slots

    def tie(o: Option) -> float:
        return 1e-2 * (0.999 * o.latency_s[primary] / lat_span + 0.001 * rank[o.key] / n_rank)

    prob = pulp.LpProblem("hant_selection", pulp.LpMaximize)

    def new_var(name: str, **kw):
        if hasattr(prob, "add_variable"):  # PuLP ≥ 3.3 (the LpVariable constructor is deprecated there)
            return prob.add_variable(name, **kw)
        return pulp.LpVariable(name, **kw)

    def cont_var(name: str):
        return new_var(name, lowBound=0, upBound=1)

    xs = [new_var(f"x{i}", cat=pulp.LpBinary) for i in range(len(opts))]
    # z = x_a AND x_b, linearised: a penalty needs only z ≥ x_a + x_b − 1 (maximising pushes z to
    # its floor), a bonus only z ≤ x_a, z ≤ x_b; z may stay continuous in [0, 1]
    zs = []
    for n, (a, b, v) in enumerate(pairs):
        z = cont_var(f"z{n}")
        if v < 0:
            prob += z >= xs[a] + xs[b] - 1, f"pair{n}"
        else:
            prob += z <= xs[a], f"pair{n}a"
            prob += z <= xs[b], f"pair{n}b"
        zs.append((z, v * scale))
    fixed = usable.fixed_options
    fxs = [new_var(f"f{i}", cat=pulp.LpBinary) for i in range(len(fixed))]
    prob += pulp.LpAffineExpression([(x, o.score * scale - tie(o)) for o, x in zip(opts, xs)] + zs
                                    + [(x, o.score * scale) for o, x in zip(fixed, fxs)])
    for s in range(p.n_slots):
        prob += pulp.LpAffineExpression([(x, 1) for o, x in zip(opts, xs) if o.first <= s <= o.last]) == 1, f"cover{s}"
    for g in sorted({o.first for o in fixed}):
        prob += pulp.LpAffineExpression([(x, 1) for o, x in zip(fixed, fxs) if o.first == g]) == 1, f"fixed{g}"
    # the stem ends at junction 0 (last = −1), the head starts at junction n_slots: one rule for all
    parts = list(zip(opts, xs)) + list(zip(fixed, fxs))

    def ending(j: int, k: str) -> list:
        return [x for o, x in parts if o.last + 1 == j and kind(o) == k]

    def starting(j: int, k: str) -> list:
        return [x for o, x in parts if o.first == j and kind(o) == k]

    # y_j ≤ [part before junction j is int8], y_j ≤ [part after it is int8]: the latency constraint
    # pulls y_j up, so it is 1 exactly when both sides are int8 (the sums are 0 or 1: one cover)
    ys = []
    for j, sav in enumerate(p.junction_saving_s):
        left, right = ending(j, "int8"), starting(j, "int8")
        if not any(v > 0 for v in sav.values()) or not left or not right:
            continue
        y = cont_var(f"y{j}")
        prob += y <= pulp.lpSum(left), f"junction{j}l"
        prob += y <= pulp.lpSum(right), f"junction{j}r"
        ys.append((y, {d: -max(0.0, v) for d, v in sav.items()}))
    # m_j ≥ [int8 before j] + [computing float after j] − 1, and the other way round: the latency
    # constraint pulls m_j down, so it is 1 exactly at a mixed junction (a stem or head that is not
    # a choice runs at the base precision: a float part, always there)
    fixed_stem = not any(o.first < 0 for o in fixed)
    fixed_head = not any(o.first == p.n_slots for o in fixed)
    for j, cost in enumerate(p.junction_mixed_s):
        if not any(v > 0 for v in cost.values()):
            continue
        left_float = [1] if j == 0 and fixed_stem else ending(j, "float")
        right_float = [1] if j == p.n_slots and fixed_head else starting(j, "float")
        m = cont_var(f"m{j}")
        prob += m >= pulp.lpSum(ending(j, "int8")) + pulp.lpSum(right_float) - 1, f"mixed{j}a"
        prob += m >= pulp.lpSum(left_float) + pulp.lpSum(starting(j, "int8")) - 1, f"mixed{j}b"
        ys.append((m, {d: max(0.0, v) for d, v in cost.items()}))
    for k, dev in enumerate(devices):
        # milliseconds keep coefficients near 1 (solver tolerances are absolute, ~1e-7)
        room_ms = (p.budget_s[dev] - p.fixed_s.get(dev, 0.0)) * 1e3
        lat_ms = pulp.LpAffineExpression([(x, o.latency_s[dev] * 1e3) for o, x in zip(opts, xs)]
                                         + [(x, o.latency_s[dev] * 1e3) for o, x in zip(fixed, fxs)]
                                         + [(y, added.get(dev, 0.0) * 1e3) for y, added in ys])
        prob += lat_ms <= room_ms, f"latency{k}"
    for n, (group, most) in enumerate(p.at_most):
        members = [xs[index[k]] for k in group if k in index]
        if len(members) > most:
            prob += pulp.lpSum(members) <= most, f"at_most{n}"
    if p.max_params is not None:
        prob += pulp.LpAffineExpression([(x, o.params / 1e6) for o, x in zip(opts, xs)]) <= p.max_params / 1e6, "params"
    if p.max_macs is not None:
        prob += pulp.LpAffineExpression([(x, o.macs / 1e9) for o, x in zip(opts, xs)]) <= p.max_macs / 1e9, "macs"

    with _quiet_stdout(solver == "highs"):
        prob.solve(cmd)
    elapsed = time.perf_counter() - t0
    if prob.sol_status == pulp.LpSolutionInfeasible or prob.status == pulp.LpStatusInfeasible:
        raise UserError(infeasibility_message(usable))
    if prob.sol_status not in (pulp.LpSolutionOptimal, pulp.LpSolutionIntegerFeasible):
        raise UserError(f"the {solver} solver found no selection within {time_limit:g}s "
                        f"(status '{pulp.LpStatus[prob.status]}'): raise search.time_limit")
    chosen = sorted((o for o, x in zip(opts, xs) if (x.value() or 0.0) > 0.5), key=lambda o: o.first)
    fixed_chosen = sorted((o for o, x in zip(fixed, fxs) if (x.value() or 0.0) > 0.5), key=lambda o: o.first)
    _verify(p, chosen, fixed_chosen)
    status = "optimal" if prob.sol_status == pulp.LpSolutionOptimal else "feasible (time limit)"
    pred = {d: predict(p, chosen, fixed_chosen, d) for d in devices}
    # rounded as solution.json stores it, so a Solution and its JSON print the same table
    return Solution(status, chosen, pred, sum(o.score for o in chosen + fixed_chosen) + pair_score(p.pairs, chosen),
                    dict(p.budget_s), solver, round(elapsed, 4),
                    n_options=len(p.options) + len(p.fixed_options), n_variables=len(opts) + len(fixed),
                    fixed_choices=fixed_chosen)


@contextlib.contextmanager
def _quiet_stdout(active: bool):
    """Silence the native banner HiGHS prints on file descriptor 1 the first time it loads
    (`msg=False` only reaches it after construction)."""
    if not active:
        yield
        return
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 1)
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


def _verify(p: Problem, chosen: list[Option], fixed_chosen: list[Option] = ()) -> None:
    """Re-check the solver's answer in plain arithmetic: a wrong answer must not reach `build`."""
    covered = sorted(s for o in chosen for s in range(o.first, o.last + 1))
    if covered != list(range(p.n_slots)):
        raise RuntimeError(f"solver returned an invalid covering {[(o.first, o.last) for o in chosen]}")
    if sorted(o.first for o in fixed_chosen) != sorted({o.first for o in p.fixed_options}):
        raise RuntimeError(f"solver chose {[(o.op, o.precision) for o in fixed_chosen]} for the stem and head")
    for dev, budget in p.budget_s.items():
        pred = predict(p, chosen, list(fixed_chosen), dev)
        if pred > budget * (1 + 1e-7) + 1e-12:
            raise RuntimeError(f"solver answer exceeds the budget on {dev}: {pred} > {budget}")
    for limit, attr in ((p.max_params, "params"), (p.max_macs, "macs")):
        if limit is not None and sum(getattr(o, attr) for o in chosen) > limit * (1 + 1e-7):
            raise RuntimeError(f"solver answer exceeds the {attr} limit")
    if not within_limits(p, chosen):
        raise RuntimeError("solver answer breaks an at-most limit")


__all__ = ["Option", "Problem", "Solution", "SOLVERS", "solve", "min_latency", "max_score", "prune_dominated",
           "infeasibility_message", "pair_score", "predict", "junction_saving", "fixed_groups", "is_int8", "kind",
           "within_limits"]
