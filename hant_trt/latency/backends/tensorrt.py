"""TensorRT backend, written against the documented 10.x and 11.x Python APIs.

Build: ONNX parser → network (strongly typed where the flag exists; 11.x has no EXPLICIT_BATCH
and is always strongly typed) → builder config (workspace limit, optimization level, optional
hardware compatibility, DETAILED profiling verbosity, persistent timing cache under engines/) →
build_serialized_network. Precision lives in the ONNX (fp16 graph or Q/DQ), never in builder flags
(11.x removed them), so one code path serves both generations.

Run: deserialize, pinned host + device buffers through cuda-python (or polygraphy.cuda, host
timing only), set_tensor_address, execute_async_v3 on a stream — replayed as a CUDA graph when
capture works; GPU compute time from CUDA events around the launch, H2D and D2H timed separately
with their own events, enqueue time on the host clock.

NEVER RAN ON REAL TENSORRT: this project's machines have no GPU and cannot install TensorRT. The
build and runtime call sequences are tested against recording fakes of `tensorrt` and of the
cuda-python runtime (tests/fakes/fake_tensorrt.py, both API generations);
`tools/validate_tensorrt.py` checks everything end to end on a real GPU.
"""

from __future__ import annotations

import ctypes
import sys
import time
from pathlib import Path

import numpy as np

from ... import atomic
from ...errors import UserError
from ..device import DeviceInfo
from ..timing import IterTimes, Timing, measure
from .base import Backend

INSTALL_HINT = "pip install 'hant-trt[tensorrt]' (TensorRT 10/11 and cuda-python) on a machine with an NVIDIA GPU"
PLAN_SUFFIXES = (".plan", ".engine", ".trt")


def _import_trt():
    try:
        import tensorrt as trt
    except ImportError:
        raise UserError(f"the tensorrt backend needs TensorRT: {INSTALL_HINT}") from None
    return trt


def api_generation(trt) -> int:
    """10 when the module still has the pre-11 names (EXPLICIT_BATCH or BuilderFlag.FP16), else 11.

    Detected from the API rather than the version string, so a 10.x build with the old names
    removed early, or an 11 preview, still takes the right path."""
    old = hasattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH") or hasattr(trt.BuilderFlag, "FP16")
    return 10 if old else 11


# -- CUDA runtime: cuda-python preferred, polygraphy.cuda as a fallback ------------------------------
def _ck(result):
    """cuda-python calls return (err, *values): raise on err, return the value(s)."""
    err, *vals = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise RuntimeError(f"CUDA error {err}")
    if not vals:
        return None
    return vals[0] if len(vals) == 1 else vals


