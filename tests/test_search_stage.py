"""Tables → options, and the `search` stage over a synthetic run directory."""

import json
import subprocess
import sys

import pytest

from hant_trt.config import RunConfig
from hant_trt.errors import UserError
from hant_trt.rundir import RunDir
from hant_trt.search.ilp import Solution
from hant_trt.search.stage import format_table, run_search
from hant_trt.search.tables import load_tables, select_devices

CPU, GPU = "cpu:AMD EPYC:b2f8601934", "cuda:NVIDIA A100:0123456789"
SCORE_HEAD = "first,last,op,precision,signature,agreement,kl,top1,local_mse,params,macs"
LAT_HEAD = "first,last,op,precision,signature,median_s,p90_s,stdev_s,count,backend,device"


def make_run(tmp_path, devices=(CPU,), labelled=False, extra_scores=(), extra_lat=()):
    """Two slots; per slot keep (2 ms), ir (1 ms, 95 %), skip (0.01 ms, 60 %); a fused 0-1 span
    (1.5 ms, 97 %); int8 ir on slot 1 (0.4 ms, 93 %); fp16 rows (no fp16 score) on the GPU."""
    root = tmp_path / "r"
    run = RunDir(root)
    (root / "teacher.json").write_text(json.dumps({"slots": [{"index": 0}, {"index": 1}]}))
    sc, lat = [SCORE_HEAD], [LAT_HEAD]
    top1 = (lambda agr: f"{70 - (100 - agr) / 10:.2f}") if labelled else (lambda agr: "")
    for s in range(2):
        for op, agr, ms, params in (("keep", 100, 2.0, 1000), ("ir_k3_e2", 95, 1.0, 500), ("skip", 60, 0.01, 0)):
            sc.append(f"{s},{s},{op},fp32,{op}|{s},{agr},{(100 - agr) / 100},{top1(agr)},{(100 - agr) / 50},"
                      f"{params},{params * 10}")
            for i, dev in enumerate(devices):
                lat.append(f"{s},{s},{op},fp32,{op}|{s},{ms / 1e3 * (1 + i)},0,0,10,ort,{dev}")
                if dev == GPU:
                    lat.append(f"{s},{s},{op},fp16,{op}|{s},{ms / 1e3},0,0,10,tensorrt,{dev}")
    sc.append(f"0,1,er_k3_e2,fp32,er|01,97,0.03,{top1(97)},0.1,800,8000")
    sc.append(f"1,1,ir_k3_e2,int8,ir|1,93,0.07,{top1(93)},0.1,500,5000")
    sc.append("1,1,ir_k5_e2,int8,ir5|1,99,0.01,,0.1,500,5000")          # int8 score but no latency: dropped
    for i, dev in enumerate(devices):
        lat.append(f"0,1,er_k3_e2,fp32,er|01,{1.5e-3 * (1 + i)},0,0,10,ort,{dev}")
        lat.append(f"1,1,ir_k3_e2,int8,ir|1,{0.4e-3 * (1 + i)},0,0,10,ort,{dev}")
        lat.append(f"0,0,ir_k3_e2,int8,ir|0,{0.1e-3},0,0,10,ort,{dev}")  # int8 latency but no score: dropped
    sc += list(extra_scores)
    lat += list(extra_lat)
    (root / "scores.csv").write_text("\n".join(sc) + "\n")
    (root / "latency.csv").write_text("\n".join(lat) + "\n")
    fixed = {dev: {"stem_s": 1e-3 * (1 + i), "head_s": 1e-3 * (1 + i), "teacher_s": 6e-3 * (1 + i),
                   "teacher_sum_s": 6e-3 * (1 + i), "correction_s": 0.0} for i, dev in enumerate(devices)}
    (root / "latency_fixed.json").write_text(json.dumps({"device": fixed}))
    for st in ("teacher", "distill", "score", "profile"):
        run.set_stage(st, "done", "x")
    return run


def cfg_with(**search):
    cfg = RunConfig()
    cfg.search.metric = "agreement"  # the tables below are built around agreement scores
    for k, v in search.items():
        setattr(cfg.search, k, v)
    return cfg


