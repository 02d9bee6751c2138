"""TEST DOUBLE — recording fakes of the `tensorrt` Python module and of cuda-python's CUDA runtime
(TensorRT and a GPU are not available on this project's machines). They record every call so
tests can check our call sequences against the documented 10.x and 11.x APIs; they build and run
nothing real.

`make_fake(major, gpu)`: 10 has NetworkDefinitionCreationFlag.EXPLICIT_BATCH/STRONGLY_TYPED and
BuilderFlag.FP16/INT8; 11 has no EXPLICIT_BATCH and no precision builder flags, and its inspector
JSON says "I/O Tensors" instead of "Bindings".
`make_fake_cudart(gpu)`: the cudart calls the backend uses, each returning (err, *values).
`FakeGpu`: the state both share — a simulated device clock per stream, so CUDA events measure
exactly what the fake charged: H2D/D2H 1 µs per KiB, an engine run `compute_ms`; graph capture
records launches instead of running them, graph launches replay them.
`install(monkeypatch, major, layout)`: puts both into sys.modules ("bindings" →
`cuda.bindings.runtime`, cuda-python ≥ 12.6; "legacy" → `from cuda import cudart`).
"""

from __future__ import annotations

import enum
import importlib.machinery
import types

import numpy as np


class FakeGpu:
    def __init__(self, compute_ms: float = 1.0, capture_fails: bool = False):
        self.calls: list[tuple] = []          # shared by both fakes, in order
        self.compute_ms = compute_ms
        self.capture_fails = capture_fails
        self.clock: dict[int, float] = {}     # stream → device time (ms)
        self.capturing: dict[int, list] = {}  # stream → captured work (ms each)
        self.allocs: dict[int, int] = {}      # device pointer → bytes
        self._next = 0x1000

    def rec(self, *a):
        self.calls.append(a)

    def work(self, stream: int, ms: float) -> None:
        if stream in self.capturing:
            self.capturing[stream].append(ms)
        else:
            self.clock[stream] = self.clock.get(stream, 0.0) + ms

    def ptr(self, nbytes: int) -> int:
        self._next += (nbytes + 255) // 256 * 256
        self.allocs[self._next] = nbytes
        return self._next


