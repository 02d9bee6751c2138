import json
import multiprocessing as mp
import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from hant_trt.errors import UserError
from hant_trt.latency.backends import get_backend
from hant_trt.latency.bench import BenchResult, format_summary
from hant_trt.latency.export import export_onnx
from hant_trt.latency.lut import LatencyRow, LatencyTable
from hant_trt.latency.precision import to_fp16
from hant_trt.quant.layouts import quantize_int8
from hant_trt.latency.profile import ProfileItem, profile_items
from hant_trt.latency.timing import Timing, median, percentile


def small_net():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.BatchNorm2d(16), torch.nn.ReLU(),
                              torch.nn.Conv2d(16, 16, 3, padding=1, groups=16), torch.nn.BatchNorm2d(16),
                              torch.nn.ReLU(), torch.nn.Conv2d(16, 8, 1), torch.nn.BatchNorm2d(8))
    for m in net:
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    return net.eval()


def run_onnx(path, x):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]


def test_export_folds_bn_and_matches(tmp_path):
    net = small_net()
    p = export_onnx(net, (1, 3, 16, 16), tmp_path / "n.onnx")
    ops = {n.op_type for n in onnx.load(str(p)).graph.node}
    assert "BatchNormalization" not in ops and onnx.load(str(p)).opset_import[0].version >= 17
    x = np.random.randn(1, 3, 16, 16).astype(np.float32)
    with torch.no_grad():
        assert np.allclose(run_onnx(p, x), net(torch.from_numpy(x)).numpy(), atol=1e-5)


def test_fp16_and_int8_qdq_run_on_ort_and_stay_close(tmp_path):
    net = small_net()
    p = export_onnx(net, (1, 3, 16, 16), tmp_path / "n.onnx")
    rng = np.random.default_rng(0)
    xs = [rng.standard_normal((1, 3, 16, 16)).astype(np.float32) for _ in range(8)]
    h = to_fp16(p, tmp_path / "h.onnx")
    q = quantize_int8(net, (1, 3, 16, 16), tmp_path / "q.onnx", lambda: [torch.from_numpy(a) for a in xs],
                      method="max")
    x = xs[0]
    ref = run_onnx(p, x)
    # tolerances: fp16 within 1e-2 of fp32; int8 cosine similarity >= 0.99 (stated in docs)
    assert np.abs(run_onnx(h, x) - ref).max() < 1e-2
    y = run_onnx(q, x)
    cos = float((y * ref).sum() / np.linalg.norm(y) / np.linalg.norm(ref))
    assert cos >= 0.99, cos
    # TensorRT explicit-quantization layout: every Conv's data input comes from a DequantizeLinear,
    # weights are per-channel (axis 0) int8 with zero points 0
    g = onnx.load(str(q)).graph
    producer = {o: n for n in g.node for o in n.output}
    inits = {i.name: i for i in g.initializer}
    convs = [n for n in g.node if n.op_type == "Conv"]
    assert convs
    for c in convs:
        assert producer[c.input[0]].op_type == "DequantizeLinear"
        wdq = producer[c.input[1]]
        assert wdq.op_type == "DequantizeLinear"
        zp = onnx.numpy_helper.to_array(inits[wdq.input[2]])
        assert zp.dtype == np.int8 and not zp.any() and zp.size == onnx.numpy_helper.to_array(inits[wdq.input[1]]).size
        axis = [a.i for a in wdq.attribute if a.name == "axis"]
        assert axis in ([0], []) and zp.size > 1
    for n in g.node:
        if n.op_type == "QuantizeLinear" and len(n.input) > 2 and n.input[2] in inits:
            assert not onnx.numpy_helper.to_array(inits[n.input[2]]).any()


