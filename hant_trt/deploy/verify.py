"""Check an exported ONNX against its PyTorch model with Polygraphy's comparator on ONNX Runtime.

Tolerances per precision (documented in docs/ARCHITECTURE.md): the ONNX runs the same arithmetic
as PyTorch in fp32, so fp32 must match tightly; fp16 changes the arithmetic by design and is
checked loosely on logits.

int8 is checked on what the ONNX *means*: its Q/DQ graph runs on ONNX Runtime with graph
optimisation off (QuantizeLinear/DequantizeLinear executed as written) against the int8-simulated
PyTorch model, which is the same arithmetic. With optimisation on, ORT fuses Q/DQ into integer
kernels that requantize their own way (as TensorRT does): that deviation is recorded
(`engine_max_abs_diff`, `engine_top1_agreement`) but is not a pass/fail figure — on a small
untrained network it reached 0.65 on logits — and int8 quality is judged by agreement on images.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..quant.layouts import LAYOUTS

TOLERANCES = {  # (atol, rtol) on logits; int8 per Q/DQ layout (`QdqLayout.verify_tolerance`)
    "fp32": (1e-3, 1e-3),
    "fp16": (0.25, 5e-2),   # a whole Lite0 in fp16 on real photos: up to 0.14 on logits of magnitude ~10
    **{layout.verify_key: layout.verify_tolerance for layout in LAYOUTS.values()},
}


@dataclass
class VerifyResult:
    passed: bool
    precision: str
    atol: float
    rtol: float
    max_abs_diff: float
    max_rel_diff: float
    engine_max_abs_diff: float | None = None      # int8: ORT with its fused integer kernels
    engine_top1_agreement: float | None = None


def verify_onnx(module: torch.nn.Module, onnx_path: Path, inputs: list[np.ndarray], precision: str = "fp32",
                input_name: str = "input", output_name: str = "output", base: str = "fp32",
                layout=None) -> VerifyResult:
    """Run `inputs` through PyTorch and ONNX Runtime (both as Polygraphy runners) and compare.
    base: the precision of everything that is not int8 (fp16 on GPU targets): an int8 ONNX on an
    fp16 base is held to the fp16 tolerance plus the int8 one."""
    from polygraphy.backend.onnxrt import OnnxrtRunner, SessionFromOnnx
    from polygraphy.comparator import Comparator, CompareFunc
    from polygraphy.logger import G_LOGGER
    import onnxruntime as ort

    G_LOGGER.module_severity = G_LOGGER.ERROR  # its per-iteration INFO lines drown the CLI output
    module = module.eval()
    torch_runner = _cpu_torch_runner(module, input_name, output_name, inputs[0].shape)
    int8 = precision == "int8"
    level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL if int8 else None
    ort_runner = OnnxrtRunner(SessionFromOnnx(str(onnx_path), providers=["CPUExecutionProvider"],
                                              graph_optimization_level=level), name="onnxrt")
    feed = [{input_name: x.astype(np.float32)} for x in inputs]
    with torch.no_grad():
        results = Comparator.run([torch_runner, ort_runner], data_loader=feed)
    atol, rtol = TOLERANCES[layout.verify_key if int8 and layout is not None else precision]
    if int8 and base == "fp16":
        atol, rtol = atol + TOLERANCES["fp16"][0], rtol + TOLERANCES["fp16"][1]
    passed = bool(Comparator.compare_accuracy(results, compare_func=CompareFunc.simple(atol=atol, rtol=rtol)))
    ref = [np.asarray(r[output_name], dtype=np.float64) for r in _outputs(results, "pytorch", 0)]
    got = [np.asarray(r[output_name], dtype=np.float64) for r in _outputs(results, "onnxrt", 1)]
    max_abs, max_rel = _diffs(ref, got)
    out = VerifyResult(passed, precision, atol, rtol, max_abs, max_rel)
    if int8:
        sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
        eng = [np.asarray(sess.run(None, f)[0], dtype=np.float64) for f in feed]
        out.engine_max_abs_diff = _diffs(ref, eng)[0]
        out.engine_top1_agreement = float(np.mean([(a.argmax(-1) == b.argmax(-1)).mean() for a, b in zip(ref, eng)]))
    return out


def _outputs(results, name: str, index: int):
    return results[name] if name in results else results[index][1]


def _diffs(ref: list[np.ndarray], got: list[np.ndarray]) -> tuple[float, float]:
    max_abs = max_rel = 0.0
    for x, y in zip(ref, got):
        max_abs = max(max_abs, float(np.abs(x - y).max()))
        max_rel = max(max_rel, float((np.abs(x - y) / (np.abs(x) + 1e-6)).max()))
    return max_abs, max_rel


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
