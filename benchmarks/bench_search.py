"""Solve time of the selection ILP at the paper's scale, and how it grows.

    .venv/bin/python benchmarks/bench_search.py [--repeats 5] [--solver cbc|highs] [--no-unpruned]

Base instance: 16 slots x 197 candidates x 2 precisions (fp32, int8) + 15 two-slot spans x 50
candidates, random but plausible tables (seeded): a cheaper candidate tends to score lower, int8 is
~0.6x the latency for a small extra loss. Budget at 60 % of the way from the fastest covering to
the slowest. Times are end to end for `solve` (validation, dominance pruning, model build, solver
subprocess, answer check). Prints the medians for the base, with slots doubled, candidates doubled,
both doubled; then two harder variants of the base where pruning removes less (two devices whose
latencies disagree; a params limit); then the base without pruning.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

from hant_trt.search.ilp import Option, Problem, min_latency, solve

DEV, DEV2 = "gpu:bench", "cpu:bench"


def instance(n_slots: int, per_slot: int, spans: int, per_span: int, seed: int = 0,
             two_devices: bool = False, params_limit: bool = False) -> Problem:
    rng = random.Random(seed)
    opts = []
    for s in range(n_slots):
        base = rng.uniform(0.5, 2.0)
        opts.append(Option(s, s, "keep", "fp32", 0.0, {DEV: base * 1e-3, DEV2: base * 3e-3}, params=10_000, macs=10**7))
        for k in range(per_slot - 1):
            frac = rng.uniform(0.1, 1.0)
            loss = (1 - frac) * rng.uniform(1, 20)
            params = int(10_000 * rng.uniform(0.1, 1.5))
            for p, f, extra in (("fp32", 1.0, 0.0), ("int8", 0.6, rng.uniform(0, 1.5))):
                # the second device's speed is only loosely related to the first's
                opts.append(Option(s, s, f"op{k}", p, -(loss + extra),
                                   {DEV: base * frac * f * 1e-3, DEV2: base * rng.uniform(0.1, 1.0) * (f + 0.2) * 3e-3},
                                   params=params, macs=params * 1000))
    for s in range(min(spans, n_slots - 1)):
        for k in range(per_span):
            params = int(20_000 * rng.uniform(0.1, 1.5))
            opts.append(Option(s, s + 1, f"fused{k}", "fp32", -rng.uniform(2, 40),
                               {DEV: rng.uniform(0.3, 3.0) * 1e-3, DEV2: rng.uniform(0.9, 9.0) * 1e-3},
                               params=params, macs=params * 1000))
    devices = (DEV, DEV2) if two_devices else (DEV,)
    if not two_devices:
        opts = [Option(o.first, o.last, o.op, o.precision, o.score, {DEV: o.latency_s[DEV]}, o.params, o.macs)
                for o in opts]
    p = Problem(n_slots, opts, {d: 1.0 for d in devices}, {d: 0.0 for d in devices})
    budget = {}
    for d in devices:
        lo = min_latency(p, d)
        hi = sum(max(o.latency_s[d] for o in opts if o.first == s == o.last) for s in range(n_slots))
        budget[d] = lo + 0.6 * (hi - lo)
    p.budget_s = budget
    if params_limit:
        p.max_params = 0.7 * 10_000 * n_slots
    return p


def timed(p: Problem, repeats: int, solver: str, prune: bool = True) -> tuple[float, int, int, float]:
    ts, sol = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        sol = solve(p, solver=solver, prune=prune)
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts), len(p.options), sol.n_variables, sol.score


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--solver", default="cbc", choices=("cbc", "highs"))
    ap.add_argument("--no-unpruned", action="store_true", help="skip the (slow) run without pruning")
    a = ap.parse_args()
    cases = [("base: 16 slots x 197 x 2 + 15 spans x 50", dict(args=(16, 197, 15, 50))),
             ("slots doubled (32 slots, 31 spans)", dict(args=(32, 197, 31, 50))),
             ("candidates doubled (394 x 2, spans x 100)", dict(args=(16, 394, 15, 100))),
             ("both doubled", dict(args=(32, 394, 31, 100))),
             ("base, 2 devices (2 latency constraints)", dict(args=(16, 197, 15, 50), two_devices=True)),
             ("base, + params limit (0.7x teacher)", dict(args=(16, 197, 15, 50), params_limit=True))]
    print(f"solver {a.solver}, {a.repeats} repeats each; median seconds for solve() end to end")
    base_med = None
    for label, kw in cases:
        p = instance(*kw["args"], two_devices=kw.get("two_devices", False), params_limit=kw.get("params_limit", False))
        med, n, kept, score = timed(p, a.repeats, a.solver)
        base_med = base_med or med
        print(f"{label:44s} {n:6d} options -> {kept:5d} variables   median {med:6.3f} s  ({med / base_med:4.1f}x base)"
              f"   score {score:.3f}")
    if not a.no_unpruned:
        p = instance(16, 197, 15, 50)
        med, n, kept, score = timed(p, max(1, a.repeats // 2), a.solver, prune=False)
        print(f"{'base without dominance pruning':44s} {n:6d} options -> {kept:5d} variables   median {med:6.3f} s"
              f"   score {score:.3f} (same optimum)")


if __name__ == "__main__":
    main()
