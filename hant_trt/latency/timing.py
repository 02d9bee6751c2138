"""Timing statistics and the measurement loop shared by every backend.

Method: warm up for `warmup_ms`, then time single iterations until at least
`min_iters` are done and at least `min_seconds` have passed, and then either the median is stable
(coefficient of variation of the medians of four consecutive windows under `cv_target`) or the cap
`max_seconds` is reached. Percentiles and the median follow trtexec's rules (see `percentile`).

A backend that can time the device separately (TensorRT with CUDA events) supplies per-iteration
H2D / compute / D2H / enqueue times; host-only backends (ONNX Runtime, PyTorch on CPU) report the
whole iteration as compute with zero-length copies, which is what trtexec's
`--noDataTransfers` records look like.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np


def percentile(sorted_values: list[float], p: float) -> float:
    """trtexec's percentile of ascending `sorted_values`: the value at index
    max(n − 1 − int((1 − p/100)·n), 0), the arithmetic done in single precision like trtexec's
    `findPercentile` (it matters: (1 − 0.9f)·10 is 1.0000002 in float, 0.99999… in double, so p90
    of 10 values is the 9th value, not the 10th). Empty input gives NaN (trtexec: infinity)."""
    n = len(sorted_values)
    if n == 0:
        return float("nan")
    if not 0.0 <= p <= 100.0:
        raise ValueError(f"percentile {p} is not in [0, 100]")
    f32 = np.float32
    exclude = int(f32(f32(1) - f32(p) / f32(100)) * f32(n))
    return sorted_values[max(n - 1 - exclude, 0)]


def median(sorted_values: list[float]) -> float:
    """trtexec's median of ascending `sorted_values`: the middle value, or the mean of the two
    middle values when n is even. Empty input gives NaN."""
    n = len(sorted_values)
    if n == 0:
        return float("nan")
    mid = n // 2
    return sorted_values[mid] if n % 2 else 0.5 * (sorted_values[mid - 1] + sorted_values[mid])


@dataclass
class Stats:
    """Summary of one series of durations (seconds): trtexec's fields plus stdev and count."""

    min: float
    max: float
    mean: float
    median: float
    p90: float
    p95: float
    p99: float
    stdev: float
    count: int

    @classmethod
    def of(cls, values: list[float]) -> "Stats":
        """Statistics of `values` (any order, at least one value)."""
        if not values:
            raise ValueError("no timings to summarise")
        v = sorted(values)
        return cls(min=v[0], max=v[-1], mean=sum(v) / len(v), median=median(v), p90=percentile(v, 90),
                   p95=percentile(v, 95), p99=percentile(v, 99),
                   stdev=statistics.pstdev(v) if len(v) > 1 else 0.0, count=len(v))

    @property
    def cv(self) -> float:
        """Coefficient of variation (population stdev / mean)."""
        return self.stdev / self.mean if self.mean > 0 else 0.0


@dataclass
class Timing:
    """One measurement: per-iteration latencies plus, when the backend can tell them apart, the
    per-iteration components (all in seconds).

    times_s: end-to-end latency of each timed iteration (trtexec's "Latency" = H2D + compute + D2H).
    walltime_s: host wall time from the first timed iteration's start to the last one's end.
    starts_s: host start of each iteration relative to the first (default: back to back).
    compute_s / h2d_s / d2h_s / enqueue_s: components per iteration; None = not measured
        separately (host-timed backends), then compute = latency and copies = 0.
    device_timed: True when compute_s comes from device events (TensorRT), which is what makes the
        bench print trtexec's GPU lines.
    """

    times_s: list[float]
    walltime_s: float
    starts_s: list[float] | None = None
    compute_s: list[float] | None = None
    h2d_s: list[float] | None = None
    d2h_s: list[float] | None = None
    enqueue_s: list[float] | None = None
    device_timed: bool = False
    cuda_graph: bool = False
    warmup_iters: int = 0

    @property
    def stats(self) -> Stats:
        return Stats.of(self.times_s)

    @property
    def median_s(self) -> float:
        return self.stats.median

    @property
    def mean_s(self) -> float:
        return self.stats.mean

    @property
    def p90_s(self) -> float:
        return self.stats.p90

    @property
    def stdev_s(self) -> float:
        return self.stats.stdev

    @property
    def count(self) -> int:
        return len(self.times_s)

    def component(self, name: str) -> list[float]:
        """Per-iteration `compute`, `h2d`, `d2h` or `enqueue` seconds (filled in for host-timed runs:
        compute = enqueue = latency, copies 0)."""
        got = getattr(self, f"{name}_s")
        if got is not None:
            return got
        return list(self.times_s) if name in ("compute", "enqueue") else [0.0] * len(self.times_s)

    @property
    def gpu_compute(self) -> "Timing | None":
        """Device compute times as a Timing of their own (None unless device-timed)."""
        if not self.device_timed or self.compute_s is None:
            return None
        return Timing(list(self.compute_s), self.walltime_s)

    @property
    def records(self) -> list[dict]:
        """Per-iteration records with trtexec's `--exportTimes` keys (milliseconds)."""
        starts = self.starts_s or list(np.cumsum([0.0] + self.times_s[:-1]))
        out = []
        for i, (s, enq, h2d, comp, d2h) in enumerate(zip(starts, self.component("enqueue"), self.component("h2d"),
                                                         self.component("compute"), self.component("d2h"))):
            ms = 1e3
            s_h2d, e_h2d = s * ms, (s + h2d) * ms
            e_comp = e_h2d + comp * ms
            e_d2h = e_comp + d2h * ms
            out.append({"startEnqMs": s * ms, "endEnqMs": (s + enq) * ms, "startH2dMs": s_h2d, "endH2dMs": e_h2d,
                        "startComputeMs": e_h2d, "endComputeMs": e_comp, "startD2hMs": e_comp, "endD2hMs": e_d2h,
                        "h2dMs": h2d * ms, "computeMs": comp * ms, "d2hMs": d2h * ms,
                        "latencyMs": self.times_s[i] * ms, "endToEndMs": e_d2h - s_h2d})
        return out