def test_percentile_and_summary_format():
    v = sorted([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0])
    # index = max(n - 1 - int((1 - p/100) * n), 0)
    assert percentile(v, 90) == v[10 - 1 - 1]          # int(0.1*10)=1 → index 8 → 9.0
    assert percentile(v, 99) == v[9]                    # int(0.01*10)=0 → index 9
    assert percentile(v, 50) == v[4]
    assert median(v) == 5.5 and median([1.0, 2.0, 3.0]) == 2.0
    t = Timing([0.001, 0.002, 0.003, 0.004], walltime_s=0.02)
    out = format_summary(BenchResult("m.onnx", "ort", t))
    lines = out.splitlines()
    assert lines[0] == "=== Performance summary ==="
    assert lines[1] == "Throughput: 200 qps"
    assert lines[2].startswith("Latency: min = 1 ms, max = 4 ms, mean = 2.5 ms, median = 2.5 ms, "
                               "percentile(90%) = 4 ms, percentile(95%) = 4 ms, percentile(99%) = 4 ms")
    assert "Total Host Walltime: 0.02 s" in out


def _writer(path, who, n):
    t = LatencyTable(path)
    for i in range(n):
        t.put(LatencyRow(f"sig{who}-{i}", "3x8x8", 1, "fp32", "ort", "1", "dev", median_s=i * 1e-3, count=1))


def test_two_concurrent_writers_lose_nothing(tmp_path):
    path = tmp_path / "lut.sqlite"
    LatencyTable(path)
    ctx = mp.get_context("spawn")
    ps = [ctx.Process(target=_writer, args=(path, w, 150)) for w in range(2)]
    for p in ps:
        p.start()
    for p in ps:
        p.join(120)
        assert p.exitcode == 0
    assert len(LatencyTable(path).rows()) == 300


def test_corrupt_table_is_a_user_error(tmp_path):
    p = tmp_path / "bad.sqlite"
    p.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(UserError, match="corrupt"):
        LatencyTable(p)


def test_unknown_and_missing_backends():
    with pytest.raises(UserError, match="unknown backend"):
        get_backend("tpu")
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        with pytest.raises(UserError, match="pip install"):
            get_backend("tensorrt")
        return
    try:
        backend = get_backend("tensorrt")
    except UserError as exc:        # TensorRT without a GPU or cuda-python: the hint names what is missing
        assert "pip install" in str(exc) and "GPU" in str(exc)
    else:
        assert backend.name == "tensorrt"


def test_profile_measures_once_and_rerun_measures_nothing(tmp_path):
    table = LatencyTable(tmp_path / "lut.sqlite")
    be = get_backend("ort", threads=1)
    items = [ProfileItem("net|a", (1, 3, 16, 16), small_net), ProfileItem("net|a", (1, 3, 16, 16), small_net),
             ProfileItem("bad|b", (1, 3, 16, 16), lambda: (_ for _ in ()).throw(RuntimeError("boom")))]
    res = profile_items(items, be, table, ["fp32"], tmp_path / "w", progress=False, max_seconds=0.2)
    assert len(res) == 2
    good = [r for r in res if r.signature == "net|a"][0]
    bad = [r for r in res if r.signature == "bad|b"][0]
    assert good.median_s > 0 and bad.error and "boom" in bad.error
    again = profile_items(items, be, table, ["fp32"], tmp_path / "w", progress=False, max_seconds=0.2)
    assert all(r.cached for r in again)
    # a row of another device is never used
    other = LatencyRow("net|a", "3x16x16", 1, "fp32", "ort", be.version(), "cpu:other", median_s=1.0)
    table.put(other)
    third = profile_items(items[:1], be, table, ["fp32"], tmp_path / "w", progress=False)
    assert third[0].median_s == good.median_s


def test_bench_cli_and_bad_onnx(tmp_path):
    from conftest import run_cli

    p = export_onnx(small_net(), (1, 3, 16, 16), tmp_path / "n.onnx")
    r = run_cli("bench", str(p), "--duration", "0.3", "--warmup", "50", "--export-times", str(tmp_path / "t.json"))
    assert r.returncode == 0, r.stderr
    assert "=== Performance summary ===" in r.stdout and "percentile(99%)" in r.stdout
    recs = json.loads((tmp_path / "t.json").read_text())
    assert recs and {"startEnqMs", "endEnqMs", "computeMs", "latencyMs", "h2dMs", "d2hMs"} <= set(recs[0])
    (tmp_path / "bad.onnx").write_bytes(b"garbage")
    r = run_cli("bench", str(tmp_path / "bad.onnx"))
    assert r.returncode == 2 and "not a readable ONNX" in r.stderr


