"""The selection ILP against brute-force enumeration, on random small instances with fused spans,
several precisions, several devices and params / MACs limits."""

import itertools
import random
from dataclasses import replace

import pytest

from hant_trt.errors import UserError
from hant_trt.search.budget import parse_budget, parse_count
from hant_trt.search.ilp import Option, Problem, Solution, max_score, min_latency, pair_score, prune_dominated, solve

D1, D2 = "gpu:test", "cpu:test"


def random_options(rng: random.Random, n_slots: int, per_slot: int = 3, devices=(D1,),
                   precisions=("fp32", "int8"), max_span: int = 3, per_span: int = 2) -> list[Option]:
    opts = []
    for s in range(n_slots):
        opts.append(Option(s, s, "keep", "fp32", 0.0, {d: rng.uniform(0.5, 1.0) for d in devices},
                           params=rng.randint(50, 100), macs=rng.randint(500, 1000)))
        for k in range(per_slot):
            for p in precisions:
                opts.append(Option(s, s, f"op{k}", p, -round(rng.random() * 10, 3),
                                   {d: rng.uniform(0.05, 1.0) for d in devices},
                                   params=rng.randint(5, 100), macs=rng.randint(50, 1000)))
        for length in range(2, max_span + 1):
            if s + length <= n_slots:
                for k in range(per_span):
                    opts.append(Option(s, s + length - 1, f"fused{length}_{k}", rng.choice(precisions),
                                       -round(rng.random() * 8 * length, 3),
                                       {d: rng.uniform(0.1, 0.9 * length) for d in devices},
                                       params=rng.randint(5, 150), macs=rng.randint(50, 1500)))
    return opts


def coverings(n: int, opts: list[Option]):
    """Every way to cover 0..n-1 with consecutive, non-overlapping options."""
    by_first = {}
    for o in opts:
        by_first.setdefault(o.first, []).append(o)

    def rec(start):
        if start == n:
            yield []
            return
        for o in by_first.get(start, []):
            for rest in rec(o.last + 1):
                yield [o] + rest

    yield from rec(0)


def brute_force(p: Problem):
    best = None
    for sel in coverings(p.n_slots, p.options):
        if any(p.fixed_s.get(d, 0) + sum(o.latency_s[d] for o in sel) > b for d, b in p.budget_s.items()):
            continue
        if p.max_params is not None and sum(o.params for o in sel) > p.max_params:
            continue
        if p.max_macs is not None and sum(o.macs for o in sel) > p.max_macs:
            continue
        if any(sum(o.key in group for o in sel) > n for group, n in p.at_most):
            continue
        score = sum(o.score for o in sel) + pair_score(p.pairs, sel)
        if best is None or score > best:
            best = score
    return best


def check_valid(p: Problem, sol):
    covered = [s for o in sol.choices for s in range(o.first, o.last + 1)]
    assert covered == list(range(p.n_slots))          # each slot exactly once: spans never overlap
    for d, b in p.budget_s.items():
        pred = p.fixed_s.get(d, 0) + sum(o.latency_s[d] for o in sol.choices)
        assert pred == pytest.approx(sol.predicted_s[d])
        assert pred <= b * (1 + 1e-9)
    if p.max_params is not None:
        assert sum(o.params for o in sol.choices) <= p.max_params
    if p.max_macs is not None:
        assert sum(o.macs for o in sol.choices) <= p.max_macs
    assert sol.score == pytest.approx(sum(o.score for o in sol.choices) + pair_score(p.pairs, sol.choices))


def random_problem(seed: int, n_slots: int = 5, two_devices: bool = False, limits: bool = False) -> Problem:
    rng = random.Random(seed)
    devices = (D1, D2) if two_devices else (D1,)
    precisions = ("fp32", "fp16", "int8") if seed % 2 else ("fp32", "int8")
    opts = random_options(rng, n_slots, devices=devices, precisions=precisions)
    fixed = {d: rng.uniform(0.1, 0.5) for d in devices}
    probe = Problem(n_slots, opts, {d: 1e9 for d in devices}, fixed)
    budget = {}
    for d in devices:
        lo = min_latency(probe, d)
        budget[d] = lo + rng.uniform(0.05, 0.6) * (n_slots * 0.8)
    p = Problem(n_slots, opts, budget, fixed)
    if limits:
        keep = [o for o in opts if o.op == "keep"]
        p.max_params = 0.6 * sum(o.params for o in keep)
        p.max_macs = 0.7 * sum(o.macs for o in keep)
    return p


