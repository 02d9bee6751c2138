"""Precision lives in the ONNX (TensorRT 11 has no precision flags and no implicit calibration):

- fp16: the graph converted to float16 (inputs/outputs kept fp32 with Casts);
- int8: explicit QuantizeLinear/DequantizeLinear — symmetric (zero point 0), per-channel weights,
  per-tensor activations — with ranges calibrated on real activations (max, percentile or
  entropy), the layout TensorRT's explicit quantization builds and ONNX Runtime runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from .. import atomic

CALIB_METHODS = ("max", "percentile", "entropy")


def to_fp16(src: str | Path, dst: str | Path, keep_io_types: bool = True) -> Path:
    import onnx
    from onnxconverter_common import float16

    model = onnx.load(str(src))
    half = float16.convert_float_to_float16(model, keep_io_types=keep_io_types)
    onnx.checker.check_model(half)
    return atomic.write_with(Path(dst), lambda tmp: onnx.save(half, tmp))


def quantize_qdq(src: str | Path, dst: str | Path, batches: Iterable[np.ndarray], method: str = "max",
                 percentile: float = 99.99, input_name: str = "input") -> Path:
    """Insert Q/DQ into `src` with activation ranges from `batches` (real inputs of that model)."""
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)

    if method not in CALIB_METHODS:
        from ..errors import UserError

        raise UserError(f"unknown calibration method '{method}' (known: {', '.join(CALIB_METHODS)})")
    data = [np.ascontiguousarray(b, dtype=np.float32) for b in batches]

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(data)

        def get_next(self):
            x = next(self.it, None)
            return None if x is None else {input_name: x}

    cm = {"max": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
          "entropy": CalibrationMethod.Entropy}[method]
    extra = {"ActivationSymmetric": True, "WeightSymmetric": True, "CalibPercentile": percentile,
             "QuantizeBias": False}

    def write(tmp: str) -> None:
        quantize_static(str(src), tmp, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                        op_types_to_quantize=["Conv", "Gemm", "MatMul"], calibrate_method=cm,
                        extra_options=extra)

    return atomic.write_with(Path(dst), write)


def quantize_int8(module, input_shape, dst: str | Path, calib: Callable | None = None, method: str = "max") -> Path:
    """Export `module` and quantize it; `calib()` yields real input batches (random ones if None,
    which is only good enough for timing)."""
    import tempfile

    from .export import export_onnx

    with tempfile.TemporaryDirectory() as tmp:
        fp32 = export_onnx(module, input_shape, Path(tmp) / "fp32.onnx")
        batches = list(calib()) if calib else [np.random.default_rng(i).standard_normal(input_shape)
                                                .astype(np.float32) for i in range(4)]
        return quantize_qdq(fp32, dst, batches, method)
