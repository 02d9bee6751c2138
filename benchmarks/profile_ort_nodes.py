"""Where ONNX Runtime CPU spends a model's time, per node of its optimised graph.

    .venv/bin/python benchmarks/profile_ort_nodes.py MODEL.onnx [MODEL.onnx ...] [--runs 300] [--min-us 3]

Each model runs `--runs` times at batch 1 with ORT's profiler on (2 threads unless `--threads`);
printed per node of the optimised graph, in graph order: mean kernel microseconds per run (nodes
under `--min-us` left out), and the total. The profiler's own overhead inflates every figure alike,
so read shares and differences, not absolute latencies. This is how the float Adds and the
pooling Transpose of the `ort` int8 layout were found (docs/RESULTS.md, session 13).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from collections import defaultdict

import numpy as np


def node_times(path: str, runs: int, threads: int) -> dict[str, float]:
    """Node name → mean kernel microseconds per run."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.enable_profiling = True
    so.profile_file_prefix = os.path.join(tempfile.gettempdir(), "hant_trt_ortprof")
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    x = np.random.default_rng(0).random([d if isinstance(d, int) else 1 for d in inp.shape], dtype=np.float32)
    for _ in range(runs):
        sess.run(None, {inp.name: x})
    trace = sess.end_profiling()
    try:
        with open(trace) as f:
            events = json.load(f)
    finally:
        os.remove(trace)
    total: dict[str, float] = defaultdict(float)
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            total[e["name"][: -len("_kernel_time")]] += e["dur"]
    return {name: us / runs for name, us in total.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("models", nargs="+")
    ap.add_argument("--runs", type=int, default=300)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--min-us", type=float, default=3.0)
    a = ap.parse_args()
    for path in a.models:
        if not os.path.isfile(path):
            ap.error(f"no such ONNX: {path}")
    for path in a.models:
        times = node_times(path, a.runs, a.threads)
        print(f"== {path}: {sum(times.values()):.0f} us of kernels per run")
        for name, us in times.items():
            if us >= a.min_us:
                print(f"{us:8.1f}  {name}")


if __name__ == "__main__":
    main()