@pytest.mark.parametrize("seed", range(12))
def test_ilp_equals_brute_force(seed):
    p = random_problem(seed, two_devices=seed % 3 == 0, limits=seed % 4 == 1)
    ref = brute_force(p)
    if ref is None:
        with pytest.raises(UserError):
            solve(p)
        return
    sol = solve(p)
    assert sol.status == "optimal"
    assert sol.score == pytest.approx(ref, abs=1e-6)
    check_valid(p, sol)
    unpruned = solve(p, prune=False)
    assert unpruned.score == pytest.approx(ref, abs=1e-6)


def test_spans_and_int8_are_chosen_when_they_pay():
    # slot 0-1 fused is cheaper than any pair; slot 2 only fits at int8
    opts = [Option(s, s, "keep", "fp32", 0.0, {D1: 1.0}) for s in range(3)]
    opts += [Option(0, 1, "fused", "fp32", -1.0, {D1: 1.0}), Option(2, 2, "keep", "int8", -0.5, {D1: 0.5})]
    sol = solve(Problem(3, opts, {D1: 1.6}, {D1: 0.1}))
    assert [o.key for o in sol.choices] == [(0, 1, "fused", "fp32"), (2, 2, "keep", "int8")]
    assert sol.predicted_s[D1] == pytest.approx(1.6)


def test_same_inputs_same_answer_in_any_order_with_ties():
    rng = random.Random(3)
    opts = random_options(rng, 5)
    # exact duplicates of every keep row under another name: ties the solver must break the same way
    opts += [Option(o.first, o.last, "clone", o.precision, o.score, dict(o.latency_s)) for o in opts if o.op == "keep"]
    p = Problem(5, opts, {D1: 1e9}, {D1: 0.0})
    first = solve(p)
    assert [o.op for o in first.choices] == ["keep"] * 5       # the teacher's block wins ties
    for k in range(3):
        shuffled = list(opts)
        random.Random(k).shuffle(shuffled)
        again = solve(Problem(5, shuffled, {D1: 1e9}, {D1: 0.0}))
        assert [o.key for o in again.choices] == [o.key for o in first.choices]
    tight = Problem(5, opts, {D1: min_latency(p, D1) + 0.7}, {D1: 0.0})
    keys = {tuple(o.key for o in solve(tight).choices) for _ in range(3)}
    assert len(keys) == 1


def test_equal_scores_prefer_lower_latency():
    opts = [Option(0, 0, "slow", "fp32", -1.0, {D1: 2.0}), Option(0, 0, "fast", "fp32", -1.0, {D1: 1.0}),
            Option(0, 0, "worse", "fp32", -2.0, {D1: 0.5})]
    assert solve(Problem(1, opts, {D1: 5.0}, {})).choices[0].op == "fast"


def test_infeasible_budget_names_smallest_latency():
    p = random_problem(1)
    lo = min_latency(p, D1)
    p.budget_s = {D1: lo * 0.9}
    with pytest.raises(UserError, match=rf"smallest reachable latency is {lo * 1e3:.4f} ms"):
        solve(p)
    p.budget_s = {D1: lo}                                  # exactly the fastest selection: feasible
    assert solve(p).predicted_s[D1] == pytest.approx(lo)


def test_jointly_infeasible_devices():
    opts = [Option(0, 0, "a", "fp32", -1.0, {D1: 1.0, D2: 5.0}), Option(0, 0, "b", "fp32", -2.0, {D1: 5.0, D2: 1.0})]
    with pytest.raises(UserError, match="cannot all be met"):
        solve(Problem(1, opts, {D1: 2.0, D2: 2.0}, {}))


def test_two_devices_each_constrained():
    opts = [Option(0, 0, "a", "fp32", -1.0, {D1: 1.0, D2: 5.0}),
            Option(0, 0, "b", "fp32", -2.0, {D1: 5.0, D2: 1.0}),
            Option(0, 0, "c", "fp32", -3.0, {D1: 2.0, D2: 2.0}),
            Option(0, 0, "only_d1", "fp32", 0.0, {D1: 0.1})]          # no latency on D2: never chosen
    sol = solve(Problem(1, opts, {D1: 2.5, D2: 2.5}, {}))
    assert [o.op for o in sol.choices] == ["c"]
    assert set(sol.predicted_s) == {D1, D2}