def make_fake(major: int, gpu: FakeGpu | None = None):
    gpu = gpu or FakeGpu()
    rec = gpu.rec
    m = _module("tensorrt")
    m.__version__ = f"{major}.0.1"
    m.calls = gpu.calls
    m.gpu = gpu

    class Logger:
        WARNING = 2

        def __init__(self, sev=None):
            rec("Logger", sev)

    if major >= 11:
        NDCF = enum.IntEnum("NetworkDefinitionCreationFlag", {"STRONGLY_TYPED": 1})
        BuilderFlag = enum.IntEnum("BuilderFlag", {"TF32": 2, "VERSION_COMPATIBLE": 7})
    else:
        NDCF = enum.IntEnum("NetworkDefinitionCreationFlag", {"EXPLICIT_BATCH": 0, "STRONGLY_TYPED": 1})
        BuilderFlag = enum.IntEnum("BuilderFlag", {"FP16": 0, "INT8": 1, "TF32": 2, "VERSION_COMPATIBLE": 7})
    MemoryPoolType = enum.IntEnum("MemoryPoolType", {"WORKSPACE": 0})
    ProfilingVerbosity = enum.IntEnum("ProfilingVerbosity", {"LAYER_NAMES_ONLY": 0, "NONE": 1, "DETAILED": 2})
    HardwareCompatibilityLevel = enum.IntEnum("HardwareCompatibilityLevel", {"NONE": 0, "AMPERE_PLUS": 1})
    LayerInformationFormat = enum.IntEnum("LayerInformationFormat", {"ONELINE": 0, "JSON": 1})
    TensorIOMode = enum.IntEnum("TensorIOMode", {"NONE": 0, "INPUT": 1, "OUTPUT": 2})
    DataType = enum.IntEnum("DataType", {"FLOAT": 0, "HALF": 1, "INT8": 2, "INT32": 3})
    _NP = {DataType.FLOAT: np.float32, DataType.HALF: np.float16, DataType.INT8: np.int8,
           DataType.INT32: np.int32}

    def nptype(dt):
        return _NP[dt]

    # the fake "model": one input and one output whose shapes the tests may change
    io = {"input": (TensorIOMode.INPUT, (1, 3, 8, 8), DataType.FLOAT),
          "output": (TensorIOMode.OUTPUT, (1, 4, 8, 8), DataType.FLOAT)}
    m.io = io

    class TimingCache:
        def __init__(self, blob):
            self.blob = bytes(blob)

        def serialize(self):
            rec("TimingCache.serialize")
            return b"cache:" + self.blob

    class Profile:
        def set_shape(self, name, mn, opt, mx):
            rec("profile.set_shape", name, tuple(mn), tuple(opt), tuple(mx))

    class Config:
        def __init__(self):
            self._cache = None

        def __setattr__(self, k, v):
            if not k.startswith("_"):
                rec("config.set", k, v)
            object.__setattr__(self, k, v)

        def set_memory_pool_limit(self, pool, size):
            rec("config.set_memory_pool_limit", pool, size)

        def set_flag(self, flag):
            rec("config.set_flag", flag)

        def create_timing_cache(self, blob):
            rec("config.create_timing_cache", bytes(blob))
            return TimingCache(blob)

        def set_timing_cache(self, cache, ignore_mismatch):
            rec("config.set_timing_cache", ignore_mismatch)
            self._cache = cache
            return True

        def get_timing_cache(self):
            return self._cache

        def add_optimization_profile(self, profile):
            rec("config.add_optimization_profile")
            return 0

    class Tensor:
        def __init__(self, name, shape):
            self.name, self.shape = name, shape

    class Network:
        @property
        def num_inputs(self):
            return sum(1 for v in io.values() if v[0] == TensorIOMode.INPUT)

        def get_input(self, i):
            name = [k for k, v in io.items() if v[0] == TensorIOMode.INPUT][i]
            return Tensor(name, io[name][1])

    class Builder:
        def __init__(self, logger):
            rec("Builder")

        def create_network(self, flags=0):
            rec("create_network", flags)
            if major >= 11 and flags & 1:  # EXPLICIT_BATCH's bit does not exist on 11
                raise AttributeError("EXPLICIT_BATCH")
            return Network()

        def create_builder_config(self):
            rec("create_builder_config")
            return Config()

        def create_optimization_profile(self):
            rec("create_optimization_profile")
            return Profile()

        def build_serialized_network(self, network, config):
            rec("build_serialized_network")
            return b"PLAN"

    class OnnxParser:
        errors: list[str] = []

        def __init__(self, network, logger):
            rec("OnnxParser")

        @property
        def num_errors(self):
            return len(OnnxParser.errors)

        def parse_from_file(self, path):
            rec("parse_from_file", path)
            return not OnnxParser.errors

        def get_error(self, i):
            return OnnxParser.errors[i]

    class Inspector:
        def get_engine_information(self, fmt):
            rec("inspector.get_engine_information", fmt)
            key = "I/O Tensors" if major >= 11 else "Bindings"
            return '{"Layers": [], "%s": []}' % key

    class Context:
        def __init__(self):
            self.shapes = {k: v[1] for k, v in io.items()}
            self.addresses: dict[str, int] = {}

        def set_input_shape(self, name, shape):
            rec("context.set_input_shape", name, tuple(shape))
            self.shapes[name] = tuple(shape)
            if name == "input":  # the output follows the input's batch
                self.shapes["output"] = (shape[0], *io["output"][1][1:])
            return True

        def get_tensor_shape(self, name):
            return self.shapes[name]

        def set_tensor_address(self, name, ptr):
            rec("context.set_tensor_address", name, ptr)
            assert ptr in gpu.allocs, "address is not a device allocation"
            self.addresses[name] = ptr
            return True

        def execute_async_v3(self, stream_handle):
            rec("context.execute_async_v3", stream_handle)
            assert set(self.addresses) == set(io), "every I/O tensor needs an address before enqueue"
            assert isinstance(stream_handle, int), "TensorRT takes the stream as an integer handle"
            gpu.work(stream_handle, gpu.compute_ms)
            return True

    class Engine:
        num_io_tensors = len(io)

        def get_tensor_name(self, i):
            return list(io)[i]

        def get_tensor_mode(self, name):
            return io[name][0]

        def get_tensor_shape(self, name):
            return io[name][1]

        def get_tensor_dtype(self, name):
            return io[name][2]

        def create_execution_context(self):
            rec("engine.create_execution_context")
            return Context()

        def create_engine_inspector(self):
            rec("engine.create_engine_inspector")
            return Inspector()

    if major < 11:  # removed in 11 (the *_v2 variants remain): calling it on 11 is an AttributeError
        Engine.device_memory_size = 0

    class Runtime:
        def __init__(self, logger):
            rec("Runtime")

        def deserialize_cuda_engine(self, plan):
            rec("deserialize_cuda_engine", plan)
            return Engine() if plan == b"PLAN" else None

    for name, obj in dict(Logger=Logger, NetworkDefinitionCreationFlag=NDCF, BuilderFlag=BuilderFlag,
                          MemoryPoolType=MemoryPoolType, ProfilingVerbosity=ProfilingVerbosity,
                          HardwareCompatibilityLevel=HardwareCompatibilityLevel,
                          LayerInformationFormat=LayerInformationFormat, TensorIOMode=TensorIOMode,
                          DataType=DataType, nptype=nptype, Builder=Builder, OnnxParser=OnnxParser,
                          Runtime=Runtime).items():
        setattr(m, name, obj)
    return m


