"""Interaction terms for the ILP: what two `skip`s together cost beyond their swap-one scores.

Why: swap-one scores assume losses add up. For most pairs of replacements they do (within ±0.03
nats on Lite0), but two dropped blocks of one stage lose ~50 % more than the sum of each alone
(docs/RESULTS.md, session 7), and a search under a tight budget drops exactly such neighbours.
Every pair of single-slot `skip` options is composed into the teacher on the eval split (the
`refine` evaluator, prefix-cached); the excess KL over the two singles becomes a penalty on
choosing both. Only penalties are kept: a smaller-than-additive pair is within the noise here.
"""

from __future__ import annotations

import itertools
from typing import Callable

from .ilp import Option


def skip_pairs(options: list[Option], evaluate: Callable[[list[Option]], float], n_slots: int,
               progress: Callable[[str], None] | None = None) -> list[dict]:
    """[{"a": key, "b": key, "kl_a", "kl_b", "kl_ab", "excess"}] for every pair of single-slot fp32
    skips; evaluate(choices) is the composed student's KL (`refine.composed_kl`)."""
    keep = {o.first: o for o in options if o.op == "keep" and o.first == o.last and o.precision == "fp32"}
    skips = sorted((o for o in options if o.op == "skip" and o.first == o.last and o.precision == "fp32"),
                   key=lambda o: o.first)
    if len(keep) < n_slots:
        return []

    def kl(*swapped: Option) -> float:
        ch = dict(keep)
        ch.update({o.first: o for o in swapped})
        return evaluate([ch[i] for i in range(n_slots)])

    single = {o.first: kl(o) for o in skips}
    out = []
    for a, b in itertools.combinations(skips, 2):
        both = kl(a, b)
        out.append({"a": list(a.key), "b": list(b.key), "kl_a": single[a.first], "kl_b": single[b.first],
                    "kl_ab": both, "excess": both - single[a.first] - single[b.first]})
        if progress:
            progress(f"skip pair {a.first}+{b.first}: {both:.3f} vs {single[a.first] + single[b.first]:.3f} alone")
    return out


def pair_terms(measured: list[dict]) -> list[tuple]:
    """The ILP's (key_a, key_b, score) from `skip_pairs`: −excess where the pair loses more than its
    parts (score is −KL), nothing otherwise."""
    return [(tuple(m["a"]), tuple(m["b"]), -m["excess"]) for m in measured if m["excess"] > 0]


__all__ = ["pair_terms", "skip_pairs"]