def test_tables_join_fp16_fallback_and_int8(tmp_path):
    run = make_run(tmp_path, devices=(CPU, GPU))
    t = load_tables(run.root)
    keys = {o.key: o for o in t.options}
    # fp16 rows take the fp32 score of the same op; int8 needs its own score
    assert keys[(0, 0, "ir_k3_e2", "fp16")].score == keys[(0, 0, "ir_k3_e2", "fp32")].score == -5.0
    assert keys[(1, 1, "ir_k3_e2", "int8")].score == -7.0
    assert (0, 0, "ir_k3_e2", "int8") not in keys and (1, 1, "ir_k5_e2", "int8") not in keys
    assert t.dropped == 2
    assert keys[(0, 1, "er_k3_e2", "fp32")].latency_s == {CPU: pytest.approx(1.5e-3), GPU: pytest.approx(3e-3)}
    assert (0, 0, "keep", "fp16") in keys and CPU not in keys[(0, 0, "keep", "fp16")].latency_s
    assert t.teacher_params == 2000 and t.fixed[GPU].fixed_s == pytest.approx(4e-3)


@pytest.mark.parametrize("metric,expect", [("agreement", -5.0), ("kl", -0.05), ("local_mse", -0.1),
                                           ("accuracy_drop", -0.5), ("top1", -0.5)])
def test_metrics(tmp_path, metric, expect):
    run = make_run(tmp_path, labelled=True)
    opts = {o.key: o for o in load_tables(run.root, metric).options}
    assert opts[(0, 0, "ir_k3_e2", "fp32")].score == pytest.approx(expect)
    assert opts[(0, 0, "keep", "fp32")].score == pytest.approx(0.0)


def test_top1_needs_labels(tmp_path):
    with pytest.raises(UserError, match="labelled"):
        load_tables(make_run(tmp_path).root, "top1")


def test_unknown_metric(tmp_path):
    with pytest.raises(UserError, match="unknown metric"):
        load_tables(make_run(tmp_path).root, "speed")


def test_corrupt_tables_are_user_errors(tmp_path):
    run = make_run(tmp_path, extra_lat=["0,0,keep,fp32,x,fast,0,0,1,ort,cpu"])
    with pytest.raises(UserError, match=r"latency.csv:\d+: column 'median_s'"):
        load_tables(run.root)
    (run.root / "latency.csv").write_text("first,last,op\n0,0,keep\n")
    with pytest.raises(UserError, match="lacks column"):
        load_tables(run.root)
    make_run(tmp_path / "again")
    (tmp_path / "again" / "r" / "latency_fixed.json").write_text("{not json")
    with pytest.raises(UserError, match="latency_fixed.json is corrupt"):
        load_tables(tmp_path / "again" / "r")


def test_device_selection():
    fixed = {CPU: None, GPU: None}
    assert select_devices(fixed, None) == sorted([CPU, GPU])
    assert select_devices(fixed, ["A100", "EPYC"]) == [GPU, CPU]
    with pytest.raises(UserError, match="matches no"):
        select_devices(fixed, ["H100"])
    with pytest.raises(UserError, match="matches 2"):
        select_devices(fixed, [":"])


def test_run_search_writes_solution_and_sweep(tmp_path):
    run = make_run(tmp_path)
    sol = run_search(run, cfg_with(budget="0.6x", sweep=4))
    # 3.6 ms budget − 2 ms fixed = 1.6 ms: the fused span (1.5 ms, −3) beats ir+int8 (1.4 ms, −12)
    assert [(o.first, o.last, o.op) for o in sol.choices] == [(0, 1, "er_k3_e2")]
    assert sol.predicted_s[CPU] == pytest.approx(3.5e-3) and sol.status == "optimal"
    d = json.loads((run.root / "solution.json").read_text())
    assert d["device"] == CPU and d["predicted_s"] == pytest.approx(3.5e-3) and d["budget_s"] == pytest.approx(3.6e-3)
    assert d["predicted_speedup"] == pytest.approx(6 / 3.5)
    c = d["choices"][0]
    assert {k: c[k] for k in ("first", "last", "op", "precision", "signature")} == \
        {"first": 0, "last": 1, "op": "er_k3_e2", "precision": "fp32", "signature": "er|01"}
    assert c["predicted_s"] == pytest.approx(1.5e-3) and c["score"] == pytest.approx(-3.0)
    pts = json.loads((run.root / "pareto.json").read_text())
    assert len(pts) == 4 and (run.root / "pareto.png").stat().st_size > 1000
    lat = [p["predicted_s"] for p in pts]
    scores = [p["score"] for p in pts]
    assert lat[0] == pytest.approx(2e-3 + 0.02e-3)                  # skip + skip: the fastest
    assert scores == sorted(scores) and scores[-1] == 0.0           # the last point is the teacher itself
    assert all(p["predicted_s"] <= p["budget_s"] * (1 + 1e-9) for p in pts)
    assert run.stage("search").status == "done"
    table = format_table(sol)
    assert "0-1" in table and "er_k3_e2" in table and "100%" in table
    assert format_table(d) == table                                   # the CLI may pass the dict


