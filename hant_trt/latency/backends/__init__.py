"""Engine backends behind one interface (prepare → time → describe device); `get_backend(name)`.

Each backend registers a lazy loader here, so importing this package imports neither TensorRT nor
cuda-python; `register_backend` adds another one without editing this file's logic.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Callable

from ...errors import UserError
from .base import Backend

# name → (module, class); imported only when asked for
_REGISTRY: dict[str, Callable[[], type]] = {}
# options callers pass to whichever backend is configured; a backend that has no use for one
# (threads on TensorRT, batch on torch) ignores it instead of failing
COMMON_OPTIONS = ("threads", "batch")


def register_backend(name: str, loader: Callable[[], type]) -> None:
    """Register `loader` (returns a Backend subclass, importing it lazily) under `name`."""
    _REGISTRY[name] = loader


def _lazy(module: str, cls: str) -> Callable[[], type]:
    return lambda: getattr(importlib.import_module(module, __name__), cls)


register_backend("ort", _lazy(".ort", "OrtBackend"))
register_backend("torch", _lazy(".torch_backend", "TorchBackend"))
register_backend("tensorrt", _lazy(".tensorrt", "TensorRTBackend"))
BACKENDS = tuple(_REGISTRY)


def get_backend(name: str, **opts) -> Backend:
    """A ready backend.

    name: "ort" (ONNX Runtime; the default where there is no GPU), "torch" (PyTorch eager /
        torch.compile), "tensorrt" (needs TensorRT + cuda-python + a GPU), or a registered name.
    opts: keyword options of that backend's constructor; None values are dropped (so callers can
        pass config fields through), `threads`/`batch` are dropped where the backend has no such
        option, any other unknown option is an error.
    """
    if name not in _REGISTRY:
        raise UserError(f"unknown backend '{name}' (known: {', '.join(_REGISTRY)})")
    cls = _REGISTRY[name]()
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self"}
    kw = {}
    for k, v in opts.items():
        if v is None or (k in COMMON_OPTIONS and k not in accepted):
            continue
        if k not in accepted:
            raise UserError(f"backend '{name}' has no option '{k}' (options: {', '.join(sorted(accepted))})")
        kw[k] = v
    return cls(**kw)


def profile_backend(profile, threads: int | None = None) -> Backend:
    """The backend `profile` (a run's `profile` section) measures on: the profile's, and the
    build's side-by-side timing. threads: the thread count to use where `profile.threads` is unset
    (the profile stage's choice, `profiled_threads`)."""
    return get_backend(profile.backend, threads=profile.threads or threads, compile=profile.compile or None)


def profiled_threads(run) -> int | None:
    """The CPU threads the run's profile timed with (it may have chosen fewer than the default when
    other processes held cores), so later timings of the run are taken the same way."""
    t = (run.stage("profile").info or {}).get("threads")
    return t if isinstance(t, int) and t > 0 else None


__all__ = ["Backend", "BACKENDS", "get_backend", "profile_backend", "profiled_threads", "register_backend"]
