"""ONNX Runtime backend: CPU (threads configurable, full graph optimisation), or the CUDA provider
when onnxruntime-gpu is installed and asked for."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ...errors import UserError
from ..device import DeviceInfo, cpu_device
from ..timing import Timing, measure
from .base import Backend

_NP = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(int64)": np.int64,
       "tensor(int32)": np.int32, "tensor(int8)": np.int8, "tensor(uint8)": np.uint8}


class OrtBackend(Backend):
    """ONNX Runtime sessions timed on the host clock.

    threads: intra-op threads, pinned for the whole measurement (default min(2, CPU count)); part
        of the device fingerprint, since latency depends on it.
    provider: "cpu", "cuda" (needs onnxruntime-gpu) or "auto" (default: CUDA when onnxruntime-gpu
        is installed and a GPU is usable, else CPU).
    batch: value for a dynamic leading input dimension (default None → 1).
    """

    name = "ort"

    def __init__(self, threads: int | None = None, provider: str = "auto", batch: int | None = None):
        import onnxruntime as ort

        self.ort = ort
        self.threads = threads or min(2, os.cpu_count() or 1)
        self.batch = batch
        have_cuda = "CUDAExecutionProvider" in ort.get_available_providers()
        if provider not in ("auto", "cpu", "cuda"):
            raise UserError(f"unknown ONNX Runtime provider '{provider}' (auto | cpu | cuda)")
        if provider == "cuda" and not have_cuda:
            raise UserError("ONNX Runtime's CUDA provider is not installed: pip install onnxruntime-gpu")
        use_cuda = provider == "cuda" or (provider == "auto" and have_cuda)
        self.providers = ["CUDAExecutionProvider"] if use_cuda else ["CPUExecutionProvider"]

    def version(self) -> str:
        return self.ort.__version__

    def device(self) -> DeviceInfo:
        if self.providers[0] == "CUDAExecutionProvider":
            import torch

            name = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cuda"
            return DeviceInfo("cuda", name, {"provider": "ort-cuda"})
        return cpu_device(self.threads)

    def session(self, model_path: str | Path):
        """An InferenceSession with full graph optimisation, sequential execution and spinning
        worker threads (no wake-up latency between iterations); UserError when unloadable."""
        p = Path(model_path)
        if not p.is_file():
            raise UserError(f"model file {p} not found")
        so = self.ort.SessionOptions()
        so.intra_op_num_threads = self.threads
        so.inter_op_num_threads = 1
        so.graph_optimization_level = self.ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.execution_mode = self.ort.ExecutionMode.ORT_SEQUENTIAL
        so.add_session_config_entry("session.intra_op.allow_spinning", "1")
        so.log_severity_level = 3
        try:
            return self.ort.InferenceSession(str(p), so, providers=self.providers)
        except Exception as exc:
            raise UserError(f"ONNX Runtime cannot load {p} ({type(exc).__name__}: {' '.join(str(exc).split())[:160]})") from None

    def prepare(self, model_path, precision: str = "fp32"):
        sess = self.session(model_path)
        feed = {}
        for i in sess.get_inputs():
            shape = [d if isinstance(d, int) else (self.batch or 1) for d in i.shape]
            feed[i.name] = np.random.default_rng(0).standard_normal(shape).astype(_NP.get(i.type, np.float32))
        return sess, feed

    def time(self, prepared, warmup_ms=200.0, min_iters=10, max_seconds=2.0, cv_target=0.02, max_iters=None,
             min_seconds=0.0) -> Timing:
        sess, feed = prepared
        return measure(lambda: sess.run(None, feed), warmup_ms, min_iters, max_seconds, cv_target, max_iters,
                       min_seconds)
