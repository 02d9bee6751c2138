"""Interaction terms for the ILP: what two `skip`s together cost beyond their swap-one scores.

Why: swap-one scores assume losses add up. For most pairs of replacements they do (within ±0.03
nats on Lite0), but two dropped blocks of one stage lose ~50 % more than the sum of each alone
(docs/RESULTS.md, "Why a tight budget hurts"), and a search under a tight budget drops exactly such neighbours.
Every pair of single-slot `skip` options is composed into the teacher on the eval split (the
`refine` evaluator, prefix-cached); the excess KL over the two singles becomes a penalty on
choosing both. Only penalties are kept: a smaller-than-additive pair is within the noise here.
"""

from __future__ import annotations

import itertools
from typing import Callable

from .ilp import Option


def _float(o: Option, op: str) -> bool:
    return o.op == op and o.first == o.last and o.precision != "int8"


def skip_pairs(options: list[Option], evaluate: Callable[[list[Option]], float], n_slots: int,
               progress: Callable[[str], None] | None = None) -> list[dict]:
    """[{"a": slot, "b": slot, "kl_a", "kl_b", "kl_ab", "excess"}] for every pair of slots with a
    single-slot float `skip`; evaluate(choices) is the composed student's KL (`refine.composed_kl`,
    which runs the distilled weights in fp32 whatever the option's precision)."""
    keep = {o.first: o for o in options if _float(o, "keep")}
    skips = {o.first: o for o in options if _float(o, "skip")}
    if len(keep) < n_slots:
        return []

    def kl(*slots: int) -> float:
        ch = dict(keep)
        ch.update({i: skips[i] for i in slots})
        return evaluate([ch[i] for i in range(n_slots)])

    single = {i: kl(i) for i in sorted(skips)}
    out = []
    for a, b in itertools.combinations(sorted(skips), 2):
        both = kl(a, b)
        out.append({"a": a, "b": b, "kl_a": single[a], "kl_b": single[b], "kl_ab": both,
                    "excess": both - single[a] - single[b]})
        if progress:
            progress(f"skip pair {a}+{b}: {both:.3f} vs {single[a] + single[b]:.3f} alone")
    return out


def pair_terms(measured: list[dict], options: list[Option]) -> list[tuple]:
    """The ILP's (key_a, key_b, score) from `skip_pairs`: −excess where the pair loses more than its
    parts (score is −KL), nothing otherwise; one term per combination of the two skips' float
    precisions (fp32 and fp16 rows of one op share their score)."""
    by_slot: dict[int, list[tuple]] = {}
    for o in options:
        if _float(o, "skip"):
            by_slot.setdefault(o.first, []).append(o.key)
    return [(ka, kb, -m["excess"]) for m in measured if m["excess"] > 0
            for ka in by_slot.get(m["a"], ()) for kb in by_slot.get(m["b"], ())]


__all__ = ["pair_terms", "skip_pairs"]