class CudaPython:
    """The few CUDA runtime calls the backend needs, through cuda-python (events and graphs)."""

    has_events = True

    def __init__(self, cudart):
        self.rt = cudart

    def device_properties(self) -> dict:
        rt = self.rt
        dev = _ck(rt.cudaGetDevice())
        prop = _ck(rt.cudaGetDeviceProperties(dev))
        name = prop.name.decode(errors="replace") if isinstance(prop.name, bytes) else str(prop.name)
        return {"name": name.split("\x00")[0].strip(), "cc": f"{prop.major}.{prop.minor}",
                "driver": _ck(rt.cudaDriverGetVersion()), "runtime": _ck(rt.cudaRuntimeGetVersion())}

    def stream(self):
        return _ck(self.rt.cudaStreamCreate())

    def stream_handle(self, stream) -> int:
        return int(stream)

    def malloc(self, nbytes: int) -> int:
        return int(_ck(self.rt.cudaMalloc(max(nbytes, 1))))

    def host_array(self, shape, dtype) -> tuple[np.ndarray, int]:
        """Page-locked host array (fast, asynchronous copies) and its pointer."""
        nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
        ptr = int(_ck(self.rt.cudaMallocHost(max(nbytes, 1))))
        buf = (ctypes.c_byte * max(nbytes, 1)).from_address(ptr)
        return np.frombuffer(buf, dtype=dtype, count=nbytes // np.dtype(dtype).itemsize).reshape(shape), ptr

    def h2d(self, dst: int, src: int, nbytes: int, stream) -> None:
        _ck(self.rt.cudaMemcpyAsync(dst, src, nbytes, self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice, stream))

    def d2h(self, dst: int, src: int, nbytes: int, stream) -> None:
        _ck(self.rt.cudaMemcpyAsync(dst, src, nbytes, self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost, stream))

    def sync(self, stream) -> None:
        _ck(self.rt.cudaStreamSynchronize(stream))

    def event(self):
        return _ck(self.rt.cudaEventCreate())

    def record(self, event, stream) -> None:
        _ck(self.rt.cudaEventRecord(event, stream))

    def elapsed_ms(self, start, end) -> float:
        return float(_ck(self.rt.cudaEventElapsedTime(start, end)))

    def capture(self, stream, enqueue) -> object | None:
        """A CUDA graph executable of what `enqueue()` launches on `stream`, or None when capture
        fails (the stream is left out of capture mode either way)."""
        rt = self.rt
        mode = rt.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal
        try:
            _ck(rt.cudaStreamBeginCapture(stream, mode))
        except RuntimeError:
            return None
        try:
            ok = enqueue()
        except Exception:
            ok = False
        graph = None
        try:
            graph = _ck(rt.cudaStreamEndCapture(stream))
        except RuntimeError:
            ok = False
        if not ok or graph is None:
            rt.cudaGetLastError()  # clear the sticky capture error so later calls work
            return None
        try:
            # cuda-python 12: (graph, flags) → (err, exec); 11: (graph, bufferSize) → (err, exec, node, log)
            got = _ck(rt.cudaGraphInstantiate(graph, 0))
        except RuntimeError:
            rt.cudaGetLastError()
            return None
        return got[0] if isinstance(got, list) else got

    def launch(self, graph_exec, stream) -> None:
        _ck(self.rt.cudaGraphLaunch(graph_exec, stream))

    def free(self, ptr: int, host: bool = False) -> None:
        (self.rt.cudaFreeHost if host else self.rt.cudaFree)(ptr)


class PolygraphyCuda:
    """Fallback through polygraphy.cuda (ctypes over libcudart): buffers and a stream, but no
    events or graphs, so compute is timed on the host around enqueue + synchronize."""

    has_events = False

    def __init__(self, pcuda):
        self.pc = pcuda
        self.w = pcuda.wrapper()

    def device_properties(self) -> dict:
        import torch

        if not torch.cuda.is_available():
            raise UserError(f"no CUDA device visible for the tensorrt backend: {INSTALL_HINT}")
        p = torch.cuda.get_device_properties(0)
        return {"name": p.name, "cc": f"{p.major}.{p.minor}", "driver": "?", "runtime": torch.version.cuda}

    def stream(self):
        return self.pc.Stream()

    def stream_handle(self, stream) -> int:
        return int(stream.ptr)

    def malloc(self, nbytes: int) -> int:
        return int(self.w.malloc(max(nbytes, 1)))

    def host_array(self, shape, dtype) -> tuple[np.ndarray, int]:
        arr = np.zeros(shape, dtype=dtype)
        return arr, int(arr.ctypes.data)

    def h2d(self, dst, src, nbytes, stream) -> None:
        self.w.memcpy(dst, src, nbytes, self.pc.MemcpyKind.HostToDevice, stream.ptr)

    def d2h(self, dst, src, nbytes, stream) -> None:
        self.w.memcpy(dst, src, nbytes, self.pc.MemcpyKind.DeviceToHost, stream.ptr)

    def sync(self, stream) -> None:
        stream.synchronize()

    def capture(self, stream, enqueue):
        return None

    def free(self, ptr: int, host: bool = False) -> None:
        if not host:
            self.w.free(ptr)


def cuda_runtime():
    """CudaPython over `cuda.bindings.runtime` (cuda-python ≥ 12.6) or `cuda.cudart` (older), else
    PolygraphyCuda; UserError naming what to install when neither imports."""
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        try:
            from cuda import cudart
        except ImportError:
            cudart = None
    if cudart is not None:
        return CudaPython(cudart)
    try:
        import polygraphy.cuda as pcuda

        pcuda.wrapper()  # loads libcudart; raises without a CUDA runtime
        return PolygraphyCuda(pcuda)
    except Exception:
        raise UserError(f"the tensorrt backend needs cuda-python (or a CUDA runtime for polygraphy.cuda): "
                        f"{INSTALL_HINT}") from None


def default_timing_cache() -> Path:
    from ...runfiles import default_engines_dir

    return default_engines_dir() / "timing.cache"


class TensorRTBackend(Backend):
    """TensorRT engines timed with CUDA events.

    workspace_mb: builder workspace pool limit in MiB (default 2048).
    optimization_level: builder_optimization_level 0–5 (default 3, TensorRT's).
    hardware_compatible: build Ampere-and-newer compatible engines (default False: faster, tied to
        this GPU).
    timing_cache: persistent timing cache file (default engines/timing.cache), loaded before and
        saved (atomically) after every build.
    batch: value for a dynamic leading dimension (default None → 1).
    cuda_graph: replay the enqueue as a CUDA graph when capture works (default True; trtexec 11's
        default).
    data_transfers: copy inputs in and outputs out every iteration and time them (default False:
        candidates are layers inside a network, their tensors never cross PCIe; `hant-trt bench`
        turns it on like trtexec 10).
    """

    name = "tensorrt"

    def __init__(self, workspace_mb: int = 2048, optimization_level: int = 3, hardware_compatible: bool = False,
                 timing_cache: str | Path | None = None, batch: int | None = None, cuda_graph: bool = True,
                 data_transfers: bool = False):
        self.trt = _import_trt()
        self.generation = api_generation(self.trt)
        self.major = self.generation
        self.logger = self.trt.Logger(self.trt.Logger.WARNING)
        self.workspace = int(workspace_mb) << 20
        if not 0 <= int(optimization_level) <= 5:
            raise UserError(f"TensorRT optimization level must be 0–5, not {optimization_level}")
        self.opt_level = int(optimization_level)
        self.hw_compat = hardware_compatible
        self.timing_cache = Path(timing_cache) if timing_cache else default_timing_cache()
        self.batch = batch
        self.cuda_graph = cuda_graph
        self.data_transfers = data_transfers
        self._cuda = None

    @property
    def cuda(self):
        if self._cuda is None:
            self._cuda = cuda_runtime()
        return self._cuda

    # -- description -----------------------------------------------------------------------------
    def version(self) -> str:
        return self.trt.__version__

    def device(self) -> DeviceInfo:
        p = self.cuda.device_properties()
        return DeviceInfo("cuda", p["name"], {"cc": p["cc"], "driver": p["driver"]})

    # -- build -------------------------------------------------------------------------------------
    def network_flags(self) -> int:
        """STRONGLY_TYPED where the flag exists; never EXPLICIT_BATCH (default since 10, gone in 11)."""
        ndcf = self.trt.NetworkDefinitionCreationFlag
        return 1 << int(ndcf.STRONGLY_TYPED) if hasattr(ndcf, "STRONGLY_TYPED") else 0

    def build(self, onnx_path: str | Path) -> bytes:
        """Serialized engine (plan bytes) for an ONNX file; the timing cache is updated."""
        trt, path = self.trt, Path(onnx_path)
        if not path.is_file():
            raise UserError(f"model file {path} not found")
        builder = trt.Builder(self.logger)
        network = builder.create_network(self.network_flags())
        parser = trt.OnnxParser(network, self.logger)
        if not parser.parse_from_file(str(path)):
            errs = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise UserError(f"TensorRT cannot parse {path.name}: {errs[:300]}")
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, self.workspace)
        config.builder_optimization_level = self.opt_level
        config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
        if self.hw_compat:
            config.hardware_compatibility_level = trt.HardwareCompatibilityLevel.AMPERE_PLUS
        if self.batch is not None or self._has_dynamic_inputs(network):
            self._add_profile(builder, network, config)
        blob = self.timing_cache.read_bytes() if self.timing_cache.is_file() else b""
        cache = config.create_timing_cache(blob)
        # a cache from another GPU/version is refused by TensorRT rather than silently misused
        if not config.set_timing_cache(cache, False):
            cache = config.create_timing_cache(b"")
            config.set_timing_cache(cache, False)
        plan = builder.build_serialized_network(network, config)
        if plan is None:
            raise RuntimeError(f"TensorRT failed to build an engine for {path.name} (see its log above)")
        atomic.write_bytes(self.timing_cache, bytes(config.get_timing_cache().serialize()))
        return bytes(plan)

    @staticmethod
    def _has_dynamic_inputs(network) -> bool:
        return any(-1 in tuple(network.get_input(i).shape) for i in range(network.num_inputs))

    def _add_profile(self, builder, network, config) -> None:
        """One optimization profile pinning dynamic dimensions: batch for the first, 1 otherwise."""
        profile = builder.create_optimization_profile()
        for i in range(network.num_inputs):
            t = network.get_input(i)
            shape = self._static_shape(tuple(t.shape))
            profile.set_shape(t.name, shape, shape, shape)
        config.add_optimization_profile(profile)

    def _static_shape(self, shape: tuple) -> tuple:
        return tuple((self.batch or 1) if (d == -1 and j == 0) else (1 if d == -1 else int(d))
                     for j, d in enumerate(shape))

    def inspect(self, engine) -> str:
        """The engine inspector's JSON (per-layer information; "Bindings" on 10, "I/O Tensors" on 11)."""
        inspector = engine.create_engine_inspector()
        return inspector.get_engine_information(self.trt.LayerInformationFormat.JSON)

    def deserialize(self, plan: bytes, what: str):
        engine = self.trt.Runtime(self.logger).deserialize_cuda_engine(plan)
        if engine is None:
            raise UserError(f"TensorRT {self.version()} could not deserialize {what}: it was built for another "
                            "TensorRT version or GPU; rebuild it here")
        return engine

    # -- run ---------------------------------------------------------------------------------------
    def check_plan(self, plan_path: Path) -> None:
        """Refuse a plan whose metadata JSON names another GPU or TensorRT version (UserError)."""
        from ...deploy.metadata import check_compatible, metadata_path, read_metadata

        if not metadata_path(plan_path).is_file():
            print(f"warning: {plan_path.name} has no hant-trt metadata beside it; "
                  "relying on TensorRT's own compatibility check", file=sys.stderr)
            return
        dev = self.device()
        check_compatible(read_metadata(plan_path), {"gpu_name": dev.name, "compute_capability": dev.details["cc"],
                                                   "tensorrt_version": self.version()})

    def prepare(self, model_path, precision: str = "fp32") -> "TrtPrepared":
        """An ONNX file is built (precision is already in the graph); a plan is checked against
        its metadata, then loaded."""
        p = Path(model_path)
        if not p.is_file():
            raise UserError(f"model file {p} not found")
        if p.suffix in PLAN_SUFFIXES:
            self.check_plan(p)
            plan = p.read_bytes()
        else:
            plan = self.build(p)
        return TrtPrepared(self, self.deserialize(plan, p.name), plan)

    def time(self, prepared, warmup_ms=200.0, min_iters=10, max_seconds=2.0, cv_target=0.02, max_iters=None,
             min_seconds=0.0) -> Timing:
        t = measure(prepared.once, warmup_ms, min_iters, max_seconds, cv_target, max_iters, min_seconds)
        t.cuda_graph = prepared.graph_exec is not None
        return t