@dataclass
class IterTimes:
    """What one timed iteration of a device-timed backend reports (seconds)."""

    h2d_s: float
    compute_s: float
    d2h_s: float
    enqueue_s: float


def should_stop(times: list[float], elapsed_s: float, min_iters: int, max_seconds: float, cv_target: float,
                max_iters: int | None, min_seconds: float) -> bool:
    """The stopping rule of the module doc, shared by `measure` and device-timed loops."""
    n = len(times)
    if max_iters and n >= max_iters:
        return True
    if n < min_iters or elapsed_s < min_seconds:
        return False
    if elapsed_s >= max_seconds:
        return True
    # the stability check sorts the series: do it about 50 times per doubling, not every iteration
    return cv_target > 0 and n % max(1, n // 50) == 0 and _stable(times, cv_target)


def measure(run_once: Callable[[], IterTimes | None], warmup_ms: float = 200.0, min_iters: int = 10,
            max_seconds: float = 2.0, cv_target: float = 0.02, max_iters: int | None = None,
            min_seconds: float = 0.0) -> Timing:
    """Time `run_once` as described in the module doc.

    run_once: runs one inference and blocks until it is done; returns an IterTimes from device
        events, or anything else (host-timed: the iteration's wall time is its latency).
    warmup_ms: untimed warm-up (default 200, trtexec's); at least one warm-up call always runs.
    min_iters: at least this many timed iterations (default 10).
    max_seconds: time cap of the timed phase once min_iters/min_seconds are met (default 2.0).
    cv_target: stop early when the window medians' coefficient of variation is below this
        (default 0.02; 0 disables, for trtexec-like fixed-duration runs).
    max_iters: hard iteration cap (default None).
    min_seconds: run the timed phase at least this long (default 0; trtexec's --duration).
    """
    clock = time.perf_counter
    t_end = clock() + warmup_ms / 1e3
    warm = 1
    run_once()
    while clock() < t_end:
        run_once()
        warm += 1
    times: list[float] = []
    starts: list[float] = []
    parts: list[IterTimes] = []
    start = clock()
    while True:
        t0 = clock()
        got = run_once()
        t1 = clock()
        starts.append(t0 - start)
        if isinstance(got, IterTimes):
            parts.append(got)
            times.append(got.h2d_s + got.compute_s + got.d2h_s)
        else:
            times.append(t1 - t0)
        if should_stop(times, t1 - start, min_iters, max_seconds, cv_target, max_iters, min_seconds):
            break
    wall = clock() - start
    if parts and len(parts) == len(times):
        return Timing(times, wall, starts, compute_s=[p.compute_s for p in parts], h2d_s=[p.h2d_s for p in parts],
                      d2h_s=[p.d2h_s for p in parts], enqueue_s=[p.enqueue_s for p in parts], device_timed=True,
                      warmup_iters=warm)
    return Timing(times, wall, starts, warmup_iters=warm)


def _stable(times: list[float], cv_target: float) -> bool:
    """The medians of four consecutive windows of the series agree within cv_target (needs ≥ 20)."""
    n = len(times)
    if n < 20:
        return False
    w = n // 4
    meds = [median(sorted(times[i * w:(i + 1) * w])) for i in range(4)]
    m = sum(meds) / 4
    return m > 0 and statistics.pstdev(meds) / m < cv_target
