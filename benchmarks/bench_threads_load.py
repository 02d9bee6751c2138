"""Whole models on ONNX Runtime CPU at each thread count, quiet and beside busy processes: why the
profile times with the cores other processes leave free.

    .venv/bin/python benchmarks/bench_threads_load.py [ONNX ...] [--load 1] [--rounds 3]

Default models: the demo's whole teacher at fp32 and int8 (`runs/demo/profile/`, written by
`make demo`). Each model is timed through the product's ORT backend (the profile's session options)
with 1..CPU-count threads, first alone, then with `--load` busy-looping processes beside it; the
median of `--rounds` rounds is printed per cell, and the loaded/quiet ratio per thread count.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DEMO = ROOT / "runs/demo/profile"


def _spin() -> None:
    while True:
        pass


def time_all(models: list[Path], threads: list[int], rounds: int, seconds: float) -> dict:
    from hant_trt.latency.backends import get_backend
    from hant_trt.latency.paired import time_in_rounds

    out = {}
    for t in threads:
        be = get_backend("ort", threads=t)
        times = time_in_rounds(be, [be.prepare(str(m)) for m in models], rounds, max_seconds=seconds)
        for m, ts in zip(models, times):
            out[(m.name, t)] = statistics.median(ts)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("models", nargs="*", type=Path,
                    default=[DEMO / "efficientnet_lite0_teacher_224.fp32.onnx",
                             DEMO / "efficientnet_lite0_teacher_224.int8-ort.onnx"])
    ap.add_argument("--load", type=int, default=1, help="busy processes beside the second pass (default 1)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=0.5, help="per timing (default 0.5)")
    a = ap.parse_args()
    missing = [str(m) for m in a.models if not m.is_file()]
    if missing:
        ap.error(f"no such ONNX: {', '.join(missing)} (run `make demo` first for the defaults)")
    threads = list(range(1, (os.cpu_count() or 1) + 1))
    quiet = time_all(a.models, threads, a.rounds, a.seconds)
    procs = [mp.Process(target=_spin, daemon=True) for _ in range(a.load)]
    for p in procs:
        p.start()
    try:
        loaded = time_all(a.models, threads, a.rounds, a.seconds)
    finally:
        for p in procs:
            p.kill()
    print(f"{'model':<48} {'threads':>7} {'quiet ms':>9} {f'{a.load} busy ms':>10} {'loaded/quiet':>12}")
    for m in a.models:
        for t in threads:
            q, lo = quiet[(m.name, t)], loaded[(m.name, t)]
            print(f"{m.name:<48} {t:>7} {q * 1e3:>9.3f} {lo * 1e3:>10.3f} {lo / q:>12.2f}")


if __name__ == "__main__":
    main()
