"""trtexec-like bench: percentile/median rules and the summary format against hand-computed values,
per-iteration records, the measurement loop, the CLI and its one-line errors."""

import json
import sys

import pytest
import torch

from hant_trt.errors import UserError
from hant_trt.latency.bench import BenchResult, format_summary, run_bench
from hant_trt.latency.timing import IterTimes, Stats, Timing, measure, median, percentile


# -- trtexec's rules, hand-computed ------------------------------------------------------------------------
def test_percentile_rule_hand_computed():
    v = [float(i) for i in range(1, 11)]          # n = 10
    # index = max(n - 1 - int((1 - p/100) * n), 0), in single precision like trtexec:
    # p90: (1 - 0.9f) * 10 = 1.0000002 → int 1 → index 8 → 9 (double arithmetic would give 10)
    assert percentile(v, 90) == 9.0
    assert percentile(v, 95) == 10.0               # 0.5 → 0 → index 9
    assert percentile(v, 99) == 10.0
    assert percentile(v, 50) == 5.0                # 5 → index 4
    assert percentile(v, 0) == 1.0                 # 10 → index max(-1, 0) = 0
    assert percentile(v, 100) == 10.0
    w = [float(i) for i in range(1, 101)]          # n = 100
    # float: 1 - 0.99f = 0.00999999 → ·100 = 0.999999 → int 0 → index 99 → 100 (double would say 99)
    assert (percentile(w, 90), percentile(w, 95), percentile(w, 99)) == (90.0, 95.0, 100.0)
    assert percentile([7.0], 99) == 7.0
    x = [float(i) for i in range(1, 21)]           # n = 20: p95 → int(1.0000002) = 1 → index 18 → 19
    assert percentile(x, 95) == 19.0
    with pytest.raises(ValueError):
        percentile(v, 101)


def test_median_rule():
    assert median([1.0, 2.0, 3.0, 4.0]) == 2.5     # even: mean of the two middle values
    assert median([1.0, 2.0, 9.0]) == 2.0
    assert median([5.0]) == 5.0


def test_summary_format_host_timed_hand_computed():
    t = Timing([0.004, 0.001, 0.003, 0.002], walltime_s=0.02)
    lines = format_summary(BenchResult("m.onnx", "ort", t)).splitlines()
    assert lines[0] == "=== Performance summary ==="
    assert lines[1] == "Throughput: 200 qps"
    # sorted 1,2,3,4 ms: p90 index 4-1-int(0.4000001)=3 → 4; p95/p99 → 4
    assert lines[2] == ("Latency: min = 1 ms, max = 4 ms, mean = 2.5 ms, median = 2.5 ms, percentile(90%) = 4 ms, "
                        "percentile(95%) = 4 ms, percentile(99%) = 4 ms")
    assert lines[3] == "Total Host Walltime: 0.02 s"
    assert lines[4] == "Total Compute Time: 0.01 s"
    assert not any("GPU Compute Time:" in x for x in lines)


def test_summary_format_device_timed_has_trtexec_lines_and_six_digits():
    n = 10
    comp = [1e-3 * (1 + i / 1000) for i in range(n)]      # 1.000 … 1.009 ms
    h2d, d2h, enq = [1e-4] * n, [2e-4] * n, [5e-5] * n
    lat = [a + b + c for a, b, c in zip(h2d, comp, d2h)]
    t = Timing(lat, walltime_s=0.0123, compute_s=comp, h2d_s=h2d, d2h_s=d2h, enqueue_s=enq, device_timed=True)
    out = format_summary(BenchResult("m.plan", "tensorrt", t))
    lines = out.splitlines()
    names = [x.split(":")[0] for x in lines[:10]]
    assert names == ["=== Performance summary ===", "Throughput", "Latency", "Enqueue Time", "H2D Latency",
                     "GPU Compute Time", "D2H Latency", "Total Host Walltime", "Total GPU Compute Time", "Backend"]
    assert lines[1] == "Throughput: 813.008 qps"                 # 10 / 0.0123 = 813.00813…, 6 significant digits
    assert lines[5] == ("GPU Compute Time: min = 1 ms, max = 1.009 ms, mean = 1.0045 ms, median = 1.0045 ms, "
                        "percentile(90%) = 1.008 ms, percentile(95%) = 1.009 ms, percentile(99%) = 1.009 ms")
    assert lines[4].startswith("H2D Latency: min = 0.1 ms, max = 0.1 ms")
    assert lines[2].startswith("Latency: min = 1.3 ms, max = 1.309 ms")
    assert lines[7] == "Total Host Walltime: 0.0123 s"
    assert lines[8] == "Total GPU Compute Time: 0.010045 s"
    assert "unstable" not in out
    # > 2.5 % coefficient of variation → trtexec's warning
    t2 = Timing([1e-3, 2e-3] * 5, 0.1, compute_s=[1e-3, 2e-3] * 5, device_timed=True)
    assert "[W] * GPU compute time is unstable, with coefficient of variance = 33.3333%." in format_summary(
        BenchResult("m.plan", "tensorrt", t2))