def test_params_and_macs_limits():
    opts = [Option(0, 0, "big", "fp32", 0.0, {D1: 1.0}, params=100, macs=10),
            Option(0, 0, "small", "fp32", -1.0, {D1: 1.0}, params=10, macs=100),
            Option(0, 0, "tiny", "fp32", -2.0, {D1: 1.0}, params=10, macs=10)]
    assert solve(Problem(1, opts, {D1: 5}, {}, max_params=50)).choices[0].op == "small"
    assert solve(Problem(1, opts, {D1: 5}, {}, max_params=50, max_macs=50)).choices[0].op == "tiny"
    with pytest.raises(UserError, match="params limit"):
        solve(Problem(1, opts, {D1: 5}, {}, max_params=5))


def test_missing_slot_is_a_user_error():
    opts = [Option(0, 0, "keep", "fp32", 0.0, {D1: 1.0})]
    with pytest.raises(UserError, match=r"slot\(s\) \[1\]"):
        solve(Problem(2, opts, {D1: 5}, {}))


def test_unknown_solver():
    with pytest.raises(UserError, match="unknown solver"):
        solve(Problem(1, [Option(0, 0, "keep", "fp32", 0.0, {D1: 1.0})], {D1: 5}, {}), solver="gurobi")


def test_highs_agrees_with_brute_force():
    pytest.importorskip("highspy")
    for seed in (2, 5):
        p = random_problem(seed, two_devices=True)
        ref = brute_force(p)
        sol = solve(p, solver="highs")
        assert sol.score == pytest.approx(ref, abs=1e-6)
        check_valid(p, sol)


def test_pruning_keeps_only_nondominated():
    opts = [Option(0, 0, "a", "fp32", -1.0, {D1: 1.0}), Option(0, 0, "b", "fp32", -2.0, {D1: 1.5}),   # b dominated
            Option(0, 0, "c", "fp32", -3.0, {D1: 0.5}), Option(0, 0, "d", "fp32", -1.0, {D1: 1.0}),   # d == a
            Option(0, 1, "s", "fp32", -9.0, {D1: 9.0})]                                             # other span
    kept = prune_dominated(opts, [D1])
    assert [o.op for o in kept] == ["a", "c", "s"]
    # with params limited, a heavier-but-better option no longer dominates a lighter one
    opts2 = [Option(0, 0, "a", "fp32", -1.0, {D1: 1.0}, params=100),
             Option(0, 0, "b", "fp32", -2.0, {D1: 1.5}, params=10)]
    assert len(prune_dominated(opts2, [D1], params=True)) == 2


def test_bounds():
    opts = [Option(0, 0, "keep", "fp32", 0.0, {D1: 1.0}), Option(0, 0, "x", "fp32", -1.0, {D1: 0.2}),
            Option(1, 1, "keep", "fp32", 0.0, {D1: 1.0}), Option(0, 1, "f", "fp32", -0.5, {D1: 0.3})]
    p = Problem(2, opts, {D1: 9}, {D1: 0.25})
    assert min_latency(p, D1) == pytest.approx(0.55)
    assert max_score(p) == 0.0


@pytest.mark.parametrize("text,expect", [("0.5x", 5e-3), ("2ms", 2e-3), ("500us", 5e-4), ("0.004s", 4e-3),
                                         ("speedup=2", 5e-3), ("speedup=2x", 5e-3), (" 1.5 MS ", 1.5e-3),
                                         ("1e-3s", 1e-3)])
def test_budget_parsing(text, expect):
    assert parse_budget(text, 0.01) == pytest.approx(expect)


@pytest.mark.parametrize("text", ["fast", "0x", "-1ms", "speedup=0", "2", "ms", ""])
def test_bad_budget(text):
    with pytest.raises(UserError):
        parse_budget(text, 0.01)


def test_relative_budget_needs_teacher_latency():
    with pytest.raises(UserError, match="teacher"):
        parse_budget("0.5x", 0.0)


def test_int8x_budget_is_relative_to_the_int8_teacher():
    from hant_trt.search.budget import relative_budget

    assert parse_budget("int8x=1.25", 0.01, 0.004) == pytest.approx(0.0032)
    assert parse_budget("INT8X = 2x", 0.01, 0.004) == pytest.approx(0.002)
    assert relative_budget("int8x=1.2") is None               # not a fraction of the fp32 teacher
    with pytest.raises(UserError, match="int8"):
        parse_budget("int8x=1.2", 0.01)                       # a profile without int8
    for bad in ("int8x=0", "int8x=", "int8x=-1"):
        with pytest.raises(UserError):
            parse_budget(bad, 0.01, 0.004)
        with pytest.raises(UserError):
            relative_budget(bad)


@pytest.mark.parametrize("text,expect", [("0.5x", 500.0), ("3.5M", 3.5e6), ("800k", 8e5), ("1.2G", 1.2e9),
                                         ("2e6", 2e6), (1234, 1234.0), (None, None), ("", None)])
