"""Check an exported ONNX against its PyTorch model with Polygraphy's comparator on ONNX Runtime.

Tolerances per precision (documented in docs/ARCHITECTURE.md): the ONNX runs the same arithmetic
as PyTorch in fp32, so fp32 must match tightly; fp16 and int8 change the arithmetic by design and are
checked loosely on logits (their real quality check is agreement on images).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

TOLERANCES = {  # (atol, rtol) on logits
    "fp32": (1e-3, 1e-3),
    "fp16": (0.25, 5e-2),   # a whole Lite0 in fp16 on real photos: up to 0.14 on logits of magnitude ~10
    "int8": (0.5, 0.2),     # vs the int8-simulated model (see docs/ARCHITECTURE.md)
}


@dataclass
class VerifyResult:
    passed: bool
    precision: str
    atol: float
    rtol: float
    max_abs_diff: float
    max_rel_diff: float


def verify_onnx(module: torch.nn.Module, onnx_path: Path, inputs: list[np.ndarray], precision: str = "fp32",
                input_name: str = "input", output_name: str = "output") -> VerifyResult:
    """Run `inputs` through PyTorch and ONNX Runtime (both as Polygraphy runners) and compare."""
    from polygraphy.backend.onnxrt import OnnxrtRunner, SessionFromOnnx
    from polygraphy.comparator import Comparator, CompareFunc
    from polygraphy.logger import G_LOGGER

    G_LOGGER.module_severity = G_LOGGER.ERROR  # its per-iteration INFO lines drown the CLI output
    module = module.eval()
    torch_runner = _cpu_torch_runner(module, input_name, output_name, inputs[0].shape)
    ort_runner = OnnxrtRunner(SessionFromOnnx(str(onnx_path), providers=["CPUExecutionProvider"]), name="onnxrt")
    feed = [{input_name: x.astype(np.float32)} for x in inputs]
    with torch.no_grad():
        results = Comparator.run([torch_runner, ort_runner], data_loader=feed)
    atol, rtol = TOLERANCES[precision]
    passed = bool(Comparator.compare_accuracy(results, compare_func=CompareFunc.simple(atol=atol, rtol=rtol)))
    max_abs = max_rel = 0.0
    for a, b in zip(results["pytorch"] if "pytorch" in results else results[0][1],
                    results["onnxrt"] if "onnxrt" in results else results[1][1]):
        x, y = np.asarray(a[output_name], dtype=np.float64), np.asarray(b[output_name], dtype=np.float64)
        max_abs = max(max_abs, float(np.abs(x - y).max()))
        max_rel = max(max_rel, float((np.abs(x - y) / (np.abs(x) + 1e-6)).max()))
    return VerifyResult(passed, precision, atol, rtol, max_abs, max_rel)


def _cpu_torch_runner(module, input_name: str, output_name: str, shape):
    """A Polygraphy runner over a PyTorch module on the CPU (Polygraphy's PytRunner moves inputs
    to CUDA unconditionally, so it cannot run here)."""
    import time

    from polygraphy.backend.base import BaseRunner
    from polygraphy.common import TensorMetadata

    class TorchCpuRunner(BaseRunner):
        def __init__(self):
            super().__init__(name="pytorch")

        def get_input_metadata_impl(self):
            return TensorMetadata().add(input_name, np.float32, tuple(shape))

        def infer_impl(self, feed_dict):
            x = torch.from_numpy(np.ascontiguousarray(feed_dict[input_name], dtype=np.float32))
            t0 = time.perf_counter()
            with torch.no_grad():
                y = module(x)
            self.inference_time = time.perf_counter() - t0
            return {output_name: y.numpy()}

    return TorchCpuRunner()
