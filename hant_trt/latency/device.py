"""Device fingerprints: a latency measured on one machine is never used for another."""

from __future__ import annotations

import hashlib
import os
import platform
from dataclasses import dataclass, field


@dataclass
class DeviceInfo:
    """What a latency was measured on. `fingerprint` (part of every latency-table key) hashes all
    of it: CPU model + threads + cores, or GPU name + compute capability + driver."""

    kind: str                      # cpu | cuda
    name: str                      # CPU model or GPU name
    details: dict = field(default_factory=dict)   # threads, compute capability, driver...

    @property
    def fingerprint(self) -> str:
        parts = [self.kind, self.name] + [f"{k}={self.details[k]}" for k in sorted(self.details)]
        text = ";".join(str(p) for p in parts)
        return f"{self.kind}:{self.name[:40]}:{hashlib.sha256(text.encode()).hexdigest()[:10]}"


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_device(threads: int) -> DeviceInfo:
    """This machine's CPU, timed with `threads` threads."""
    return DeviceInfo("cpu", cpu_model(), {"threads": threads, "machine": platform.machine(),
                                           "cores": os.cpu_count()})


def nvidia_driver() -> str | None:
    """The NVIDIA kernel driver's version (e.g. "580.159.04"), or None where it cannot be read."""
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            v = pynvml.nvmlSystemGetDriverVersion()
            return v.decode() if isinstance(v, bytes) else str(v)
        finally:
            pynvml.nvmlShutdown()
    except Exception:
        pass
    try:
        with open("/proc/driver/nvidia/version") as fh:
            for tok in fh.readline().split():
                if tok.count(".") >= 1 and tok.replace(".", "").isdigit():
                    return tok
    except OSError:
        pass
    return None


def cuda_device(dev=None) -> DeviceInfo:
    """A CUDA GPU as PyTorch sees it: name, compute capability, driver, CUDA and torch versions
    (a latency from another driver or framework build is another measurement)."""
    import torch

    p = torch.cuda.get_device_properties(dev)
    return DeviceInfo("cuda", p.name, {"cc": f"{p.major}.{p.minor}", "cuda": torch.version.cuda,
                                       "driver": nvidia_driver(), "torch": torch.__version__.split("+")[0],
                                       "memory_gb": round(p.total_memory / 2**30)})