def test_skips_when_done_and_resolves_on_change(tmp_path):
    run = make_run(tmp_path)
    first = run_search(run, cfg_with(budget="3.6ms"))
    mtime = (run.root / "solution.json").stat().st_mtime_ns
    again = run_search(run, cfg_with(budget="3.6ms"))
    assert (run.root / "solution.json").stat().st_mtime_ns == mtime
    assert [o.key for o in again.choices] == [o.key for o in first.choices] and again.status == first.status
    loose = run_search(run, cfg_with(budget="speedup=1"))                  # settings changed: solved again
    assert [o.op for o in loose.choices] == ["keep", "keep"]
    with open(run.root / "latency.csv", "a") as fh:                        # inputs changed: solved again
        fh.write(f"0,0,magic,fp32,m|0,0.00001,0,0,10,ort,{CPU}\n")
    with open(run.root / "scores.csv", "a") as fh:
        fh.write("0,0,magic,fp32,m|0,100,0,,0,1,1\n")
    assert ("magic" in [o.op for o in run_search(run, cfg_with(budget="speedup=1")).choices])


def test_infeasible_budget_is_user_error_and_stage_not_done(tmp_path):
    run = make_run(tmp_path)
    with pytest.raises(UserError, match=r"smallest reachable latency is 2\.0200 ms"):
        run_search(run, cfg_with(budget="1ms"))
    assert run.stage("search").status != "done" and not (run.root / "solution.json").exists()


def test_absolute_budget_slower_than_the_teacher_is_refused(tmp_path):
    run = make_run(tmp_path)
    with pytest.raises(UserError, match=r"budget '7ms' is 7\.000 ms, slower than the teacher's 6\.000 ms"):
        run_search(run, cfg_with(budget="7ms"))
    assert run.stage("search").status != "done" and not (run.root / "solution.json").exists()


def test_two_devices_one_constraint_each(tmp_path):
    run = make_run(tmp_path, devices=(CPU, GPU))
    # CPU: 0.6 × 6 ms; GPU rows are 2× slower in fp32 but fp16 is as fast as the CPU's fp32
    sol = run_search(run, cfg_with(budget="0.6x"))
    assert set(sol.predicted_s) == {CPU, GPU}
    for dev in (CPU, GPU):
        assert sol.predicted_s[dev] <= sol.budget_s[dev] * (1 + 1e-9)
    assert all(o.precision != "fp16" for o in sol.choices)      # fp16 has no CPU latency: never chosen
    only_gpu = run_search(run, cfg_with(budget="0.6x", devices=["A100"]))
    assert set(only_gpu.predicted_s) == {GPU} and only_gpu.device == GPU
    assert only_gpu.score >= sol.score                           # one constraint fewer


def test_params_limit_from_config(tmp_path):
    run = make_run(tmp_path)
    sol = run_search(run, cfg_with(budget="speedup=1", max_params="0.5x"))
    assert sol.params <= 1000 and [o.op for o in sol.choices] != ["keep", "keep"]


def test_solution_round_trip(tmp_path):
    run = make_run(tmp_path, devices=(CPU, GPU))
    sol = run_search(run, cfg_with(budget="0.8x", metric="kl"))
    back = Solution.from_dict(json.loads((run.root / "solution.json").read_text()))
    assert back.to_dict() == sol.to_dict()
    with pytest.raises(UserError, match="malformed"):
        Solution.from_dict({"status": "optimal"})


