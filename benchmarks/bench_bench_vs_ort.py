"""`hant-trt bench` vs a plain InferenceSession.run loop, same process, same ONNX (Lite0).

    .venv/bin/python benchmarks/bench_bench_vs_ort.py [--seconds 3] [--threads 2]

Prints both medians and their ratio (goal: within 5 %).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from hant_trt.latency.bench import format_summary, run_bench
from hant_trt.latency.export import export_onnx
from hant_trt.teacher.load import load_teacher


def plain_loop(path: Path, threads: int, seconds: float) -> float:
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    x = {"input": np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)}
    for _ in range(10):
        sess.run(None, x)
    ts, end = [], time.perf_counter() + seconds
    while time.perf_counter() < end:
        t0 = time.perf_counter()
        sess.run(None, x)
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        p = export_onnx(load_teacher().model, (1, 3, 224, 224), Path(tmp) / "lite0.onnx")
        ours, plain = [], []
        for _ in range(a.rounds):  # alternate, so drift hits both
            r = run_bench(p, "ort", warmup_ms=200, iterations=10, duration_s=a.seconds, threads=a.threads)
            ours.append(r.timing.stats.median)
            plain.append(plain_loop(p, a.threads, a.seconds))
        print(format_summary(r))
        o, q = statistics.median(ours), statistics.median(plain)
        print(f"\nhant-trt bench median {o * 1e3:.3f} ms; plain InferenceSession loop median {q * 1e3:.3f} ms; "
              f"ratio {o / q:.3f} (|1 - ratio| = {abs(1 - o / q) * 100:.1f} %)")


if __name__ == "__main__":
    main()
