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


def _cpu_ticks(cpus: set[int]) -> tuple[int, int] | None:
    """(busy, total) clock ticks of `cpus` since boot, from /proc/stat; None where unreadable."""
    busy = total = 0
    try:
        with open("/proc/stat") as fh:
            for line in fh:
                name, *vals = line.split()
                if not name.startswith("cpu") or name == "cpu" or int(name[3:]) not in cpus:
                    continue
                v = [int(x) for x in vals[:8]]          # user nice system idle iowait irq softirq steal
                total += sum(v)
                busy += sum(v) - v[3] - v[4]
    except (OSError, ValueError, IndexError):
        return None
    return busy, total


def _own_ticks() -> int:
    with open("/proc/self/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])            # utime + stime of this process, in ticks


def busy_cores(seconds: float = 0.5) -> float | None:
    """How many of this process's CPUs other processes kept busy over the next `seconds` (this
    process's own use subtracted); None where /proc cannot tell (not Linux)."""
    import time

    try:
        cpus = os.sched_getaffinity(0)
    except AttributeError:
        return None
    try:
        a, own_a = _cpu_ticks(cpus), _own_ticks()
        time.sleep(seconds)
        b, own_b = _cpu_ticks(cpus), _own_ticks()
    except (OSError, ValueError, IndexError):
        return None
    if a is None or b is None or b[1] <= a[1]:
        return None
    per_cpu = (b[1] - a[1]) / len(cpus)                 # ticks one CPU had in the interval
    other = max(0, (b[0] - a[0]) - (own_b - own_a))
    return other / per_cpu


def free_cores(seconds: float = 0.5) -> int | None:
    """CPUs of this process that nothing else is using now (at least 1), or None where unknown.
    A core more than half busy counts as taken."""
    busy = busy_cores(seconds)
    if busy is None:                                    # also where sched_getaffinity does not exist
        return None
    return max(1, len(os.sched_getaffinity(0)) - int(busy + 0.5))


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
