"""TensorRT backend, written against the documented 10.x and 11.x Python APIs.

Build: ONNX parser → network (strongly typed where the flag exists; 11.x is always strongly typed
and has no EXPLICIT_BATCH) → builder config (workspace limit, optimization level, optional hardware
compatibility, DETAILED profiling verbosity, persistent timing cache under engines/) →
build_serialized_network. Precision is in the ONNX (fp16 graph or Q/DQ), never in builder flags, so
one code path serves both generations.

Run: deserialize, device buffers from cuda-python, set_tensor_address, execute_async_v3 on a
stream; GPU compute time from CUDA events around the enqueue, H2D/D2H timed separately.

NEVER RAN ON REAL TENSORRT: this project's machines have no GPU and cannot install TensorRT. The
build call sequence is tested against a recording fake of the `tensorrt` module (both API
generations); `tools/validate_tensorrt.py` checks it end to end on a real GPU.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from ... import atomic
from ...errors import UserError
from ..device import DeviceInfo
from ..timing import Timing
from .base import Backend

INSTALL_HINT = "pip install 'hant-trt[tensorrt]' (TensorRT 10/11 and cuda-python) on a machine with an NVIDIA GPU"


def _import_trt():
    try:
        import tensorrt as trt
    except ImportError:
        raise UserError(f"the tensorrt backend needs TensorRT: {INSTALL_HINT}") from None
    return trt


def _cudart():
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.6
    except ImportError:
        try:
            from cuda import cudart  # older cuda-python
        except ImportError:
            raise UserError(f"the tensorrt backend needs cuda-python for device buffers: {INSTALL_HINT}") from None
    return cudart


def _ck(result):
    """cuda-python calls return (err, *values)."""
    err, *vals = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise RuntimeError(f"CUDA error {err}")
    return vals[0] if len(vals) == 1 else vals


def default_timing_cache() -> Path:
    from ...build.deploy import default_engines_dir

    return default_engines_dir() / "timing.cache"


class TensorRTBackend(Backend):
    name = "tensorrt"

    def __init__(self, workspace_mb: int = 2048, optimization_level: int = 3, hardware_compatible: bool = False,
                 timing_cache: str | Path | None = None, batch: int | None = None, cuda_graph: bool = True,
                 engine_dir: str | Path | None = None):
        self.trt = _import_trt()
        self.major = int(self.trt.__version__.split(".")[0])
        self.logger = self.trt.Logger(self.trt.Logger.WARNING)
        self.workspace = int(workspace_mb) << 20
        self.opt_level = optimization_level
        self.hw_compat = hardware_compatible
        self.timing_cache = Path(timing_cache) if timing_cache else default_timing_cache()
        self.cuda_graph = cuda_graph
        self.engine_dir = Path(engine_dir) if engine_dir else None

    # -- description -----------------------------------------------------------------------------
    def version(self) -> str:
        return self.trt.__version__

    def device(self) -> DeviceInfo:
        cudart = _cudart()
        dev = _ck(cudart.cudaGetDevice())
        prop = _ck(cudart.cudaGetDeviceProperties(dev))
        name = prop.name.decode() if isinstance(prop.name, bytes) else str(prop.name)
        driver = _ck(cudart.cudaDriverGetVersion())
        return DeviceInfo("cuda", name.strip("\x00"), {"cc": f"{prop.major}.{prop.minor}", "driver": driver,
                                                       "trt": self.version()})

    # -- build -------------------------------------------------------------------------------------
    def network_flags(self) -> int:
        flags = 0
        ndcf = self.trt.NetworkDefinitionCreationFlag
        if hasattr(ndcf, "STRONGLY_TYPED"):
            flags |= 1 << int(ndcf.STRONGLY_TYPED)
        return flags

    def build(self, onnx_path: str | Path) -> bytes:
        """Serialized engine (plan bytes) for an ONNX file."""
        trt = self.trt
        builder = trt.Builder(self.logger)
        network = builder.create_network(self.network_flags())
        parser = trt.OnnxParser(network, self.logger)
        if not parser.parse_from_file(str(onnx_path)):
            errs = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise UserError(f"TensorRT cannot parse {Path(onnx_path).name}: {errs[:300]}")
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, self.workspace)
        config.builder_optimization_level = self.opt_level
        config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
        if self.hw_compat:
            config.hardware_compatibility_level = trt.HardwareCompatibilityLevel.AMPERE_PLUS
        blob = self.timing_cache.read_bytes() if self.timing_cache.is_file() else b""
        cache = config.create_timing_cache(blob)
        config.set_timing_cache(cache, ignore_mismatch=False)
        plan = builder.build_serialized_network(network, config)
        if plan is None:
            raise RuntimeError(f"TensorRT failed to build an engine for {Path(onnx_path).name}")
        atomic.write_bytes(self.timing_cache, bytes(config.get_timing_cache().serialize()))
        return bytes(plan)

    def inspect(self, engine) -> str:
        inspector = engine.create_engine_inspector()
        return inspector.get_engine_information(self.trt.LayerInformationFormat.JSON)

    # -- run ---------------------------------------------------------------------------------------
    def prepare(self, model_path, precision: str = "fp32"):
        p = Path(model_path)
        if p.suffix in (".plan", ".engine"):
            from ...build.metadata import check_compatible, read_metadata

            dev = self.device()
            check_compatible(read_metadata(p), {"gpu_name": dev.name, "compute_capability": dev.details["cc"],
                                                "tensorrt_version": self.version()})
            plan = p.read_bytes()
        else:
            plan = self.build(p)
        runtime = self.trt.Runtime(self.logger)
        engine = runtime.deserialize_cuda_engine(plan)
        if engine is None:
            raise UserError(f"TensorRT could not deserialize {p.name} (built for another TensorRT or GPU?)")
        return _Prepared(self, engine, plan)

    def time(self, prepared, warmup_ms=200.0, min_iters=10, max_seconds=2.0, cv_target=0.02, max_iters=None,
             min_seconds=0.0) -> Timing:
        return prepared.time(warmup_ms, min_iters, max_seconds, cv_target, max_iters, min_seconds)


class _Prepared:
    """Engine + context + device buffers + stream; timed with CUDA events."""

    def __init__(self, be: TensorRTBackend, engine, plan: bytes):
        self.be, self.engine, self.plan = be, engine, plan
        trt, cudart = be.trt, _cudart()
        self.cudart = cudart
        self.context = engine.create_execution_context()
        self.stream = _ck(cudart.cudaStreamCreate())
        self.host, self.dev, self.inputs = {}, {}, []
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            shape = tuple(engine.get_tensor_shape(name))
            arr = np.zeros(shape, dtype=trt.nptype(engine.get_tensor_dtype(name)))
            ptr = _ck(cudart.cudaMalloc(arr.nbytes))
            self.host[name], self.dev[name] = arr, ptr
            self.context.set_tensor_address(name, ptr)
            if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
                self.inputs.append(name)

    def save_inspector(self, path: Path) -> Path:
        return atomic.write_text(path, self.be.inspect(self.engine))

    def time(self, warmup_ms, min_iters, max_seconds, cv_target, max_iters, min_seconds) -> Timing:
        import time as _t

        cudart = self.cudart
        ev = [_ck(cudart.cudaEventCreate()) for _ in range(4)]
        h2d_kind = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        d2h_kind = cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost

        def once():
            _ck(cudart.cudaEventRecord(ev[0], self.stream))
            for n in self.inputs:
                _ck(cudart.cudaMemcpyAsync(self.dev[n], self.host[n].ctypes.data, self.host[n].nbytes, h2d_kind,
                                           self.stream))
            _ck(cudart.cudaEventRecord(ev[1], self.stream))
            t0 = _t.perf_counter()
            self.context.execute_async_v3(self.stream)
            enq = _t.perf_counter() - t0
            _ck(cudart.cudaEventRecord(ev[2], self.stream))
            for n in self.host:
                if n not in self.inputs:
                    _ck(cudart.cudaMemcpyAsync(self.host[n].ctypes.data, self.dev[n], self.host[n].nbytes, d2h_kind,
                                               self.stream))
            _ck(cudart.cudaEventRecord(ev[3], self.stream))
            _ck(cudart.cudaStreamSynchronize(self.stream))
            h2d = _ck(cudart.cudaEventElapsedTime(ev[0], ev[1]))
            comp = _ck(cudart.cudaEventElapsedTime(ev[1], ev[2]))
            d2h = _ck(cudart.cudaEventElapsedTime(ev[2], ev[3]))
            return enq, h2d, comp, d2h

        start = _t.perf_counter()
        end_warm = start + warmup_ms / 1e3
        while _t.perf_counter() < end_warm:
            once()
        lat, comp_s, recs = [], [], []
        t_begin = _t.perf_counter()
        while True:
            t0 = _t.perf_counter()
            enq, h2d, comp, d2h = once()
            t1 = _t.perf_counter()
            lat.append((h2d + comp + d2h) / 1e3)
            comp_s.append(comp / 1e3)
            base = (t0 - t_begin) * 1e3
            recs.append({"startEnqMs": base, "endEnqMs": base + enq * 1e3, "startH2dMs": base,
                         "endH2dMs": base + h2d, "startComputeMs": base + h2d, "endComputeMs": base + h2d + comp,
                         "startD2hMs": base + h2d + comp, "endD2hMs": base + h2d + comp + d2h, "h2dMs": h2d,
                         "computeMs": comp, "d2hMs": d2h, "latencyMs": h2d + comp + d2h})
            n, elapsed = len(lat), t1 - t_begin
            if (max_iters and n >= max_iters) or (n >= min_iters and elapsed >= max(min_seconds, 0)
                                                   and (elapsed >= max_seconds or n >= 2000)):
                break
        t = Timing(lat, _t.perf_counter() - t_begin, recs)
        t.gpu_compute = Timing(comp_s, t.walltime_s)
        return t


def build_engine_file(onnx_path: str | Path, plan_path: str | Path, backend: TensorRTBackend | None = None) -> Path:
    """Build `onnx_path` into `plan_path` (atomic) with the engine inspector JSON beside it."""
    be = backend or TensorRTBackend()
    plan = be.build(onnx_path)
    out = atomic.write_bytes(Path(plan_path), plan)
    engine = be.trt.Runtime(be.logger).deserialize_cuda_engine(plan)
    if engine is not None:
        atomic.write_text(Path(str(out) + ".layers.json"), be.inspect(engine))
    return out


__all__ = ["TensorRTBackend", "build_engine_file", "INSTALL_HINT", "json", "os"]
