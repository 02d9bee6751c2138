"""Engine backends behind one interface; `get_backend(name)`."""

from __future__ import annotations

from ...errors import UserError
from .base import Backend

BACKENDS = ("ort", "torch", "tensorrt")


def get_backend(name: str, **opts) -> Backend:
    """`ort` (ONNX Runtime), `torch` (PyTorch eager/compile), `tensorrt` (needs TensorRT + GPU)."""
    opts = {k: v for k, v in opts.items() if v is not None}
    if name == "ort":
        from .ort import OrtBackend

        return OrtBackend(**opts)
    if name == "torch":
        from .torch_backend import TorchBackend

        return TorchBackend(**{k: v for k, v in opts.items() if k != "batch"})
    if name == "tensorrt":
        from .tensorrt import TensorRTBackend

        return TensorRTBackend(**{k: v for k, v in opts.items() if k not in ("threads",)})
    raise UserError(f"unknown backend '{name}' (known: {', '.join(BACKENDS)})")
