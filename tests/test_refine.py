"""Composition refinement (search/refine.py) on synthetic problems whose composed score is not the
sum of the parts: adjacent `skip`s cost extra, as compounding errors do in a real network."""

from hant_trt.search.ilp import Option, Problem, Solution
from hant_trt.search.refine import refine

D = "cpu:test"


def _problem(n=6, budget=3.3):
    opts = []
    for s in range(n):
        opts += [Option(s, s, "keep", "fp32", 0.0, {D: 1.0}),
                 Option(s, s, "skip", "fp32", -1.0, {D: 0.1}),
                 Option(s, s, "half", "fp32", -1.4, {D: 0.55}),
                 Option(s, s, "keep", "int8", -0.2, {D: 0.6})]
    return Problem(n_slots=n, options=opts, budget_s={D: budget}, fixed_s={D: 0.0})


def _pick(p, ops):
    by = {(o.first, o.op, o.precision): o for o in p.options}
    chosen = [by[(i, op, prec)] for i, (op, prec) in enumerate(ops)]
    return Solution("optimal", chosen, {D: sum(o.latency_s[D] for o in chosen)}, sum(o.score for o in chosen),
                    dict(p.budget_s), "cbc", 0.0)


def composed(choices):
    """Σ of each part's own cost + 5 per pair of neighbouring skips."""
    ops = [o.op for o in sorted(choices, key=lambda o: o.first)]
    return sum(-o.score for o in choices) + 5.0 * sum(a == b == "skip" for a, b in zip(ops, ops[1:]))


def test_refine_separates_compounding_skips_within_budget():
    p = _problem()
    start = _pick(p, [("skip", "fp32")] * 3 + [("keep", "fp32")] * 3)    # the proxy's optimum, adjacent
    calls = []
    sol, info = refine(p, start, lambda ch: calls.append(1) or composed(ch), sweeps=3)
    ops = [o.op for o in sol.choices]
    assert composed(sol.choices) < composed(start.choices) == 13.0
    assert not any(a == b == "skip" for a, b in zip(ops, ops[1:])), ops
    assert sol.predicted_s[D] <= p.budget_s[D] + 1e-12 and abs(sol.predicted_s[D] - sum(
        o.latency_s[D] for o in sol.choices)) < 1e-12
    assert sol.score == sum(o.score for o in sol.choices)
    assert info["kl_start"] == 13.0 and info["kl_end"] == composed(sol.choices)
    assert info["moves"] and info["evaluated"] == len(calls)


def test_refine_moves_a_precision_too_and_keeps_a_solution_it_cannot_improve():
    """Slot 3's int8 `keep` costs 0.2 in the composed KL; the budget has room for its fp32 block, so
    the refinement takes it (an int8 part is a choice like any other: the evaluator composes it in
    simulated int8). Refining the result again changes nothing."""
    p = _problem(budget=6.0)
    start = _pick(p, [("keep", "fp32")] * 3 + [("keep", "int8")] + [("keep", "fp32")] * 2)
    sol, info = refine(p, start, composed, sweeps=2)
    assert composed(start.choices) == 0.2 and composed(sol.choices) == 0.0
    assert [(m["slot"], m["repair"]) for m in info["moves"]] == [(3, None)] and sol.choices[3].precision == "fp32"
    assert sol.predicted_s[D] <= p.budget_s[D] + 1e-12
    same, info = refine(p, sol, composed, sweeps=2)
    assert [o.key for o in same.choices] == [o.key for o in sol.choices] and not info["moves"]


def test_refine_hands_the_stem_and_head_precision_to_every_evaluation():
    """The int8 stem chosen by the ILP is part of every composed student the refinement measures,
    and stays chosen."""
    p = _problem()
    start = _pick(p, [("skip", "fp32")] * 3 + [("keep", "fp32")] * 3)
    stem = Option(-1, -1, "stem", "int8", -0.1, {D: 0.1})
    start.fixed_choices = [stem]
    seen = []

    def evaluate(choices):
        seen.append(sum(o.op == "stem" and o.precision == "int8" for o in choices))
        return composed([o for o in choices if o.op != "stem"])

    sol, info = refine(p, start, evaluate, sweeps=1)
    assert info["moves"] and seen and set(seen) == {1}
    assert sol.fixed_choices == [stem]


def test_refine_repairs_the_budget_with_the_cheapest_proxy_loss():
    """Raising slot 0 from skip to keep (composed gain) is only possible with a saving elsewhere."""
    p = _problem(budget=3.3)
    start = _pick(p, [("skip", "fp32"), ("skip", "fp32"), ("keep", "fp32"), ("keep", "fp32"), ("skip", "fp32"),
                      ("keep", "fp32")])
    sol, info = refine(p, start, composed, sweeps=1)
    assert sol.predicted_s[D] <= p.budget_s[D] + 1e-12
    assert any(m["repair"] for m in info["moves"]), info