def test_count_parsing(text, expect):
    assert parse_count(text, 1000.0) == (pytest.approx(expect) if expect else None)


@pytest.mark.parametrize("text", ["lots", "-5", "0", "3T"])
def test_bad_count(text):
    with pytest.raises(UserError):
        parse_count(text, 1000.0)


def test_enumeration_helper_counts_coverings():
    # 3 slots, one option per single slot and one 2-slot span at 0-1 and 1-2: 3 coverings
    opts = [Option(s, s, "k", "fp32", 0.0, {D1: 1.0}) for s in range(3)]
    opts += [Option(0, 1, "f", "fp32", 0.0, {D1: 1.0}), Option(1, 2, "f", "fp32", 0.0, {D1: 1.0})]
    got = sorted(tuple((o.first, o.last) for o in c) for c in coverings(3, opts))
    assert got == [((0, 0), (1, 1), (2, 2)), ((0, 0), (1, 2)), ((0, 1), (2, 2))]
    assert len(list(itertools.islice(coverings(3, opts), 10))) == 3


def test_latency_models_scale_and_offset():
    from hant_trt.errors import UserError
    from hant_trt.search.ilp import Option, solve
    from hant_trt.search.tables import FixedParts, Tables, build_problem

    dev = "cpu:x"
    opts = [Option(i, i, op, "fp32", score, {dev: lat}) for i in range(2)
            for op, score, lat in (("keep", 0.0, 2e-3), ("cheap", -1.0, 1e-3))]
    # whole teacher 8 ms, its parts 1 + 1 + 2 + 2 = 6 ms
    fixed = {dev: FixedParts(stem_s=1e-3, head_s=1e-3, teacher_s=8e-3, correction_s=2e-3, teacher_sum_s=6e-3)}
    t = Tables(opts, fixed)
    # slot 0 keep, slot 1 cheap: parts 1 + 1 + 2 + 1 = 5 ms
    for model, expected in (("scale", 5e-3 * 8 / 6), ("offset", 5e-3 + 2e-3)):
        p = build_problem(t, 2, "1.0x", [dev], latency_model=model)
        teacher = p.fixed_s[dev] + sum(o.latency_s[dev] for o in p.options if o.op == "keep")
        assert abs(teacher - 8e-3) < 1e-12  # both models reproduce the measured teacher
        cheap1 = next(o for o in p.options if o.first == 1 and o.op == "cheap")
        keep0 = next(o for o in p.options if o.first == 0 and o.op == "keep")
        assert abs(p.fixed_s[dev] + keep0.latency_s[dev] + cheap1.latency_s[dev] - expected) < 1e-12
        sol = solve(build_problem(t, 2, f"{expected * 1e3 + 1e-6}ms", [dev], latency_model=model))
        assert sorted(o.op for o in sol.choices) == ["cheap", "keep"]
    with pytest.raises(UserError, match="latency_model"):
        build_problem(t, 2, "1.0x", [dev], latency_model="guess")


def test_calibrated_solve_converges_on_the_engines_scale():
    """The engine runs every student 15 % slower than the table predicts: re-solving with the
    corrected budget delivers a student that meets the asked budget; the best-scoring one that
    meets it wins; an infeasible corrected budget keeps what was found."""
    from dataclasses import dataclass as dc

    from hant_trt.errors import UserError
    from hant_trt.search.calibrate import calibrated_solve

    @dc
    class P:
        budget_s: dict

    @dc
    class S:
        predicted_s: dict
        score: float

    def solve(p):
        b = p.budget_s["d"]
        if b < 0.5:
            raise UserError("infeasible")
        return S({"d": b}, score=-1.0 / b)        # a larger budget scores better

    sol, rounds = calibrated_solve(P({"d": 1.0}), "d", solve, lambda s: 1.15 * s.predicted_s["d"], rounds=4)
    measured = 1.15 * sol.predicted_s["d"]
    assert 0.96 <= measured <= 1.02 and 2 <= len(rounds) <= 4
    assert rounds[0].measured_s > 1.1 and rounds[-1].budget_s < rounds[0].budget_s
    exact, r1 = calibrated_solve(P({"d": 1.0}), "d", solve, lambda s: s.predicted_s["d"], rounds=4)
    assert len(r1) == 1 and exact.predicted_s["d"] == 1.0           # a right table needs one round
    slow, r2 = calibrated_solve(P({"d": 1.0}), "d", solve, lambda s: 3.0 * s.predicted_s["d"], rounds=4)
    assert len(r2) == 1 and slow.predicted_s["d"] == 1.0            # 1/3 is infeasible: fastest kept
    with pytest.raises(UserError):
        calibrated_solve(P({"d": 0.1}), "d", solve, lambda s: s.predicted_s["d"], rounds=2)


