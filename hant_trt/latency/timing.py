"""Timing statistics and the measurement loop shared by every backend.

Warm up for `warmup_ms`, then time single iterations until at least `min_iters` are done and the
median is stable (coefficient of variation of the recent medians under `cv_target`) or the time cap
`max_seconds` is reached. Percentiles follow trtexec's rule.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from typing import Callable


def percentile(sorted_values: list[float], p: float) -> float:
    """trtexec's percentile: the value at index max(n − 1 − int((1 − p/100)·n), 0)."""
    import numpy as np

    n = len(sorted_values)
    if n == 0:
        return float("nan")
    # trtexec computes this in single precision: (1 - 90/100) * 10 is 1.0000002 there, 0.99999… in double
    exclude = int(np.float32(np.float32(1) - np.float32(p) / np.float32(100)) * np.float32(n))
    return sorted_values[max(n - 1 - exclude, 0)]


def median(sorted_values: list[float]) -> float:
    """Mean of the two middle values when n is even (trtexec)."""
    n = len(sorted_values)
    if n == 0:
        return float("nan")
    mid = n // 2
    return sorted_values[mid] if n % 2 else 0.5 * (sorted_values[mid - 1] + sorted_values[mid])


@dataclass
class Stats:
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
        v = sorted(values)
        return cls(min=v[0], max=v[-1], mean=sum(v) / len(v), median=median(v), p90=percentile(v, 90),
                   p95=percentile(v, 95), p99=percentile(v, 99),
                   stdev=statistics.pstdev(v) if len(v) > 1 else 0.0, count=len(v))

    @property
    def cv(self) -> float:
        return self.stdev / self.mean if self.mean > 0 else 0.0


@dataclass
class Timing:
    """Per-iteration wall times (seconds) of one measurement, plus their statistics."""

    times_s: list[float]
    walltime_s: float
    records: list[dict] = field(default_factory=list)   # trtexec-style per-iteration records

    @property
    def stats(self) -> Stats:
        return Stats.of(self.times_s)

    @property
    def median_s(self) -> float:
        return self.stats.median

    @property
    def p90_s(self) -> float:
        return self.stats.p90

    @property
    def stdev_s(self) -> float:
        return self.stats.stdev

    @property
    def count(self) -> int:
        return len(self.times_s)


def measure(run_once: Callable[[], None], warmup_ms: float = 200.0, min_iters: int = 10,
            max_seconds: float = 2.0, cv_target: float = 0.02, max_iters: int | None = None,
            min_seconds: float = 0.0) -> Timing:
    """Time `run_once` (which must block until its work is done) as described in the module doc."""
    clock = time.perf_counter
    t_end = clock() + warmup_ms / 1e3
    run_once()
    while clock() < t_end:
        run_once()
    times: list[float] = []
    records: list[dict] = []
    start = clock()
    while True:
        t0 = clock()
        run_once()
        t1 = clock()
        times.append(t1 - t0)
        records.append({"startEnqMs": (t0 - start) * 1e3, "endEnqMs": (t1 - start) * 1e3,
                        "startComputeMs": (t0 - start) * 1e3, "endComputeMs": (t1 - start) * 1e3,
                        "computeMs": (t1 - t0) * 1e3, "latencyMs": (t1 - t0) * 1e3,
                        "h2dMs": 0.0, "d2hMs": 0.0})
        elapsed = t1 - start
        n = len(times)
        if max_iters and n >= max_iters:
            break
        if n >= min_iters and elapsed >= min_seconds:
            if elapsed >= max_seconds or _stable(times, cv_target):
                break
    return Timing(times, clock() - start, records)


def _stable(times: list[float], cv_target: float) -> bool:
    """The running median over the last windows changes by less than cv_target."""
    n = len(times)
    if n < 20:
        return False
    w = n // 4
    meds = [median(sorted(times[i * w:(i + 1) * w])) for i in range(4)]
    m = sum(meds) / 4
    sd = statistics.pstdev(meds)
    return m > 0 and sd / m < cv_target
