"""PyTorch backend: modules timed on CPU, or on CUDA as a GPU engine runs them.

On CUDA a module is captured once as a CUDA graph and timed by replaying it between CUDA events:
eager PyTorch on a GPU measures Python's kernel launches (Lite0's fp16 teacher: 3.4 ms eager vs
0.57 ms replayed at batch 1 on an H200), which would make the search buy depth instead of the
arithmetic a fused engine runs. `compile=True` adds Inductor (BN and activations fused into
convolutions, as TensorRT does) under the same graph capture. Clocks are left alone.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ...errors import UserError
from ..device import DeviceInfo, cpu_device, cuda_device
from ..timing import IterTimes, Timing, measure
from .base import Backend

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
# one timed sample replays the graph until about this long, so event resolution (~0.5 µs) and the
# per-sample host sync are negligible against tiny parts (a 10 µs block replays ~50 times)
SAMPLE_TARGET_S = 5e-4


@dataclass
class Prepared:
    """A module ready to time: its input, and on CUDA its captured graph (None: eager)."""

    module: torch.nn.Module
    x: torch.Tensor
    graph: "torch.cuda.CUDAGraph | None" = None
    replays: int = 1                     # graph replays per timed sample

    def __iter__(self):                  # (module, input), as callers unpacked it before
        return iter((self.module, self.x))


class TorchBackend(Backend):
    """PyTorch modules timed directly (use `prepare_module`; files are refused).

    threads: CPU threads during timing (default: torch's current setting).
    device: "cpu" or "cuda" (default: cuda when visible).
    compile: torch.compile the module (Inductor; on CUDA then captured as a CUDA graph; default False).
    channels_last: default True on CUDA, False on CPU.
    batch: accepted for the common options; the batch is the input shape's first dimension.
    cuda_graphs: on CUDA, time graph replays (default True); False times eager calls with events.
    """

    name = "torch"

    def __init__(self, threads: int | None = None, device: str | None = None, compile: bool = False,
                 channels_last: bool | None = None, batch: int | None = None, cuda_graphs: bool = True):
        self.dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if self.dev.type == "cuda" and not torch.cuda.is_available():
            raise UserError("the torch backend was asked for CUDA but no CUDA device is visible")
        if self.dev.type not in ("cpu", "cuda"):
            raise UserError(f"the torch backend runs on cpu or cuda, not '{device}'")
        self.threads = threads or torch.get_num_threads()
        self.compile = compile
        self.cuda_graphs = cuda_graphs
        self.channels_last = self.dev.type == "cuda" if channels_last is None else channels_last

    def version(self) -> str:
        mode = ("+graph" if self.cuda_graphs else "+events") if self.dev.type == "cuda" else ""
        return f"{torch.__version__}{mode}{'+compile' if self.compile else ''}"

    def device(self) -> DeviceInfo:
        if self.dev.type == "cuda":
            return cuda_device(self.dev)
        return cpu_device(self.threads)

    def prepare_module(self, module: torch.nn.Module, input_shape, precision: str = "fp32") -> Prepared:
        """The module ready to time: an eval-mode copy on the device (the caller's module is left
        as it was) at `precision` ("fp32", or "fp16"/"bf16" on CUDA), channels-last when set, and on
        CUDA captured as a CUDA graph. input_shape is (N, C, H, W)."""
        if precision not in DTYPES:
            raise UserError(f"the torch backend times fp32, fp16 or bf16, not {precision}")
        if precision != "fp32" and self.dev.type != "cuda":
            raise UserError(f"{precision} on the torch backend needs a CUDA device")
        dtype = DTYPES[precision]
        m = copy.deepcopy(module).eval().to(self.dev, dtype)
        for p in m.parameters():
            p.requires_grad_(False)
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(*input_shape, generator=gen).to(self.dev, dtype)
        if self.channels_last and x.dim() == 4:
            m, x = m.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
        if self.compile:
            m = torch.compile(m, mode="default")
        prepared = Prepared(m, x)
        if self.dev.type == "cuda" and self.cuda_graphs:
            prepared.graph = _capture(m, x, self.dev)
            prepared.replays = _replays_for(prepared, self.dev)
        return prepared

    def prepare(self, model_path, precision: str = "fp32"):
        raise UserError(f"the torch backend times PyTorch modules, not files ({Path(model_path).name}); "
                        "use --backend ort for ONNX files")

    def time(self, prepared, warmup_ms=200.0, min_iters=10, max_seconds=2.0, cv_target=0.02, max_iters=None,
             min_seconds=0.0) -> Timing:
        if not isinstance(prepared, Prepared):
            prepared = Prepared(*prepared)
        torch.set_num_threads(self.threads)
        if self.dev.type == "cuda":
            once = _event_timer(prepared, self.dev)
        else:
            m, x = prepared.module, prepared.x

            def once():
                with torch.inference_mode():
                    m(x)
        t = measure(once, warmup_ms, min_iters, max_seconds, cv_target, max_iters, min_seconds)
        t.cuda_graph = prepared.graph is not None
        return t


def _capture(m: torch.nn.Module, x: torch.Tensor, dev: torch.device) -> "torch.cuda.CUDAGraph":
    """`m(x)` captured as a CUDA graph, after warm-up calls on a side stream (cuDNN picks its
    algorithms and Inductor compiles there, outside the capture)."""
    side = torch.cuda.Stream(dev)
    side.wait_stream(torch.cuda.current_stream(dev))
    with torch.inference_mode(), torch.cuda.stream(side):
        for _ in range(3):
            m(x)
    torch.cuda.current_stream(dev).wait_stream(side)
    torch.cuda.synchronize(dev)
    g = torch.cuda.CUDAGraph()
    with torch.inference_mode(), torch.cuda.graph(g):
        m(x)
    torch.cuda.synchronize(dev)
    return g


def _replays_for(p: Prepared, dev: torch.device) -> int:
    """Graph replays per timed sample: enough for SAMPLE_TARGET_S, from a probe of 20 replays."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    p.graph.replay()
    start.record()
    for _ in range(20):
        p.graph.replay()
    end.record()
    end.synchronize()
    per = max(start.elapsed_time(end) / 1e3 / 20, 1e-7)
    return int(min(1000, max(1, math.ceil(SAMPLE_TARGET_S / per))))


def _event_timer(p: Prepared, dev: torch.device):
    """One timed sample: `p.replays` graph replays (or eager calls) between two CUDA events; the
    per-inference device time is their elapsed time / replays."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    n = p.replays

    def once() -> IterTimes:
        t0 = time.perf_counter()
        start.record()
        if p.graph is not None:
            for _ in range(n):
                p.graph.replay()
        else:
            with torch.inference_mode():
                for _ in range(n):
                    p.module(p.x)
        end.record()
        enq = time.perf_counter() - t0
        end.synchronize()
        return IterTimes(h2d_s=0.0, compute_s=start.elapsed_time(end) / 1e3 / n, d2h_s=0.0, enqueue_s=enq / n)

    return once