@pytest.mark.parametrize("seed", range(12))
def test_ilp_with_pair_terms_equals_brute_force(seed):
    """Interaction terms (penalties and bonuses between options of different slots): the
    linearised ILP finds the brute-force optimum, pruning included."""
    p = random_problem(100 + seed, n_slots=5, two_devices=seed % 3 == 0)
    rng = random.Random(seed)
    singles = [o for o in p.options if o.first == o.last]
    for _ in range(10):
        a, b = rng.sample(singles, 2)
        if a.first != b.first:
            p.pairs.append((a.key, b.key, round(rng.uniform(-6, 2), 3)))
    sol = solve(p)
    check_valid(p, sol)
    assert sol.score == pytest.approx(brute_force(p), abs=1e-6)


def test_a_pair_penalty_changes_the_pick():
    """Two cheap options that are fine alone and bad together (neighbours): the penalty moves the
    second skip away from the first."""
    opts = []
    for s in range(3):
        opts += [Option(s, s, "keep", "fp32", 0.0, {D1: 1.0}), Option(s, s, "skip", "fp32", -1.0, {D1: 0.1}),
                 Option(s, s, "ir", "fp32", -1.5, {D1: 0.5})]
    p = Problem(3, opts, {D1: 1.8}, {D1: 0.0})
    assert [o.op for o in solve(p).choices] == ["skip", "skip", "keep"]
    p.pairs = [((0, 0, "skip", "fp32"), (1, 1, "skip", "fp32"), -2.0)]
    assert [o.op for o in solve(p).choices] == ["skip", "keep", "skip"]
    p.pairs.append(((1, 1, "skip", "fp32"), (2, 2, "skip", "fp32"), -2.0))
    p.pairs.append(((0, 0, "skip", "fp32"), (2, 2, "skip", "fp32"), -2.0))
    sol = solve(p)
    assert sorted(o.op for o in sol.choices) == ["ir", "keep", "skip"] and sol.score == pytest.approx(-2.5)


# -- int8 junctions and stem/head precision choices ---------------------------------------------------

def brute_force_int8(p: Problem):
    """(best score, its min latency) over every covering × stem/head choice, latencies by `predict`."""
    from hant_trt.search.ilp import fixed_groups, predict

    best = None
    for sel in coverings(p.n_slots, p.options):
        for fixed in itertools.product(*fixed_groups(p)):
            fixed = list(fixed)
            lat = {d: predict(p, sel, fixed, d) for d in p.budget_s}
            if any(lat[d] > b for d, b in p.budget_s.items()):
                continue
            score = sum(o.score for o in sel + fixed)
            if best is None or score > best[0] + 1e-9:
                best = (score, lat)
    return best


def int8_problem(seed: int, n_slots: int = 5) -> Problem:
    rng = random.Random(seed)
    opts = random_options(rng, n_slots, per_slot=2, max_span=2, per_span=1)
    fixed_opts = []
    for pos, name in ((-1, "stem"), (n_slots, "head")):
        fixed_opts.append(Option(pos, pos, name, "fp32", 0.0, {D1: rng.uniform(0.2, 0.6)}))
        fixed_opts.append(Option(pos, pos, name, "int8", -round(rng.random(), 3), {D1: rng.uniform(0.3, 0.9)}))
    savings = [{D1: rng.choice([0.0, -0.05, rng.uniform(0.05, 0.5)])} for _ in range(n_slots + 1)]
    probe = Problem(n_slots, opts, {D1: 1e9}, {D1: 0.1}, fixed_options=fixed_opts, junction_saving_s=savings)
    lo = min_latency(probe, D1)
    return Problem(n_slots, opts, {D1: lo + rng.uniform(0.1, 2.0)}, {D1: 0.1}, fixed_options=fixed_opts,
                   junction_saving_s=savings)


