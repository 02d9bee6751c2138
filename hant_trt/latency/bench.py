"""`hant-trt bench`: a trtexec-like benchmark of an .onnx (ONNX Runtime by default) or a .plan
(TensorRT), printing trtexec's performance summary with trtexec's percentile and median rules.

Like trtexec: warm up for `warmup_ms`, then run at least `iterations` iterations and at least
`duration_s` seconds; values print with C++ ostream's default precision (6 significant digits);
throughput = queries / total host walltime; `--export-times` writes one record per iteration with
trtexec's keys (startEnqMs … latencyMs, endToEndMs).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .. import atomic
from ..errors import UserError
from .timing import Stats, Timing, percentile  # noqa: F401  (percentile: trtexec's rule, re-exported)

PLAN_SUFFIXES = (".plan", ".engine", ".trt")
UNSTABLE_CV = 0.025   # trtexec warns above 2.5 %


@dataclass
class BenchResult:
    """One benchmark: the model, the backend name and its Timing (device-timed for TensorRT).

    gpu_compute: device compute times; default None → taken from `timing` when it is device-timed.
    """

    model: str
    backend: str
    timing: Timing
    gpu_compute: Timing | None = None

    def __post_init__(self):
        if self.gpu_compute is None:
            self.gpu_compute = self.timing.gpu_compute


def run_bench(model_path: str | Path, backend: str | None = None, warmup_ms: float = 200.0, iterations: int = 10,
              duration_s: float = 3.0, batch: int | None = None, export_times: str | Path | None = None,
              threads: int | None = None, data_transfers: bool | None = None,
              cuda_graph: bool | None = None) -> BenchResult:
    """Benchmark one model file.

    model_path: an .onnx file, or a TensorRT plan (.plan/.engine/.trt, needs its metadata JSON or
        TensorRT's own check to accept this GPU).
    backend: "ort", "torch" is refused (it times modules), "tensorrt"; default: tensorrt for plans,
        ort for ONNX.
    warmup_ms: warm-up time (default 200, trtexec's). iterations: minimum timed iterations (default
        10). duration_s: minimum timed seconds (default 3.0).
    batch: value for a dynamic batch dimension (default None → 1).
    export_times: write per-iteration records (JSON list, trtexec's keys) here (default None).
    threads: CPU threads for ORT (default: the backend's).
    data_transfers / cuda_graph: TensorRT only; default None → trtexec's defaults for the installed
        generation (10.x: copies timed, no graph; 11.x: no copies, CUDA graph).
    """
    from .backends import get_backend

    p = Path(model_path)
    if not p.is_file():
        raise UserError(f"model file {p} not found")
    is_plan = p.suffix in PLAN_SUFFIXES
    backend = backend or ("tensorrt" if is_plan else "ort")
    if is_plan and backend != "tensorrt":
        raise UserError(f"{p.name} is a TensorRT plan: use --backend tensorrt")
    if backend == "torch":
        raise UserError("the torch backend times PyTorch modules, not files: use --backend ort or tensorrt")
    if iterations < 1 or duration_s < 0 or warmup_ms < 0:
        raise UserError("bench needs --iterations ≥ 1, --duration ≥ 0 and --warmup ≥ 0")
    if batch is not None and batch < 1:
        raise UserError(f"--batch must be an integer >= 1, got {batch}")
    opts: dict = {"batch": batch}
    if backend == "ort":
        opts["threads"] = threads
        if not is_plan:
            try:
                from .export import load_onnx  # checks the file is a readable ONNX model (UserError)

                load_onnx(p)
            except ImportError:
                pass
    elif backend == "tensorrt":
        from .backends.tensorrt import _import_trt, api_generation

        gen = api_generation(_import_trt())
        opts["data_transfers"] = gen < 11 if data_transfers is None else data_transfers
        opts["cuda_graph"] = gen >= 11 if cuda_graph is None else cuda_graph
    be = get_backend(backend, **opts)
    prepared = be.prepare(str(p))
    # trtexec: at least `iterations` iterations AND at least `duration` seconds, no early stop
    t = be.time(prepared, warmup_ms=warmup_ms, min_iters=iterations, max_seconds=duration_s, cv_target=0.0,
                min_seconds=duration_s)
    if export_times:
        atomic.write_json(Path(export_times), t.records)
    return BenchResult(str(p), backend, t)


def _num(x: float) -> str:
    """C++ ostream's default float formatting (6 significant digits, %g), as trtexec prints."""
    return f"{x:g}"


def perf_line(name: str, s: Stats) -> str:
    """One trtexec summary line, values in milliseconds."""
    ms = 1e3
    return (f"{name}: min = {_num(s.min * ms)} ms, max = {_num(s.max * ms)} ms, mean = {_num(s.mean * ms)} ms, "
            f"median = {_num(s.median * ms)} ms, percentile(90%) = {_num(s.p90 * ms)} ms, "
            f"percentile(95%) = {_num(s.p95 * ms)} ms, percentile(99%) = {_num(s.p99 * ms)} ms")


def format_summary(r: BenchResult) -> str:
    """trtexec's "=== Performance summary ===" block (plus its instability warning and one line
    naming backend and model). Host-timed backends print Latency only (their iterations have no
    separate copies or device time); TensorRT also prints Enqueue, H2D, GPU Compute and D2H."""
    t = r.timing
    s = t.stats
    lines = ["=== Performance summary ===",
             f"Throughput: {_num(s.count / t.walltime_s)} qps",
             perf_line("Latency", s)]
    gpu = r.gpu_compute
    if gpu is not None:
        lines += [perf_line("Enqueue Time", Stats.of(t.component("enqueue"))),
                  perf_line("H2D Latency", Stats.of(t.component("h2d"))),
                  perf_line("GPU Compute Time", gpu.stats),
                  perf_line("D2H Latency", Stats.of(t.component("d2h")))]
    lines.append(f"Total Host Walltime: {_num(t.walltime_s)} s")
    if gpu is not None:
        gs = gpu.stats
        lines.append(f"Total GPU Compute Time: {_num(gs.mean * gs.count)} s")
        if gs.cv > UNSTABLE_CV:
            lines.append(f"[W] * GPU compute time is unstable, with coefficient of variance = {_num(100 * gs.cv)}%.")
            lines.append("[W]   If not already in use, locking GPU clock frequency or adding --useSpinWait may "
                         "improve the stability.")
    else:
        lines.append(f"Total Compute Time: {_num(s.mean * s.count)} s")
        if s.cv > UNSTABLE_CV:
            lines.append(f"[W] * Latency is unstable, with coefficient of variance = {_num(100 * s.cv)}%.")
    extra = " (CUDA graph)" if t.cuda_graph else ""
    lines.append(f"Backend: {r.backend}{extra}; model: {r.model}; {s.count} iterations after "
                 f"{t.warmup_iters} warm-up")
    return "\n".join(lines)