def test_exclusion_moves_drop_a_fused_part_that_composes_badly():
    """The proxy's best pick holds a fused span 1-2 that costs 5 more in the composed student than
    its swap-one score says. No single-slot move can remove a span; solving again without it can,
    and the refinement takes that student (exclusion moves, `resolve`)."""
    from hant_trt.search.ilp import solve

    p = _problem(n=4, budget=3.0)
    p.options.append(Option(1, 2, "fused", "fp32", -0.3, {D: 0.5}))

    def bad_span(choices):
        return sum(-o.score for o in choices) + 5.0 * any(o.op == "fused" for o in choices)

    start = solve(p, "cbc", 10)
    assert any(o.op == "fused" for o in start.choices)
    same, info = refine(p, start, bad_span, sweeps=2)                       # swap moves only
    assert any(o.op == "fused" for o in same.choices) and not info["moves"]
    sol, info = refine(p, start, bad_span, sweeps=2, resolve=lambda q: solve(q, "cbc", 10))
    assert not any(o.op == "fused" for o in sol.choices)
    assert info["moves"][0]["kind"] == "exclude" and info["moves"][0]["old"] == "1-2 fused"
    assert bad_span(sol.choices) < bad_span(start.choices) and info["kl_start"] == bad_span(start.choices)
    assert sol.predicted_s[D] <= p.budget_s[D] + 1e-9 and {o.first for o in sol.choices} == {0, 1, 2, 3}
    # exclusions only (`search.refine_moves = "exclude"`): no swap after them, so no better than both
    only, info = refine(p, start, bad_span, sweeps=2, resolve=lambda q: solve(q, "cbc", 10), movable=lambda o: False)
    assert not any(o.op == "fused" for o in only.choices) and bad_span(only.choices) >= bad_span(sol.choices)
    assert info["moves"] and all(m["kind"] == "exclude" for m in info["moves"])
    # the fine-tune judge's setting: only parts that change an operation are excluded, each tried once
    tried = []

    def judged(choices):
        tried.append(1)
        return bad_span(choices)

    ops, info = refine(p, start, judged, sweeps=1, resolve=lambda q: solve(q, "cbc", 10), movable=lambda o: False,
                       excludable=lambda o: o.op != "keep")
    assert not any(o.op == "fused" for o in ops.choices)
    assert len(tried) == info["evaluated"] == 2 + sum(o.op != "keep" for o in start.choices)   # + the start, twice
    assert any(o.op == "keep" for o in start.choices)                          # … so fewer than every part


def test_an_exclusion_the_judge_liked_by_luck_is_not_confirmed_on_fresh_seeds():
    """A noisy judge: one alternative looks best on the sweep's judgement, and `confirm` (fresh
    judgements) says whether the move is taken; the decision and its detail land in the info."""
    from hant_trt.search.ilp import solve

    p = _problem(n=4, budget=3.0)
    p.options.append(Option(1, 2, "fused", "fp32", -0.3, {D: 0.5}))
    start = solve(p, "cbc", 10)
    resolve = lambda q: solve(q, "cbc", 10)  # noqa: E731

    def lucky(choices):                                 # the sweep's judge: without the span looks better
        return sum(-o.score for o in choices) + 5.0 * any(o.op == "fused" for o in choices)

    asked = []

    def confirm_with(verdict):
        def confirm(current, proposed):
            asked.append((current, proposed))
            assert any(o.op == "fused" for o in current) and not any(o.op == "fused" for o in proposed)
            return verdict, {"gains": [0.1, -0.2], "say": "mean −5 %"}
        return confirm

    kept, info = refine(p, start, lucky, sweeps=2, resolve=resolve, movable=lambda o: False,
                        confirm=confirm_with(False))
    assert [o.key for o in kept.choices] == [o.key for o in sorted(start.choices, key=lambda o: o.first)]
    assert not info["moves"] and len(asked) == 1            # a rejected move ends the sweeps
    assert info["confirmations"] == [{"without": "1-2 fused", "accepted": False, "gains": [0.1, -0.2]}]
    moved, info = refine(p, start, lucky, sweeps=1, resolve=resolve, movable=lambda o: False,
                         confirm=confirm_with(True))
    assert not any(o.op == "fused" for o in moved.choices) and info["moves"][0]["old"] == "1-2 fused"
    assert info["confirmations"][0]["accepted"] is True
    _, info = refine(p, start, lucky, sweeps=1, resolve=resolve, movable=lambda o: False)
    assert "confirmations" not in info