@pytest.mark.parametrize("seed", range(12))
def test_ilp_with_junction_savings_and_fixed_parts_equals_brute_force(seed):
    from hant_trt.search.ilp import predict

    p = int8_problem(seed)
    want_score, _ = brute_force_int8(p)
    sol = solve(p)
    assert sol.score == pytest.approx(want_score, abs=1e-6)
    assert sorted(o.first for o in sol.fixed_choices) == [-1, p.n_slots]      # one stem, one head choice
    pred = predict(p, sol.choices, sol.fixed_choices, D1)
    assert sol.predicted_s[D1] == pytest.approx(pred) and pred <= p.budget_s[D1] * (1 + 1e-9)
    # min_latency walks the same model: the smallest budget is feasible, a hair below it is not
    lo = min_latency(p, D1)
    assert solve(Problem(p.n_slots, p.options, {D1: lo * (1 + 1e-9)}, p.fixed_s, fixed_options=p.fixed_options,
                         junction_saving_s=p.junction_saving_s)).predicted_s[D1] == pytest.approx(lo)
    with pytest.raises(UserError, match="infeasible"):
        solve(Problem(p.n_slots, p.options, {D1: lo * 0.999}, p.fixed_s, fixed_options=p.fixed_options,
                      junction_saving_s=p.junction_saving_s))
    back = Solution.from_dict(sol.to_dict())
    assert [(o.op, o.precision) for o in back.fixed_choices] == [(o.op, o.precision) for o in sol.fixed_choices]


def test_junction_saving_makes_neighbouring_int8_pay():
    """Alone, each int8 part is slower than its fp32 twin (Q in, DQ out); together the saving at their
    junction makes both int8 the fastest plan — and only both together."""
    from hant_trt.search.ilp import predict

    opts = []
    for s in range(2):
        opts.append(Option(s, s, "keep", "fp32", 0.0, {D1: 1.0}))
        opts.append(Option(s, s, "keep", "int8", -0.01, {D1: 1.2}))
    save = [{D1: 0.0}, {D1: 1.0}, {D1: 0.0}]
    p = Problem(2, opts, {D1: 1.5}, {D1: 0.0}, junction_saving_s=save)
    sol = solve(p)
    assert [o.precision for o in sol.choices] == ["int8", "int8"] and sol.predicted_s[D1] == pytest.approx(1.4)
    one = [opts[1], opts[2]]
    assert predict(p, one, [], D1) == pytest.approx(2.2)           # a lone int8 part gets no saving
    assert min_latency(p, D1) == pytest.approx(1.4)
    with pytest.raises(UserError, match="infeasible"):             # without the model: nothing reaches 1.5
        solve(Problem(2, opts, {D1: 1.5}, {D1: 0.0}))


def mixed_problem(seed: int, n_slots: int = 5, fixed: bool = True) -> Problem:
    """int8_problem with a `skip` on some slots and a cost at every mixed junction."""
    rng = random.Random(1000 + seed)
    p = int8_problem(seed, n_slots)
    skips = [Option(s, s, "skip", "fp32", -round(rng.random() * 12, 3), {D1: 0.01}) for s in range(n_slots)
             if rng.random() < 0.5]
    mixed = [{D1: rng.choice([0.0, rng.uniform(0.05, 0.6)])} for _ in range(n_slots + 1)]
    fixed_opts = p.fixed_options if fixed else []
    probe = replace(p, options=p.options + skips, budget_s={D1: 1e9}, fixed_options=fixed_opts, junction_mixed_s=mixed)
    return replace(probe, budget_s={D1: min_latency(probe, D1) + rng.uniform(0.1, 2.0)})


@pytest.mark.parametrize("seed", range(12))
def test_ilp_with_mixed_junction_costs_equals_brute_force(seed):
    from hant_trt.search.ilp import predict

    p = mixed_problem(seed, fixed=seed % 3 != 0)
    want_score, _ = brute_force_int8(p)
    sol = solve(p)
    assert sol.score == pytest.approx(want_score, abs=1e-6)
    pred = predict(p, sol.choices, sol.fixed_choices, D1)
    assert sol.predicted_s[D1] == pytest.approx(pred) and pred <= p.budget_s[D1] * (1 + 1e-9)
    lo = min_latency(p, D1)
    assert solve(replace(p, budget_s={D1: lo * (1 + 1e-9)})).predicted_s[D1] == pytest.approx(lo)
    with pytest.raises(UserError, match="infeasible"):
        solve(replace(p, budget_s={D1: lo * 0.999}))