def test_search_imports_neither_torch_nor_onnx():
    code = ("import sys, hant_trt.search.stage, hant_trt.search.sweep, hant_trt.search.tables;"
            "bad = [m for m in ('torch', 'onnx', 'onnxruntime', 'matplotlib') if m in sys.modules];"
            "print(bad); sys.exit(1 if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


def test_profile_needs_a_float_base_precision(tmp_path):
    from hant_trt.latency.precision import base_precision
    from hant_trt.latency.stage import run_profile

    cfg = RunConfig()
    cfg.profile.precisions = ["int8"]
    with pytest.raises(UserError, match="needs fp32, fp16 or bf16"):
        run_profile(RunDir(tmp_path / "run"), cfg)
    assert base_precision(["fp32", "int8"]) == "fp32" and base_precision(["fp16", "int8"]) == "fp16"
    assert base_precision(["bf16"]) == "bf16"
    cfg.profile.precisions = ["bf16"]
    with pytest.raises(UserError, match="torch backend only"):
        run_profile(RunDir(tmp_path / "run2"), cfg)


def test_skip_weight_scales_skips_only(tmp_path):
    """`search.skip_weight`: a skip's loss counts this many times (the fine-tune cannot recover it);
    other options keep their scores; the default leaves earlier runs' fingerprints alone."""
    from hant_trt.search.stage import search_fingerprint

    run = make_run(tmp_path)
    plain = {o.key: o.score for o in load_tables(run.root, "agreement").options}
    heavy = {o.key: o.score for o in load_tables(run.root, "agreement", skip_weight=2.5).options}
    for k, v in plain.items():
        assert heavy[k] == pytest.approx(v * 2.5 if k[2] == "skip" else v), k
    assert plain[(0, 0, "skip", "fp32")] == pytest.approx(-40.0)
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(UserError, match="skip_weight"):
            load_tables(run.root, "agreement", skip_weight=bad)
    base = cfg_with()
    assert search_fingerprint(run, base) == search_fingerprint(run, cfg_with(skip_weight=1.0))
    assert search_fingerprint(run, base) != search_fingerprint(run, cfg_with(skip_weight=2.0))
    # the stage reads it: with skips weighted 0.01 the cheapest covering (two skips) wins at a tight budget
    sol = run_search(run, cfg_with(budget="3.5ms", skip_weight=0.01))
    assert [c.op for c in sol.choices] == ["skip", "skip"]


def test_int8_profile_makes_stem_head_choices_and_junction_savings(tmp_path):
    """An int8 profile (stem/head int8 timings, junction savings) and scores_fixed.json: the search
    chooses the stem's and head's precision, subtracts the savings between int8 neighbours and
    writes both to solution.json; without scores_fixed.json the stem and head stay fixed."""
    from hant_trt.search.stage import search_fingerprint

    extra_s = ["0,0,keep,int8,keep|0,99,0.01,,0.1,1000,10000", "1,1,keep,int8,keep|1,99,0.01,,0.1,1000,10000"]
    extra_l = [f"0,0,keep,int8,keep|0,2.2e-3,0,0,10,ort,{CPU}", f"1,1,keep,int8,keep|1,2.2e-3,0,0,10,ort,{CPU}"]
    run = make_run(tmp_path, extra_scores=extra_s, extra_lat=extra_l)
    doc = json.loads((run.root / "latency_fixed.json").read_text())
    doc["device"][CPU].update(stem_int8_s=1.5e-3, head_int8_s=1.5e-3, junction_saving_s=[1.5e-3, 1.5e-3, 1.5e-3],
                              teacher_int8_s=3.0e-3, teacher_int8_sum_s=3.0e-3)
    (run.root / "latency_fixed.json").write_text(json.dumps(doc))
    before = search_fingerprint(run, cfg_with(budget="3.6ms"))
    plain = run_search(run, cfg_with(budget="3.6ms"))
    assert plain.fixed_choices == [] and all(o.op != "keep" or o.precision == "fp32" for o in plain.choices)
    (run.root / "scores_fixed.json").write_text(json.dumps(
        {"stem": {"int8": {"agreement": 99.5, "kl": 0.005}}, "head": {"int8": {"agreement": 99.8, "kl": 0.002}}}))
    assert search_fingerprint(run, cfg_with(budget="3.6ms")) != before
    sol = run_search(run, cfg_with(budget="3.6ms"))
    # all int8: 1.5 + 2.2 + 2.2 + 1.5 − 3 × 1.5 = 2.9 ms ≤ 3.6 ms at −1 −1 −0.5 −0.2 (agreement drops)
    assert [(o.op, o.precision) for o in sol.choices] == [("keep", "int8"), ("keep", "int8")]
    assert [(o.op, o.precision) for o in sol.fixed_choices] == [("stem", "int8"), ("head", "int8")]
    assert sol.predicted_s[CPU] == pytest.approx(2.9e-3) and sol.score == pytest.approx(-2.7)
    d = json.loads((run.root / "solution.json").read_text())
    assert [(f["part"], f["precision"]) for f in d["fixed_parts"]] == [("stem", "int8"), ("head", "int8")]
    table = format_table(d)
    assert table.splitlines()[1].split()[:3] == ["-", "stem", "int8"] and "head" in table.splitlines()[-3]
