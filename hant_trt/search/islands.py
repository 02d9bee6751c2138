"""From measured float islands to the cost of a mixed junction (`ilp.Problem.junction_mixed_s`).

The profile times the int8 teacher with one part at its base precision (`latency.islands`): what
that island adds, measured, against what the int8 model predicts it adds (its base time − its
int8 time + the savings of the junctions it breaks). What the model misses is put on the island's
junctions, one cost per junction shared by the parts on its two sides: the stem's island has
junction 0, slot i's has junctions i and i+1, the head's junction n_slots. The costs are the
non-negative least-squares fit of those residuals (a junction cheaper than the model says would
need a negative cost, which the ILP cannot use: a mixed junction is never a saving).
"""

from __future__ import annotations

import math


def island_junctions(part: int, n_slots: int) -> tuple[int, ...]:
    """The junctions an island of one part breaks: part −1 = the stem, n_slots = the head."""
    if part < 0:
        return (0,)
    if part >= n_slots:
        return (n_slots,)
    return (part, part + 1)


def nonneg_least_squares(columns: list[tuple[int, ...]], values: list[float], n: int, sweeps: int = 500) -> list[float]:
    """x ≥ 0 (length n) minimising Σ_k (Σ_{j in columns[k]} x_j − values[k])², by cyclic coordinate
    descent (each row touches one or two unknowns: a chain, exact in a few hundred sweeps)."""
    x = [0.0] * n
    rows_of = [[k for k, cols in enumerate(columns) if j in cols] for j in range(n)]
    for _ in range(sweeps):
        moved = 0.0
        for j in range(n):
            rows = rows_of[j]
            if not rows:
                continue
            # the best x_j with the others fixed: the mean of what each row leaves for it
            want = sum(values[k] - sum(x[i] for i in columns[k] if i != j) for k in rows) / len(rows)
            new = max(0.0, want)
            moved = max(moved, abs(new - x[j]))
            x[j] = new
        if moved < 1e-12:
            break
    return x


def mixed_costs(measured: list[float | None], predicted: list[float], n_slots: int) -> list[float]:
    """Cost (s) of each junction 0..n_slots when its sides are int8 and float: the fit of
    measured − predicted island extras. measured / predicted: per part, stem first, head last
    (n_slots + 2 entries); None: that island was not measured."""
    cols, vals = [], []
    for k, (m, p) in enumerate(zip(measured, predicted)):
        if m is None or p is None or not (math.isfinite(m) and math.isfinite(p)):
            continue
        cols.append(island_junctions(k - 1, n_slots))
        vals.append(m - p)
    return nonneg_least_squares(cols, vals, n_slots + 1)


__all__ = ["island_junctions", "mixed_costs", "nonneg_least_squares"]
