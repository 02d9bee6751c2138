"""The one small interface every engine backend implements: prepare → time → describe device."""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path

from ..device import DeviceInfo
from ..timing import Timing


class Backend(ABC):
    """An engine that can load a model file and time it on one device.

    `name` and `version()` go into latency-table keys together with `device().fingerprint`, so a
    number measured by another engine version or on another machine is never reused.
    """

    name: str = "?"

    @abstractmethod
    def version(self) -> str:
        """Version string of the engine (part of latency-table keys)."""

    @abstractmethod
    def device(self) -> DeviceInfo:
        """The device this backend measures on (its `.fingerprint` is part of table keys)."""

    @abstractmethod
    def prepare(self, model_path: str | Path, precision: str = "fp32"):
        """Load/build `model_path` (ONNX, or a plan for TensorRT) into something `time` can run.

        precision: "fp32" | "fp16" | "int8" — what the file holds (the ONNX is already converted);
            backends that cannot honour it raise UserError.
        """

    @abstractmethod
    def time(self, prepared, warmup_ms: float = 200.0, min_iters: int = 10, max_seconds: float = 2.0,
             cv_target: float = 0.02, max_iters: int | None = None, min_seconds: float = 0.0) -> Timing:
        """Per-iteration latency of `prepared`; arguments as in hant_trt.latency.timing.measure."""
