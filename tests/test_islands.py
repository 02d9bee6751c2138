"""Float islands in the int8 teacher (`profile.islands`): timed, fitted to mixed-junction costs,
and priced by the search."""

import math

import pytest

from hant_trt.search.ilp import Option, predict, solve
from hant_trt.search.islands import island_junctions, mixed_costs, nonneg_least_squares
from hant_trt.search.tables import FixedParts, Tables, build_problem

from conftest import CountingBackend

DEV = "cpu:x"


def test_island_junctions_of_stem_slots_and_head():
    assert island_junctions(-1, 4) == (0,) and island_junctions(0, 4) == (0, 1)
    assert island_junctions(3, 4) == (3, 4) and island_junctions(4, 4) == (4,)


def test_mixed_costs_recover_the_junction_costs_that_made_the_residuals():
    n = 4
    costs = [0.1, 0.0, 0.3, 0.05, 0.2]
    predicted = [0.2, 0.5, -0.1, 0.4, 0.3, 0.1]           # stem, slots 0..3, head
    measured = [p + sum(costs[j] for j in island_junctions(k - 1, n)) for k, p in enumerate(predicted)]
    assert mixed_costs(measured, predicted, n) == pytest.approx(costs, abs=1e-9)


def test_mixed_costs_are_never_negative_and_skip_unmeasured_islands():
    n = 2
    # the stem's island came out 0.2 cheaper than the model (no negative cost for it), slot 1 not measured
    got = mixed_costs([0.0, 0.5, None, 0.3], [0.2, 0.2, 0.1, 0.1], n)
    assert all(c >= 0 for c in got) and len(got) == n + 1
    assert got[2] == pytest.approx(0.2, abs=1e-6)           # the head's island alone fixes junction 2
    # junctions 0 and 1 share slot 0's +0.3; the stem's −0.2 pushes junction 0 to 0: junction 1 takes all
    assert got[0] == pytest.approx(0.0, abs=1e-6) and got[1] == pytest.approx(0.3, abs=1e-6)


def test_nonneg_least_squares_matches_the_unconstrained_fit_when_that_is_positive():
    cols = [(0,), (0, 1), (1, 2), (2,), (1,)]
    vals = [1.0, 3.0, 5.0, 2.0, 2.2]
    x = nonneg_least_squares(cols, vals, 3)
    import numpy as np

    a = np.zeros((len(cols), 3))
    for k, c in enumerate(cols):
        a[k, list(c)] = 1
    ref = np.linalg.lstsq(a, np.array(vals), rcond=None)[0]
    assert (ref > 0).all() and x == pytest.approx(ref.tolist(), abs=1e-7)


def tables_with_islands(extras):
    """Two slots; fp32 keep 1.0 ms, int8 keep 0.8 ms, stem/head 0.5 fp32 / 0.4 int8, junction
    savings 0.1 ms each: the int8 teacher predicts 0.4 + 1.6 + 0.4 − 0.3 = 2.1 ms."""
    opts = [Option(i, i, "keep", p, 0.0 if p == "fp32" else -0.1, {DEV: lat}) for i in range(2)
            for p, lat in (("fp32", 1e-3), ("int8", 0.8e-3))]
    fixed = {DEV: FixedParts(stem_s=0.5e-3, head_s=0.5e-3, teacher_s=3e-3, correction_s=0.0, teacher_sum_s=3e-3,
                             stem_int8_s=0.4e-3, head_int8_s=0.4e-3, junction_saving_s=(1e-4, 1e-4, 1e-4),
                             teacher_int8_s=2.1e-3, teacher_int8_sum_s=2.1e-3, island_extra_s=extras)}
    return Tables(opts, fixed, fixed_scores={"stem": {"int8": -0.1}, "head": {"int8": -0.1}})


