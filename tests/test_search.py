import itertools
import json
import random

import pytest

from hant_trt.errors import UserError
from hant_trt.search.ilp import Option, Problem, min_latency, solve
from hant_trt.search.tables import parse_budget

DEV = "cpu:test"


def random_problem(seed: int, n_slots=4, per_slot=3, spans=True, precisions=("fp32", "int8")):
    rng = random.Random(seed)
    opts = []
    for s in range(n_slots):
        for k in range(per_slot):
            for p in precisions:
                opts.append(Option(s, s, f"op{k}", p, score=-rng.random() * 10,
                                   latency_s={DEV: rng.uniform(0.1, 1.0)}))
        if spans and s + 1 < n_slots:
            for k in range(2):
                opts.append(Option(s, s + 1, f"fused{k}", "fp32", score=-rng.random() * 15,
                                   latency_s={DEV: rng.uniform(0.1, 1.2)}))
    return opts


def brute_force(n, opts, budget, fixed):
    best = None

    def cover(start, chosen, lat, score):
        nonlocal best
        if start == n:
            if fixed + lat <= budget + 1e-12 and (best is None or score > best[0] + 1e-12):
                best = (score, list(chosen))
            return
        for o in opts:
            if o.first == start:
                chosen.append(o)
                cover(o.last + 1, chosen, lat + o.latency_s[DEV], score + o.score)
                chosen.pop()

    cover(0, [], 0.0, 0.0)
    return best


@pytest.mark.parametrize("seed", range(8))
def test_ilp_equals_brute_force(seed):
    opts = random_problem(seed)
    fixed = 0.3
    lo = min_latency(Problem(4, opts, {DEV: 99}, {DEV: fixed}), DEV)
    budget = lo + random.Random(seed).uniform(0.1, 2.0)
    sol = solve(Problem(4, opts, {DEV: budget}, {DEV: fixed}))
    ref = brute_force(4, opts, budget, fixed)
    assert sol.score == pytest.approx(ref[0], abs=1e-6)
    covered = sorted(s for o in sol.choices for s in range(o.first, o.last + 1))
    assert covered == [0, 1, 2, 3]                     # each slot exactly once, spans never overlap
    assert sol.predicted_s[DEV] <= budget + 1e-9
    again = solve(Problem(4, opts, {DEV: budget}, {DEV: fixed}))
    assert [(o.first, o.op, o.precision) for o in again.choices] == [(o.first, o.op, o.precision) for o in sol.choices]


def test_infeasible_budget_names_smallest_latency():
    opts = random_problem(1)
    p = Problem(4, opts, {DEV: 0.01}, {DEV: 0.3})
    with pytest.raises(UserError, match="smallest reachable latency is"):
        solve(p)


def test_two_devices_each_constrained():
    opts = [Option(0, 0, "a", "fp32", -1.0, {"d1": 1.0, "d2": 5.0}),
            Option(0, 0, "b", "fp32", -2.0, {"d1": 5.0, "d2": 1.0}),
            Option(0, 0, "c", "fp32", -3.0, {"d1": 2.0, "d2": 2.0})]
    sol = solve(Problem(1, opts, {"d1": 2.5, "d2": 2.5}, {}))
    assert [o.op for o in sol.choices] == ["c"]


def test_params_limit():
    opts = [Option(0, 0, "big", "fp32", 0.0, {DEV: 1.0}, params=100),
            Option(0, 0, "small", "fp32", -1.0, {DEV: 1.0}, params=10)]
    assert solve(Problem(1, opts, {DEV: 5}, {}, max_params=50)).choices[0].op == "small"


@pytest.mark.parametrize("text,expect", [("0.5x", 5e-3), ("2ms", 2e-3), ("0.004s", 4e-3), ("speedup=2", 5e-3)])
def test_budget_parsing(text, expect):
    assert parse_budget(text, 0.01) == pytest.approx(expect)


def test_bad_budget():
    with pytest.raises(UserError, match="cannot read budget"):
        parse_budget("fast", 0.01)


def test_run_search_on_tables(tmp_path):
    from hant_trt.config import RunConfig
    from hant_trt.rundir import RunDir
    from hant_trt.search.stage import format_table, run_search

    run = RunDir(tmp_path / "r")
    (tmp_path / "r" / "teacher.json").write_text(json.dumps({"slots": [{}, {}]}))
    sc = ["first,last,op,precision,signature,agreement,kl,top1,local_mse,params,macs"]
    lat = ["first,last,op,precision,signature,median_s,p90_s,stdev_s,count,backend,device"]
    for s in range(2):
        for op, agr, ms in (("keep", 100, 2.0), ("ir_k3_e2", 95, 1.0), ("skip", 60, 0.01)):
            sc.append(f"{s},{s},{op},fp32,{op}|{s},{agr},0.1,,0.1,10,10")
            lat.append(f"{s},{s},{op},fp32,{op}|{s},{ms / 1e3},0,0,10,ort,{DEV}")
    sc.append("0,1,er_k3_e2,fp32,er|01,97,0.1,,0.1,10,10")
    lat.append(f"0,1,er_k3_e2,fp32,er|01,{1.5e-3},0,0,10,ort,{DEV}")
    (tmp_path / "r" / "scores.csv").write_text("\n".join(sc) + "\n")
    (tmp_path / "r" / "latency.csv").write_text("\n".join(lat) + "\n")
    (tmp_path / "r" / "latency_fixed.json").write_text(json.dumps(
        {"device": {DEV: {"stem_s": 1e-3, "head_s": 1e-3, "teacher_s": 6e-3, "teacher_sum_s": 6e-3,
                          "correction_s": 0.0}}}))
    for st in ("teacher", "score", "profile"):
        run.set_stage(st, "done", "x")
    cfg = RunConfig()
    cfg.search.budget = "0.6x"
    cfg.search.sweep = 4
    sol = run_search(run, cfg)
    assert [c["op"] for c in sol["choices"]] == ["er_k3_e2"]       # the fused span wins
    assert sol["predicted_s"] == pytest.approx(3.5e-3)
    assert (tmp_path / "r" / "pareto.png").exists() and len(json.loads((tmp_path / "r" / "pareto.json").read_text())) == 4
    assert "er_k3_e2" in format_table(sol)
