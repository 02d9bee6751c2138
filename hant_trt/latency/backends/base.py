"""The one small interface every engine backend implements: prepare → time → describe device."""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path

from ..device import DeviceInfo
from ..timing import Timing


class Backend(ABC):
    name: str = "?"

    @abstractmethod
    def version(self) -> str:
        """Version string of the engine (goes into latency-table keys)."""

    @abstractmethod
    def device(self) -> DeviceInfo:
        """The device this backend measures on."""

    @abstractmethod
    def prepare(self, model_path: str | Path, precision: str = "fp32"):
        """Load/build `model_path` (ONNX, or a plan for TensorRT) into something `time` can run."""

    @abstractmethod
    def time(self, prepared, warmup_ms: float = 200.0, min_iters: int = 10, max_seconds: float = 2.0,
             cv_target: float = 0.02, max_iters: int | None = None, min_seconds: float = 0.0) -> Timing:
        """Per-iteration latency of `prepared` (see hant_trt.latency.timing.measure)."""