def test_mixed_junction_cost_is_paid_by_a_float_island_not_by_a_skip():
    """Between int8 parts, a computing fp32 part pays the costs of both its junctions and forgoes
    their savings; a `skip` (nothing of its own to convert) pays no cost; so with the costs an
    int8 part beats the fp32 one it lost to on standalone timings alone."""
    from hant_trt.search.ilp import predict

    int8 = [Option(s, s, "keep", "int8", 0.0, {D1: 1.0}) for s in range(3)]
    fp32_mid = Option(1, 1, "keep", "fp32", 0.0, {D1: 0.7})
    skip_mid = Option(1, 1, "skip", "fp32", -5.0, {D1: 0.0})
    mixed = [{D1: 0.0}, {D1: 0.25}, {D1: 0.25}, {D1: 0.0}]
    p = Problem(3, int8 + [fp32_mid], {D1: 3.0}, {D1: 0.0}, junction_mixed_s=mixed)
    assert predict(p, [int8[0], fp32_mid, int8[2]], [], D1) == pytest.approx(2.7 + 0.5)
    assert predict(p, [int8[0], skip_mid, int8[2]], [], D1) == pytest.approx(2.0)
    # the stem and head are float when not a choice: slot 0 and slot 2 at int8 face them
    assert predict(replace(p, junction_mixed_s=[{D1: 0.1}, {D1: 0.0}, {D1: 0.0}, {D1: 0.2}]), int8, [],
                   D1) == pytest.approx(3.3)
    sol = solve(p)
    assert [o.precision for o in sol.choices] == ["int8"] * 3 and sol.predicted_s[D1] == pytest.approx(3.0)
    assert [o.precision for o in solve(replace(p, junction_mixed_s=[])).choices] == ["int8", "fp32", "int8"]


@pytest.mark.parametrize("base", ["fp32", "fp16"])
def test_stem_and_head_choices_leave_fixed_s_at_any_base_precision(base):
    """A profile at fp16 (a GPU target) times the stem and head at fp16: once they are choices, neither
    is also paid in fixed_s, so the all-base plan predicts the measured teacher."""
    from hant_trt.search.ilp import predict
    from hant_trt.search.tables import FixedParts, Tables, build_problem

    dev = "gpu:x"
    opts = [Option(i, i, "keep", base, 0.0, {dev: 2e-3}) for i in range(2)]
    opts += [Option(i, i, "keep", "int8", -0.1, {dev: 1e-3}) for i in range(2)]
    fixed = {dev: FixedParts(stem_s=1e-3, head_s=1e-3, teacher_s=6e-3, correction_s=0.0, teacher_sum_s=6e-3,
                             stem_int8_s=0.5e-3, head_int8_s=0.5e-3, junction_saving_s=(0.0, 0.0, 0.0),
                             teacher_int8_s=3e-3, teacher_int8_sum_s=3e-3, precision=base)}
    scores = {"stem": {"int8": -0.1}, "head": {"int8": -0.1}}
    for model in ("scale", "offset"):
        p = build_problem(Tables(opts, fixed, fixed_scores=scores), 2, "1.0x", [dev], latency_model=model)
        assert [(o.op, o.precision) for o in p.fixed_options] == [("stem", base), ("stem", "int8"),
                                                                  ("head", base), ("head", "int8")]
        assert p.fixed_s[dev] == pytest.approx(0.0, abs=1e-15)
        teacher = [o for o in p.options if o.precision == base]
        as_base = [o for o in p.fixed_options if o.precision == base]
        assert predict(p, teacher, as_base, dev) == pytest.approx(6e-3)


# -- at-most limits (search.max_skips_per_stage) -----------------------------------------------------

@pytest.mark.parametrize("seed", range(10))
def test_ilp_with_at_most_limits_equals_brute_force(seed):
    """Random at-most groups over single-slot options: the ILP (pruning included) finds the
    brute-force optimum among the selections that respect every limit."""
    p = random_problem(200 + seed, n_slots=5, two_devices=seed % 3 == 0)
    rng = random.Random(seed)
    singles = [o for o in p.options if o.first == o.last and o.op != "keep"]
    for _ in range(2):
        group = tuple(o.key for o in rng.sample(singles, 4))
        p.at_most.append((group, rng.randint(0, 1)))
    ref = brute_force(p)
    if ref is None:
        with pytest.raises(UserError):
            solve(p)
        return
    sol = solve(p)
    check_valid(p, sol)
    assert sol.score == pytest.approx(ref, abs=1e-6)
    for group, n in p.at_most:
        assert sum(o.key in set(group) for o in sol.choices) <= n