def test_measure_module_stores_the_median_of_rounds_and_reuses_it(tmp_path):
    """The teacher's and fixed parts' figures are the median of separate timings (one slow spell
    must not set every relative budget), stored once and read back after."""
    from torch import nn

    from hant_trt.latency.backends import get_backend
    from hant_trt.latency.lut import LatencyTable
    from hant_trt.latency.profile import measure_module

    table = LatencyTable(tmp_path / "lut.sqlite")
    backend = get_backend("ort", threads=1)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU()).eval()
    first = measure_module(net, (1, 3, 32, 32), backend, table, tmp_path / "w", "tiny", max_seconds=0.05, rounds=3)
    assert first.median_s > 0 and first.cached and first.stdev_s is not None
    again = measure_module(net, (1, 3, 32, 32), backend, table, tmp_path / "w", "tiny", max_seconds=0.05, rounds=3)
    assert again.cached and again.median_s == first.median_s


def test_busy_machine_is_said_when_the_whole_outruns_its_parts():
    from hant_trt.latency.stage import busy_warning

    assert busy_warning(2.63e-3, 2.45e-3) is None                 # a quiet profile (RESULTS)
    line = busy_warning(8.08e-3, 4.26e-3)                          # one busy process beside it
    assert line and "1.9x" in line and "\n" not in line


def _spin():
    while True:
        pass


def test_free_cores_sees_a_busy_process_beside_it():
    from hant_trt.latency.device import busy_cores, free_cores

    if busy_cores(0.2) is None:
        pytest.skip("no /proc/stat here")
    n = len(os.sched_getaffinity(0))
    quiet = busy_cores(0.5)
    if quiet > n - 1.2:
        pytest.skip(f"other work keeps {quiet:.1f} of {n} cores busy: no free core for the spinner to take")
    p = mp.get_context("fork").Process(target=_spin, daemon=True)
    p.start()
    try:
        loaded, free = busy_cores(0.5), free_cores(0.5)
    finally:
        p.kill()
    assert loaded - quiet > 0.6                 # the spinner holds about one core; our own use is not counted
    assert free <= max(1, n - 1)


def test_profile_times_at_the_free_cores_and_the_build_follows(tmp_path, monkeypatch, capsys):
    from hant_trt.config import RunConfig
    from hant_trt.latency import device, stage
    from hant_trt.latency.backends import profile_backend, profiled_threads
    from hant_trt.rundir import RunDir

    cfg = RunConfig()
    cfg.profile.backend, cfg.profile.threads = "ort", None
    default = profile_backend(cfg.profile).threads
    if default < 2:
        pytest.skip("one CPU: nothing to give up")
    monkeypatch.setattr(device, "free_cores", lambda seconds=0.5: 1)
    be, info = stage._backend_at_free_cores(cfg)
    assert be.threads == 1 and info == {"threads": 1, "free_cores": 1}
    assert "timing with 1 thread " in capsys.readouterr().err
    monkeypatch.setattr(device, "free_cores", lambda seconds=0.5: default)
    be, info = stage._backend_at_free_cores(cfg)
    assert be.threads == default and info["threads"] == default and capsys.readouterr().err == ""
    cfg.profile.threads = default                     # chosen by the user: kept, nothing measured
    monkeypatch.setattr(device, "free_cores", lambda seconds=0.5: 1 / 0)
    assert stage._backend_at_free_cores(cfg)[0].threads == default

    run = RunDir(tmp_path / "run")
    assert profiled_threads(run) is None
    run.set_stage("profile", "done", "fp", {"threads": 1})
    cfg.profile.threads = None
    assert profile_backend(cfg.profile, profiled_threads(run)).threads == 1
    cfg.profile.threads = 2
    assert profile_backend(cfg.profile, profiled_threads(run)).threads == 2


def test_the_build_says_when_other_processes_took_its_timing_cores(monkeypatch, capsys):
    from hant_trt.deploy.deploy import _say_if_cores_taken
    from hant_trt.latency import device

    be = get_backend("ort", threads=2)
    monkeypatch.setattr(device, "free_cores", lambda seconds=0.5: 1)
    _say_if_cores_taken(be)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "1 of the 2 cores" in err[0]
    monkeypatch.setattr(device, "free_cores", lambda seconds=0.5: 2)
    _say_if_cores_taken(be)
    assert capsys.readouterr().err == ""