def test_records_have_trtexec_keys_and_consistent_times():
    t = Timing([1.3e-3, 1.4e-3], 0.01, starts_s=[0.0, 0.005], compute_s=[1e-3, 1.1e-3], h2d_s=[1e-4, 1e-4],
               d2h_s=[2e-4, 2e-4], enqueue_s=[5e-5, 5e-5], device_timed=True)
    keys = ["startEnqMs", "endEnqMs", "startH2dMs", "endH2dMs", "startComputeMs", "endComputeMs", "startD2hMs",
            "endD2hMs", "h2dMs", "computeMs", "d2hMs", "latencyMs", "endToEndMs"]
    r = t.records
    assert list(r[1]) == keys
    assert r[1]["startH2dMs"] == pytest.approx(5.0) and r[1]["endH2dMs"] == pytest.approx(5.1)
    assert r[1]["endComputeMs"] == pytest.approx(6.2) and r[1]["endD2hMs"] == pytest.approx(6.4)
    assert r[1]["latencyMs"] == pytest.approx(1.4) and r[1]["endToEndMs"] == pytest.approx(1.4)


# -- the measurement loop ---------------------------------------------------------------------------------
def test_measure_stops_on_stable_median_and_respects_minimums():
    calls = []

    def step():
        calls.append(1)
        return IterTimes(0.0, 1e-3, 0.0, 1e-5)   # perfectly stable device time

    t = measure(step, warmup_ms=0, min_iters=10, max_seconds=30, cv_target=0.02)
    assert 20 <= t.count <= 60 and t.device_timed and t.median_s == 1e-3   # stopped early, not at 30 s
    t = measure(step, warmup_ms=0, min_iters=10, max_seconds=30, cv_target=0.02, max_iters=15)
    assert t.count == 15
    t = measure(lambda: None, warmup_ms=0, min_iters=5, max_seconds=0.0, cv_target=0, min_seconds=0.05)
    assert t.walltime_s >= 0.05 and not t.device_timed
    s = Stats.of([3.0, 1.0, 2.0])
    assert (s.min, s.max, s.median, s.count) == (1.0, 3.0, 2.0, 3)


# -- run_bench / CLI -----------------------------------------------------------------------------------------
def tiny_onnx(path):
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU()).eval()
    from hant_trt.latency.export import export_onnx

    return export_onnx(net, (1, 3, 16, 16), path)


def test_run_bench_honours_iterations_duration_and_exports_times(tmp_path):
    p = tiny_onnx(tmp_path / "m.onnx")
    out = tmp_path / "times.json"
    r = run_bench(p, warmup_ms=10, iterations=25, duration_s=0.1, export_times=out, threads=1)
    assert r.backend == "ort" and r.timing.count >= 25 and r.timing.walltime_s >= 0.1
    recs = json.loads(out.read_text())
    assert len(recs) == r.timing.count and recs[0]["latencyMs"] > 0 and recs[0]["h2dMs"] == 0
    assert "=== Performance summary ===" in format_summary(r)


def test_run_bench_bad_input_is_one_line(tmp_path, monkeypatch):
    with pytest.raises(UserError, match="not found"):
        run_bench(tmp_path / "nope.onnx")
    plan = tmp_path / "m.plan"
    plan.write_bytes(b"x")
    with pytest.raises(UserError, match="--backend tensorrt"):
        run_bench(plan, backend="ort")
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(UserError, match="pip install"):
        run_bench(plan)
    with pytest.raises(UserError, match="unknown backend"):
        run_bench(tiny_onnx(tmp_path / "m.onnx"), backend="tpu")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not an onnx file")
    with pytest.raises(UserError) as e:
        run_bench(bad, duration_s=0.01)
    assert "bad.onnx" in str(e.value) and "\n" not in str(e.value)


def test_bench_on_a_fake_tensorrt_plan_prints_gpu_lines(tmp_path, monkeypatch):
    from fakes.fake_tensorrt import FakeGpu, install

    install(monkeypatch, 10, "bindings", FakeGpu(compute_ms=1.5))
    plan = tmp_path / "m.plan"
    plan.write_bytes(b"PLAN")
    r = run_bench(plan, warmup_ms=1, iterations=10, duration_s=0.02)
    out = format_summary(r)
    assert "GPU Compute Time: min = 1.5 ms" in out and "H2D Latency: min = 0.00075 ms" in out   # 10.x: copies on
    assert "Total GPU Compute Time:" in out and not r.timing.cuda_graph                      # 10.x: no graph
