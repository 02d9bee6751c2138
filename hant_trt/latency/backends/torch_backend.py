"""PyTorch backend: eager or torch.compile, on CPU or CUDA (CUDA events, CUDA graphs via
"reduce-overhead", channels-last and half precision on GPU). Real GPU latencies where TensorRT is
absent; on CPU a reference for ORT."""

from __future__ import annotations

from pathlib import Path

import torch

from ...errors import UserError
from ..device import DeviceInfo, cpu_device
from ..timing import Timing, measure
from .base import Backend


class TorchBackend(Backend):
    """PyTorch modules timed directly (use `prepare_module`; files are refused).

    threads: CPU threads during timing (default: torch's current setting).
    device: "cpu" or "cuda" (default: cuda when visible).
    compile: torch.compile the module ("reduce-overhead", i.e. CUDA graphs, on GPU; default False).
    channels_last: default True on CUDA, False on CPU.
    """

    name = "torch"

    def __init__(self, threads: int | None = None, device: str | None = None, compile: bool = False,
                 channels_last: bool | None = None, batch: int | None = None):
        self.dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if self.dev.type == "cuda" and not torch.cuda.is_available():
            raise UserError("the torch backend was asked for CUDA but no CUDA device is visible")
        self.threads = threads or torch.get_num_threads()
        self.compile = compile
        self.channels_last = self.dev.type == "cuda" if channels_last is None else channels_last

    def version(self) -> str:
        return f"{torch.__version__}{'+compile' if self.compile else ''}"

    def device(self) -> DeviceInfo:
        if self.dev.type == "cuda":
            p = torch.cuda.get_device_properties(self.dev)
            return DeviceInfo("cuda", p.name, {"cc": f"{p.major}.{p.minor}", "cuda": torch.version.cuda})
        return cpu_device(self.threads)

    def prepare_module(self, module: torch.nn.Module, input_shape, precision: str = "fp32"):
        """(module, input) ready to time: eval mode on the device; precision "fp32" or "fp16" (CUDA
        only, half weights and input); input_shape is (N, C, H, W)."""
        m = module.eval().to(self.dev)
        x = torch.randn(*input_shape, device=self.dev)
        if precision == "fp16":
            if self.dev.type != "cuda":
                raise UserError("fp16 on the torch backend needs a CUDA device")
            m, x = m.half(), x.half()
        elif precision != "fp32":
            raise UserError(f"the torch backend times fp32 or fp16, not {precision}")
        if self.channels_last:
            m, x = m.to(memory_format=torch.channels_last), x.to(memory_format=torch.channels_last)
        if self.compile:
            m = torch.compile(m, mode="reduce-overhead" if self.dev.type == "cuda" else "default")
        return m, x

    def prepare(self, model_path, precision: str = "fp32"):
        raise UserError(f"the torch backend times PyTorch modules, not files ({Path(model_path).name}); "
                        "use --backend ort for ONNX files")

    def time(self, prepared, warmup_ms=200.0, min_iters=10, max_seconds=2.0, cv_target=0.02, max_iters=None,
             min_seconds=0.0) -> Timing:
        m, x = prepared
        torch.set_num_threads(self.threads)

        if self.dev.type == "cuda":
            def once():
                with torch.inference_mode():
                    m(x)
                torch.cuda.synchronize(self.dev)
        else:
            def once():
                with torch.inference_mode():
                    m(x)
        return measure(once, warmup_ms, min_iters, max_seconds, cv_target, max_iters, min_seconds)