def make_fake_cudart(gpu: FakeGpu):
    rec = gpu.rec
    rt = _module("cuda.bindings.runtime")
    cudaError_t = enum.IntEnum("cudaError_t", {"cudaSuccess": 0, "cudaErrorStreamCaptureUnsupported": 900})
    ok = cudaError_t.cudaSuccess
    rt.cudaError_t = cudaError_t
    rt.cudaMemcpyKind = enum.IntEnum("cudaMemcpyKind", {"cudaMemcpyHostToDevice": 1, "cudaMemcpyDeviceToHost": 2})
    rt.cudaStreamCaptureMode = enum.IntEnum("cudaStreamCaptureMode", {"cudaStreamCaptureModeGlobal": 0,
                                                                      "cudaStreamCaptureModeThreadLocal": 1})
    pinned: dict[int, np.ndarray] = {}   # keeps fake pinned memory alive
    events: dict[int, tuple[int, float]] = {}
    graphs: dict[int, list] = {}

    class Props:
        name = b"Fake GPU 4090\x00\x00"
        major, minor = 8, 9

    def fn(name, body):
        def call(*a):
            rec(f"cuda.{name}", *a)
            return body(*a)
        setattr(rt, name, call)

    fn("cudaGetDevice", lambda: (ok, 0))
    fn("cudaGetDeviceProperties", lambda dev: (ok, Props()))
    fn("cudaDriverGetVersion", lambda: (ok, 12080))
    fn("cudaRuntimeGetVersion", lambda: (ok, 12060))
    fn("cudaGetLastError", lambda: (ok,))

    def stream_create():
        s = gpu.ptr(1)
        gpu.clock[s] = 0.0
        return ok, s
    fn("cudaStreamCreate", stream_create)
    fn("cudaMalloc", lambda n: (ok, gpu.ptr(n)))

    def malloc_host(n):
        buf = np.zeros(n + 64, dtype=np.uint8)
        ptr = buf.ctypes.data + (-buf.ctypes.data % 64)
        pinned[ptr] = buf
        return ok, ptr
    fn("cudaMallocHost", malloc_host)

    def memcpy(dst, src, n, kind, stream):
        dev = dst if kind == rt.cudaMemcpyKind.cudaMemcpyHostToDevice else src
        assert dev in gpu.allocs and gpu.allocs[dev] >= n, "copy outside a device allocation"
        gpu.work(int(stream), n / 1024 * 1e-3)
        return (ok,)
    fn("cudaMemcpyAsync", memcpy)
    fn("cudaStreamSynchronize", lambda s: (ok,))
    fn("cudaEventCreate", lambda: (ok, gpu.ptr(1)))

    def event_record(ev, stream):
        events[ev] = (int(stream), gpu.clock.get(int(stream), 0.0))
        return (ok,)
    fn("cudaEventRecord", event_record)
    fn("cudaEventElapsedTime", lambda a, b: (ok, events[b][1] - events[a][1]))

    def begin(stream, mode):
        gpu.capturing[int(stream)] = []
        return (ok,)
    fn("cudaStreamBeginCapture", begin)

    def end(stream):
        work = gpu.capturing.pop(int(stream))
        if gpu.capture_fails:
            return cudaError_t.cudaErrorStreamCaptureUnsupported, None
        g = gpu.ptr(1)
        graphs[g] = work
        return ok, g
    fn("cudaStreamEndCapture", end)

    def instantiate(graph, flags):
        ex = gpu.ptr(1)
        graphs[ex] = graphs[graph]
        return ok, ex
    fn("cudaGraphInstantiate", instantiate)

    def launch(ex, stream):
        for ms in graphs[ex]:
            gpu.work(int(stream), ms)
        return (ok,)
    fn("cudaGraphLaunch", launch)
    fn("cudaFree", lambda p: (ok,))
    fn("cudaFreeHost", lambda p: (ok,))
    return rt


def _module(name: str) -> types.ModuleType:
    """A module with a spec (importlib.util.find_spec, which torch._dynamo calls on names in
    sys.modules, raises on a module whose __spec__ is None)."""
    m = types.ModuleType(name)
    m.__spec__ = importlib.machinery.ModuleSpec(name, None)
    return m


def install(monkeypatch, major: int, layout: str = "bindings", gpu: FakeGpu | None = None):
    """Install fake tensorrt + cuda-python into sys.modules (undone by monkeypatch); returns the
    fake tensorrt module (its `.gpu` is the shared FakeGpu, `.calls` the shared call list)."""
    import sys

    gpu = gpu or FakeGpu()
    trt = make_fake(major, gpu)
    rt = make_fake_cudart(gpu)
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    cuda = _module("cuda")
    if layout == "bindings":
        cuda.__path__ = []  # a package, so `cuda.bindings` can be imported from sys.modules
        bindings = _module("cuda.bindings")
        bindings.__path__ = []
        bindings.runtime = rt
        cuda.bindings = bindings
        monkeypatch.setitem(sys.modules, "cuda.bindings", bindings)
        monkeypatch.setitem(sys.modules, "cuda.bindings.runtime", rt)
    else:
        cuda.cudart = rt
        monkeypatch.delitem(sys.modules, "cuda.bindings", raising=False)
    monkeypatch.setitem(sys.modules, "cuda", cuda)
    return trt