def test_at_most_one_skip_per_stage_moves_the_second_skip():
    """Dropped blocks of one stage compound: with max_skips_per_stage = 1 the second skip of a
    stage goes to another stage, or becomes a slimmed block."""
    from hant_trt.search.limits import skips_per_stage, stage_of

    stages = [stage_of(p) for p in ("blocks.1.0", "blocks.1.1", "blocks.2.0", "blocks.2.1")]
    assert stages == ["blocks.1", "blocks.1", "blocks.2", "blocks.2"]
    opts = []
    for s in range(4):
        opts += [Option(s, s, "keep", "fp32", 0.0, {D1: 1.0}),
                 Option(s, s, "skip", "fp32", -1.0 if s < 2 else -1.2, {D1: 0.1}),
                 Option(s, s, "ir", "fp32", -1.5, {D1: 0.5})]
    p = Problem(4, opts, {D1: 2.2}, {D1: 0.0})
    assert [o.op for o in solve(p).choices] == ["skip", "skip", "keep", "keep"]
    p.at_most = skips_per_stage(opts, stages, 1)
    assert len(p.at_most) == 2 and all(n == 1 for _, n in p.at_most)
    ops = [o.op for o in solve(p).choices]
    assert ops.count("skip") == 2 and ops[:2].count("skip") == 1 and ops[2:].count("skip") == 1
    assert skips_per_stage(opts, stages, 2) == []           # a limit no stage can exceed: no group


def test_exclude_takes_the_named_candidates_out_of_the_selection():
    """search.exclude: a span's candidates (all ops) or one op of a slot never chosen; the teacher's
    own block stays whatever the pattern says; the ILP then picks the next best."""
    from hant_trt.search.limits import exclude_problem, excluded

    opts = [Option(0, 0, "keep", "fp32", 0.0, {D1: 1.0}), Option(1, 1, "keep", "fp32", 0.0, {D1: 1.0}),
            Option(0, 1, "ir_k5_e8", "int8", -0.1, {D1: 0.5}), Option(0, 0, "skip", "fp32", -0.5, {D1: 0.0}),
            Option(1, 1, "skip", "fp32", -0.6, {D1: 0.0}), Option(1, 1, "ir_k3_e1", "fp32", -0.9, {D1: 0.3})]
    p = Problem(2, opts, {D1: 1.2}, {D1: 0.0})
    assert [(o.first, o.last, o.op) for o in solve(p).choices] == [(0, 1, "ir_k5_e8")]
    assert [o.op for o in excluded(opts, ["0-1:*"])] == ["ir_k5_e8"]
    assert [o.op for o in excluded(opts, ["*:*"])] == ["ir_k5_e8", "skip", "skip", "ir_k3_e1"]   # never `keep`
    assert [o.op for o in excluded(opts, ["1:ir_*", "0:skip"])] == ["skip", "ir_k3_e1"]
    assert excluded(opts, ["0:*"]) == [opts[3]]          # "0" is the slot alone, not spans starting there
    out = {o.key for o in excluded(opts, ["0-1:*"])}
    p.options = [o for o in opts if o.key not in out]
    assert [(o.first, o.op) for o in solve(p).choices] == [(0, "skip"), (1, "keep")]
    assert exclude_problem("14-15:*") is None and "SLOTS:OP" in exclude_problem("skip")


def test_an_int8x_budget_is_calibrated_beside_the_int8_teacher(monkeypatch):
    """`search.calibrate_rounds` with an `int8x=` budget times the student beside the teacher in
    plain int8 and scales by the table's int8 teacher (the ratio the budget names); other budgets
    beside the fp32 teacher, by the table's teacher."""
    from types import SimpleNamespace as NS

    import hant_trt.latency.backends as backends
    import hant_trt.search.calibrate as calibrate
    from hant_trt.search import stage

    seen = {}

    def measure_factory(cfg, reference_s, rounds=3, threads=None, beside_int8=False):
        seen.update(reference_s=reference_s, beside_int8=beside_int8)
        return lambda sol: reference_s

    def calibrated(problem, device, solve, measure, rounds):
        measure(None)
        return NS(predicted_s={"d": 1e-3}, score=1.0, status="optimal", solver="cbc", solve_seconds=0.0,
                  n_variables=3), []

    monkeypatch.setattr(calibrate, "engine_measure", measure_factory)
    monkeypatch.setattr(calibrate, "calibrated_solve", calibrated)
    monkeypatch.setattr(backends, "profiled_threads", lambda run: None)
    tables = NS(fixed={"d": NS(teacher_s=3e-3, teacher_int8_s=1.5e-3)}, dropped=[])
    for budget, reference_s, beside_int8 in (("int8x=1.3", 1.5e-3, True), ("speedup=2", 3e-3, False),
                                             ("0.5x", 3e-3, False)):
        cfg = NS(search=NS(budget=budget, calibrate_rounds=2, refine_sweeps=0, solver="cbc", time_limit=None))
        sol, info = stage.solve_posed(None, cfg, stage.Posed(NS(junction_mixed_s=None), tables, "latency", ["d"]))
        assert seen == {"reference_s": reference_s, "beside_int8": beside_int8}, budget
        assert info["calibrated_beside"] == ("teacher int8" if beside_int8 else "teacher")