def test_the_search_prices_the_islands_the_profile_measured():
    """Model extras: stem 0.5 − 0.4 + 0.1 = 0.2 ms, slots 1.0 − 0.8 + 0.2 = 0.4, head 0.2. Measured
    0.4 more at slot 0 and 0.4 at the stem: junction 0 costs 0.4 ms (both islands break it)."""
    model = [2e-4, 4e-4, 4e-4, 2e-4]
    measured = [model[0] + 4e-4, model[1] + 4e-4, model[2], model[3]]
    p = build_problem(tables_with_islands(tuple(measured)), 2, "1.0x", [DEV])
    assert [c[DEV] for c in p.junction_mixed_s] == pytest.approx([4e-4, 0.0, 0.0], abs=1e-9)
    keep = {(o.first, o.precision): o for o in p.options}
    stem = {o.precision: o for o in p.fixed_options if o.op == "stem"}
    head = {o.precision: o for o in p.fixed_options if o.op == "head"}
    all8 = predict(p, [keep[(0, "int8")], keep[(1, "int8")]], [stem["int8"], head["int8"]], DEV)
    island = predict(p, [keep[(0, "int8")], keep[(1, "int8")]], [stem["fp32"], head["int8"]], DEV)
    assert all8 == pytest.approx(2.1e-3) and island - all8 == pytest.approx(measured[0])
    # without islands in the profile: no costs, the model as before
    assert build_problem(tables_with_islands(()), 2, "1.0x", [DEV]).junction_mixed_s == []


def test_a_search_with_island_costs_keeps_the_stem_int8():
    """At a budget the model without islands meets with an fp32 stem (the stem's int8 score is
    worse), the measured island cost makes the int8 stem the only feasible choice."""
    model = [2e-4, 4e-4, 4e-4, 2e-4]
    plain = tables_with_islands(tuple(model))
    priced = tables_with_islands((model[0] + 4e-4, model[1] + 4e-4, model[2], model[3]))
    budget = "int8x=0.9"           # 2.1 / 0.9 = 2.33 ms: room for the stem's +0.2 ms, not for +0.6
    free = solve(build_problem(plain, 2, budget, [DEV]))
    paid = solve(build_problem(priced, 2, budget, [DEV]))
    assert [o.precision for o in free.fixed_choices if o.op == "stem"] == ["fp32"]
    assert [o.precision for o in paid.fixed_choices if o.op == "stem"] == ["int8"]


@pytest.mark.slow
def test_islands_are_timed_in_the_int8_teacher_once(lite0, tmp_path):
    """Every part of a (small-resolution) Lite0 timed at fp32 inside its int8 teacher on ORT: one
    finite extra per part, rows in the table, nothing measured again the second time."""
    from hant_trt.latency.islands import _selection, measure_islands
    from hant_trt.latency.lut import LatencyTable
    from hant_trt.quant.layouts import LAYOUTS
    from hant_trt.teacher.decompose import decompose

    res = 64
    d = decompose(lite0.model, res)
    n = len(d.slots)
    sel = _selection(n, 3, "fp32")
    assert [o.precision for o in sel.choices].count("fp32") == 1 and sel.choices[3].precision == "fp32"
    assert [o.precision for o in sel.fixed_choices] == ["int8", "int8"]

    be, table = CountingBackend(), LatencyTable(tmp_path / "lut.sqlite")
    sigs = ["stem"] + [f"slot{i}" for i in range(n)] + ["head"]
    got = measure_islands(d, "lite0", res, sigs, be, table, tmp_path / "w", LAYOUTS["ort"], rounds=1,
                          max_seconds=0.01, progress=False)
    assert len(got) == n + 2 and all(g is not None and math.isfinite(g) for g in got)
    assert be.prepared == n + 3                        # the int8 teacher once, each island once
    again = measure_islands(d, "lite0", res, sigs, be, table, tmp_path / "w", LAYOUTS["ort"], rounds=1,
                            max_seconds=0.01, progress=False)
    assert again == got and be.prepared == n + 3