class TrtPrepared:
    """Engine + execution context + pinned host / device buffers + stream (+ CUDA graph)."""

    def __init__(self, be: TensorRTBackend, engine, plan: bytes):
        self.be, self.engine, self.plan = be, engine, plan
        trt, cuda = be.trt, be.cuda
        self.cuda = cuda
        self.context = engine.create_execution_context()
        self.stream = cuda.stream()
        self.handle = cuda.stream_handle(self.stream)
        self.host: dict[str, tuple[np.ndarray, int]] = {}
        self.dev: dict[str, int] = {}
        self.inputs: list[str] = []
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        for name in names:  # inputs first: output shapes are known once input shapes are set
            if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
                self.inputs.append(name)
                shape = tuple(engine.get_tensor_shape(name))
                if -1 in shape:
                    self.context.set_input_shape(name, be._static_shape(shape))
        rng = np.random.default_rng(0)
        for name in names:
            shape = tuple(self.context.get_tensor_shape(name))
            dtype = trt.nptype(engine.get_tensor_dtype(name))
            arr, hptr = cuda.host_array(shape, dtype)
            if name in self.inputs and np.issubdtype(dtype, np.floating):
                arr[...] = rng.standard_normal(shape).astype(dtype)
            self.host[name] = (arr, hptr)
            self.dev[name] = cuda.malloc(arr.nbytes)
            self.context.set_tensor_address(name, self.dev[name])
        for name in self.inputs:  # inputs are on the device even without per-iteration copies
            arr, hptr = self.host[name]
            cuda.h2d(self.dev[name], hptr, arr.nbytes, self.stream)
        # the first enqueue does lazy allocations that must not happen inside a graph capture
        if not self.context.execute_async_v3(self.handle):
            raise RuntimeError("TensorRT execute_async_v3 failed on the first run")
        cuda.sync(self.stream)
        self.graph_exec = None
        if be.cuda_graph:
            self.graph_exec = cuda.capture(self.stream, lambda: self.context.execute_async_v3(self.handle))
        self.events = [cuda.event() for _ in range(4)] if cuda.has_events else None

    def save_inspector(self, path: Path) -> Path:
        return atomic.write_text(path, self.be.inspect(self.engine))

    def _enqueue(self) -> float:
        """Launch one inference; returns the host enqueue time in seconds."""
        t0 = time.perf_counter()
        if self.graph_exec is not None:
            self.cuda.launch(self.graph_exec, self.stream)
        elif not self.context.execute_async_v3(self.handle):
            raise RuntimeError("TensorRT execute_async_v3 failed")
        return time.perf_counter() - t0

    def once(self) -> IterTimes:
        """One timed iteration: [H2D] → compute → [D2H], each between its own pair of events."""
        cuda, s, copies = self.cuda, self.stream, self.be.data_transfers
        if self.events is None:  # host timing only (polygraphy.cuda)
            t0 = time.perf_counter()
            enq = self._enqueue()
            cuda.sync(s)
            return IterTimes(0.0, time.perf_counter() - t0, 0.0, enq)
        e0, e1, e2, e3 = self.events
        cuda.record(e0, s)
        if copies:
            for n in self.inputs:
                arr, hptr = self.host[n]
                cuda.h2d(self.dev[n], hptr, arr.nbytes, s)
        cuda.record(e1, s)
        enq = self._enqueue()
        cuda.record(e2, s)
        if copies:
            for n, (arr, hptr) in self.host.items():
                if n not in self.inputs:
                    cuda.d2h(hptr, self.dev[n], arr.nbytes, s)
        cuda.record(e3, s)
        cuda.sync(s)
        return IterTimes(cuda.elapsed_ms(e0, e1) / 1e3, cuda.elapsed_ms(e1, e2) / 1e3, cuda.elapsed_ms(e2, e3) / 1e3,
                         enq)

    def outputs(self) -> dict[str, np.ndarray]:
        """Copy outputs back (synchronously) — for checks, not timed."""
        for n, (arr, hptr) in self.host.items():
            if n not in self.inputs:
                self.cuda.d2h(hptr, self.dev[n], arr.nbytes, self.stream)
        self.cuda.sync(self.stream)
        return {n: self.host[n][0].copy() for n in self.host if n not in self.inputs}


