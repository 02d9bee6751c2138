"""Interaction terms for pairs of skips (search/pairs.py) and their use by the search stage."""

import json

import pytest

from hant_trt.errors import UserError
from hant_trt.search.ilp import Option, Problem, solve
from hant_trt.search.pairs import pair_terms, skip_pairs

D = "cpu:test"


def _options(n=6):
    opts = []
    for s in range(n):
        opts += [Option(s, s, "keep", "fp32", 0.0, {D: 1.0}), Option(s, s, "skip", "fp32", -1.0, {D: 0.1}),
                 Option(s, s, "half", "fp32", -1.4, {D: 0.55})]
    return opts


def composed(choices):
    """Σ of each part's own loss + 5 per pair of neighbouring skips (compounding)."""
    ops = [o.op for o in sorted(choices, key=lambda o: o.first)]
    return sum(-o.score for o in choices) + 5.0 * sum(a == b == "skip" for a, b in zip(ops, ops[1:]))


def test_skip_pairs_measure_the_excess_and_the_ilp_avoids_it():
    opts = _options()
    seen = []
    measured = skip_pairs(opts, lambda ch: seen.append(len(ch)) or composed(ch), 6)
    assert len(measured) == 15 and all(n == 6 for n in seen) and len(seen) == 6 + 15
    for m in measured:
        neighbours = abs(m["a"] - m["b"]) == 1
        assert m["kl_a"] == m["kl_b"] == 1.0 and m["excess"] == pytest.approx(5.0 if neighbours else 0.0)
    terms = pair_terms(measured, opts)
    assert len(terms) == 5 and all(v == -5.0 for _, _, v in terms)
    # fp16 rows of the skips get the same terms (one per combination of precisions); int8 none
    twin = opts + [Option(s, s, "skip", p, -1.0, {D: 0.1}) for s in (0, 1) for p in ("fp16", "int8")]
    t2 = pair_terms(measured, twin)
    assert len(t2) == 3 + 4 + 2 and {(a[3], b[3]) for a, b, _ in t2 if a[0] == 0 and b[0] == 1} == {
        ("fp32", "fp32"), ("fp32", "fp16"), ("fp16", "fp32"), ("fp16", "fp16")}
    p = Problem(6, opts, {D: 3.3}, {D: 0.0})
    plain = solve(p)
    assert composed(plain.choices) > -plain.score        # the additive optimum drops neighbours
    p.pairs = terms
    sol = solve(p)
    ops = [o.op for o in sol.choices]
    assert not any(a == b == "skip" for a, b in zip(ops, ops[1:])), ops
    assert -sol.score == pytest.approx(composed(sol.choices)) and composed(sol.choices) < composed(plain.choices)


def test_search_stage_measures_pairs_once_and_needs_kl(tmp_path, monkeypatch):
    import hant_trt.search.refine as refine_mod
    from hant_trt.search.stage import INTERACTIONS, run_search

    from test_search_stage import cfg_with, make_run

    calls = []

    def fake_composed_kl(root, cfg, **kw):      # the real one needs distilled weights and images
        return lambda ch: calls.append(1) or composed(ch)

    monkeypatch.setattr(refine_mod, "composed_kl", fake_composed_kl)
    run = make_run(tmp_path)
    with pytest.raises(UserError, match="metric"):
        run_search(run, cfg_with(interactions="skip"))                 # cfg_with scores by agreement
    with pytest.raises(UserError, match="interactions"):
        run_search(run, cfg_with(interactions="all", metric="kl"))
    cfg = cfg_with(interactions="skip", metric="kl", budget="2.3ms")     # room for two skips only
    sol = run_search(run, cfg)
    doc = json.loads((run.root / INTERACTIONS).read_text())
    assert len(doc["pairs"]) == 1 and doc["pairs"][0]["excess"] == pytest.approx(5.0)
    assert [o.op for o in sol.choices] == ["skip", "skip"]
    assert sol.score == pytest.approx(-0.4 - 0.4 - 5.0)                 # the pair's penalty counted
    n = len(calls)
    run_search(run, cfg_with(interactions="skip", metric="kl", budget="4.1ms"))   # same tables: reused
    assert len(calls) == n
