"""Solve time of the selection ILP at the paper's scale, and how it grows.

    .venv/bin/python benchmarks/bench_search.py [--repeats 5]

Base instance: 16 slots x 197 candidates x 2 precisions + 15 two-slot spans x 50 candidates,
random scores/latencies (seeded), budget at 60 % of the way from the fastest to the slowest
covering. Prints the median solve time (CBC) and the medians with slots, then candidates, doubled.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

from hant_trt.search.ilp import Option, Problem, min_latency, solve

DEV = "bench"


def instance(n_slots: int, per_slot: int, spans: int, per_span: int, seed: int = 0) -> Problem:
    rng = random.Random(seed)
    opts = []
    for s in range(n_slots):
        base = rng.uniform(0.5, 2.0)
        for k in range(per_slot):
            for p, f in (("fp32", 1.0), ("int8", 0.6)):
                frac = rng.uniform(0.1, 1.0)
                opts.append(Option(s, s, f"op{k}", p, score=-(1 - frac) * rng.uniform(1, 20) - (p == "int8") * rng.random(),
                                   latency_s={DEV: base * frac * f * 1e-3}))
    for s in range(min(spans, n_slots - 1)):
        for k in range(per_span):
            opts.append(Option(s, s + 1, f"fused{k}", "fp32", score=-rng.uniform(2, 40),
                               latency_s={DEV: rng.uniform(0.3, 3.0) * 1e-3}))
    p = Problem(n_slots, opts, {DEV: 1.0}, {DEV: 0.0})
    lo = min_latency(p, DEV)
    hi = sum(max(o.latency_s[DEV] for o in opts if o.first == s == o.last) for s in range(n_slots))
    p.budget_s = {DEV: lo + 0.6 * (hi - lo)}
    return p


def timed(p: Problem, repeats: int) -> tuple[float, int]:
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        solve(p)
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts), len(p.options)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    a = ap.parse_args()
    for label, args in (("base 16 slots x 197 x 2 + 15 spans x 50", (16, 197, 15, 50)),
                        ("slots doubled (32)", (32, 197, 31, 50)),
                        ("candidates doubled (394, spans 100)", (16, 394, 15, 100)),
                        ("both doubled", (32, 394, 31, 100))):
        med, n = timed(instance(*args), a.repeats)
        print(f"{label:45s} {n:6d} variables   median solve {med:.3f} s")


if __name__ == "__main__":
    main()
