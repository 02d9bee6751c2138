"""`hant-trt bench`: a trtexec-like benchmark of an .onnx (ONNX Runtime) or .plan (TensorRT),
printing trtexec's performance summary with trtexec's percentile rule."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from .. import atomic
from ..errors import UserError
from .timing import Stats, Timing


@dataclass
class BenchResult:
    model: str
    backend: str
    timing: Timing
    gpu_compute: Timing | None = None    # TensorRT: device time from CUDA events
    h2d: list[float] | None = None
    d2h: list[float] | None = None


def run_bench(model_path: str | Path, backend: str | None = None, warmup_ms: float = 200.0, iterations: int = 10,
              duration_s: float = 3.0, batch: int | None = None, export_times: str | None = None,
              threads: int | None = None) -> BenchResult:
    from .backends import get_backend

    p = Path(model_path)
    if not p.is_file():
        raise UserError(f"model file {p} not found")
    if backend is None:
        backend = "tensorrt" if p.suffix in (".plan", ".engine") else "ort"
    if p.suffix in (".plan", ".engine") and backend != "tensorrt":
        raise UserError(f"{p.name} is a TensorRT plan: use --backend tensorrt")
    be = get_backend(backend, threads=threads, batch=batch)
    if backend == "ort":
        from .export import load_onnx

        load_onnx(p)
    prepared = be.prepare(str(p))
    # trtexec: at least `iterations` iterations and at least `duration` seconds
    t = be.time(prepared, warmup_ms=warmup_ms, min_iters=iterations, max_seconds=duration_s, cv_target=0.0,
                min_seconds=duration_s)
    res = BenchResult(str(p), backend, t, getattr(t, "gpu_compute", None))
    if export_times:
        atomic.write_json(Path(export_times), t.records)
    return res


def _line(name: str, s: Stats, unit: float = 1e3) -> str:
    return (f"{name}: min = {s.min * unit:.5g} ms, max = {s.max * unit:.5g} ms, mean = {s.mean * unit:.5g} ms, "
            f"median = {s.median * unit:.5g} ms, percentile(90%) = {s.p90 * unit:.5g} ms, "
            f"percentile(95%) = {s.p95 * unit:.5g} ms, percentile(99%) = {s.p99 * unit:.5g} ms")


def format_summary(r: BenchResult) -> str:
    s = r.timing.stats
    lines = ["=== Performance summary ===",
             f"Throughput: {s.count / r.timing.walltime_s:.5g} qps",
             _line("Latency", s)]
    if r.gpu_compute is not None:
        enq = Stats.of([rec["endEnqMs"] / 1e3 - rec["startEnqMs"] / 1e3 for rec in r.timing.records])
        lines.append(_line("Enqueue Time", enq))
        lines.append(_line("H2D Latency", Stats.of([rec["h2dMs"] / 1e3 for rec in r.timing.records])))
        lines.append(_line("GPU Compute Time", r.gpu_compute.stats))
        lines.append(_line("D2H Latency", Stats.of([rec["d2hMs"] / 1e3 for rec in r.timing.records])))
    lines.append(f"Total Host Walltime: {r.timing.walltime_s:.5g} s")
    total_compute = sum((r.gpu_compute or r.timing).times_s)
    lines.append(f"Total {'GPU ' if r.gpu_compute is not None else ''}Compute Time: {total_compute:.5g} s")
    if r.gpu_compute is not None and r.gpu_compute.stats.cv > 0.025:
        lines.append("[W] * GPU compute time is unstable, with coefficient of variance = "
                     f"{100 * r.gpu_compute.stats.cv:.3g}%.")
    lines.append(f"Backend: {r.backend}; model: {r.model}; {s.count} iterations")
    return "\n".join(lines)


def dump_times(records: list[dict]) -> str:
    return json.dumps(records)