class EngineFromOnnx:
    """Loader (Polygraphy style): calling it builds `onnx_path` into `plan_path` (atomic) and saves
    the engine inspector JSON beside it as `<plan>.layers.json`; returns the plan path."""

    def __init__(self, onnx_path: str | Path, plan_path: str | Path, backend: TensorRTBackend | None = None):
        self.onnx_path, self.plan_path, self.backend = Path(onnx_path), Path(plan_path), backend

    def __call__(self) -> Path:
        be = self.backend or TensorRTBackend()
        plan = be.build(self.onnx_path)
        out = atomic.write_bytes(self.plan_path, plan)
        atomic.write_text(inspector_path(out), be.inspect(be.deserialize(plan, out.name)))
        return out


def inspector_path(plan_path: str | Path) -> Path:
    return Path(str(plan_path) + ".layers.json")


def build_engine_file(onnx_path: str | Path, plan_path: str | Path, backend: TensorRTBackend | None = None) -> Path:
    """Build `onnx_path` into `plan_path` with the inspector JSON beside it (see EngineFromOnnx)."""
    return EngineFromOnnx(onnx_path, plan_path, backend)()


__all__ = ["TensorRTBackend", "TrtPrepared", "EngineFromOnnx", "build_engine_file", "api_generation",
           "cuda_runtime", "INSTALL_HINT"]
