"""The int8 Q/DQ layouts, one object each: how its ONNX is written, how PyTorch simulates it, and
the tags it leaves in the latency table, file names and verification. A new layout is one new
subclass here, registered in `LAYOUTS`; callers ask the object and never compare layout names.

`profile.int8_layout` ("auto" | a registered name) stays the user's setting; `layout_for` resolves it.
Importing this module loads no torch (the search resolves layouts too); the work is imported lazily.
"""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable

from ..errors import UserError
from .parts import int8_fixed, part_calib

if TYPE_CHECKING:
    from .calibrate import CalibResult


class QdqLayout:
    """One way of writing int8 into an ONNX graph."""

    name: str
    table_tag: str        # the latency table's precision key of its int8 rows
    file_tag: str         # the precision part of its ONNX file names
    verify_key: str       # its entry in `deploy.verify.TOLERANCES`
    verify_tolerance: tuple[float, float]   # (atol, rtol) on logits: its Q/DQ graph, unoptimised, vs its simulation
    in_fingerprint: bool  # named in the score fingerprint (the first layout's runs kept theirs)

    def write_onnx(self, src: str | Path, dst: str | Path, calib: CalibResult, per_channel: bool = True,
                   only_calibrated: bool = False) -> Path:
        """Insert this layout's Q/DQ into the fp32 ONNX `src` (exported from the calibrated module)."""
        raise NotImplementedError

    def simulate(self, module, calib: CalibResult, per_channel: bool = True, input_shape=None,
                 only_calibrated: bool = False):
        """A BN-folded eval copy of `module` running this layout's int8 arithmetic in PyTorch."""
        raise NotImplementedError

    def simulate_student(self, student, parts: list[int], calib: CalibResult):
        """A copy of `student` whose calibrated parts (and stem / head) run simulated int8."""
        raise NotImplementedError

    def table_precision(self, precision: str) -> str:
        return self.table_tag if precision == "int8" else precision

    def file_precision(self, precision: str) -> str:
        return self.file_tag if precision == "int8" else precision

    def __repr__(self) -> str:
        return f"<QdqLayout {self.name}>"


class TrtLayout(QdqLayout):
    """TensorRT's explicit quantization: symmetric int8, Q/DQ on layer inputs only (`qdq_trt`)."""

    name, table_tag, file_tag, verify_key, in_fingerprint = "trt", "int8", "int8", "int8", False
    # equal within 1e-5 except where a value sits on a rounding boundary and the two convolution
    # algorithms round it to neighbouring int8 steps
    verify_tolerance = (0.05, 5e-2)

    def write_onnx(self, src, dst, calib, per_channel=True, only_calibrated=False) -> Path:
        from .qdq_trt import quantize_qdq

        return quantize_qdq(src, dst, calib, per_channel=per_channel, only_calibrated=only_calibrated)

    def simulate(self, module, calib, per_channel=True, input_shape=None, only_calibrated=False):
        from .fakequant import fake_quantize

        return fake_quantize(module, calib, per_channel)

    def simulate_student(self, student, parts, calib):
        # each part on its own: with inputs-only Q/DQ no rounding crosses a part boundary
        sim = copy.deepcopy(student).eval()
        for i in parts:
            sim.parts[i] = self.simulate(student.parts[i], part_calib(calib, i))
        for name in int8_fixed(calib):
            setattr(sim, name, self.simulate(getattr(student, name), calib.subset((f"{name}.",), strip=True)))
        return sim


class OrtLayout(QdqLayout):
    """What ONNX Runtime's CPU kernels fuse into QLinearConv: uint8 activations, outputs quantized
    too, int32 biases (`qdq_ort`)."""

    name, table_tag, file_tag, verify_key, in_fingerprint = "ort", "int8:ort", "int8-ort", "int8-ort", True
    # every int8 layer's output is quantized too: a boundary flip there is a whole uint8 step (up to
    # ~0.3 on wide feature maps) that travels on; whole Lite0 in int8 on 100 dev photos: max 0.41,
    # mean 0.036 on logits, top-1 98 % equal (benchmarks/bench_int8_ort.py)
    verify_tolerance = (0.75, 0.1)

    def write_onnx(self, src, dst, calib, per_channel=True, only_calibrated=False) -> Path:
        from .qdq_ort import write_ort_qdq

        return write_ort_qdq(src, dst, calib, per_channel=per_channel, only_calibrated=only_calibrated)

    def simulate(self, module, calib, per_channel=True, input_shape=None, only_calibrated=False):
        from .qdq_ort import fake_quantize_ort

        return fake_quantize_ort(module, calib, per_channel, input_shape, only_calibrated)

    def simulate_student(self, student, parts, calib):
        # planned on the whole student, as its ONNX is written: a part whose input is the previous
        # int8 part's quantized output reuses that rounding
        return self.simulate(student, calib, input_shape=tuple(calib.extra["input_shape"]), only_calibrated=True)


class OrtIntegerAddLayout(OrtLayout):
    """The "ort" layout plus integer residual Adds and global pooling (QLinearAdd,
    QLinearGlobalAveragePool): ONNX Runtime's CPU graph then stays in its NHWC integer kernels from
    the first int8 conv to the classifier (`qdq_ort.plan_integer_adds`)."""

    name, table_tag, file_tag, verify_key = "ort-qadd", "int8:ort-qadd", "int8-ort-qadd", "int8-ort-qadd"

    def write_onnx(self, src, dst, calib, per_channel=True, only_calibrated=False) -> Path:
        from .qdq_ort import write_ort_qdq

        return write_ort_qdq(src, dst, calib, per_channel=per_channel, only_calibrated=only_calibrated,
                             integer_adds=True)

    def simulate(self, module, calib, per_channel=True, input_shape=None, only_calibrated=False):
        from .qdq_ort import fake_quantize_ort

        return fake_quantize_ort(module, calib, per_channel, input_shape, only_calibrated, integer_adds=True)


LAYOUTS: dict[str, QdqLayout] = {lay.name: lay for lay in (TrtLayout(), OrtLayout(), OrtIntegerAddLayout())}
DEFAULT = LAYOUTS["trt"]


def simulated_int8(module, inputs: list, method: str = "max", layout: QdqLayout | None = None):
    """`module` in `layout`'s simulated int8, its ranges calibrated (`calibrate`, `method`) on
    `inputs`, real input batches of the module: an int8 part as scoring and the composed-student
    evaluation run it."""
    from .calibrate import calibrate

    return (layout or DEFAULT).simulate(module, calibrate(module, inputs, method=method),
                                        input_shape=(1, *inputs[0].shape[1:]))


def get_layout(name: str) -> QdqLayout:
    try:
        return LAYOUTS[name]
    except KeyError:
        raise UserError(f"unknown int8 layout '{name}' (known: {', '.join(LAYOUTS)})") from None


def layout_for(profile) -> QdqLayout:
    """The layout int8 parts use: `profile.int8_layout`, "auto" meaning "ort-qadd" for the ONNX
    Runtime backend on a CPU-style plan (its CPU kernels fuse only the "ort" layouts; "ort-qadd"
    keeps Adds and pooling integer too) and "trt" otherwise (TensorRT; a plan with fp16 is a GPU
    target, whose ONNX must build on TensorRT)."""
    name = profile.int8_layout
    if name == "auto":
        return LAYOUTS["ort-qadd" if profile.backend == "ort" and "fp16" not in profile.precisions else "trt"]
    if name not in LAYOUTS:
        raise UserError(f"profile.int8_layout must be auto, {', '.join(LAYOUTS)}, not '{name}'")
    return LAYOUTS[name]


def layout_of_calib(calib: CalibResult | None) -> QdqLayout:
    """The layout a saved calibration was made for (its ranges carry the name)."""
    return get_layout(calib.extra.get("layout", DEFAULT.name)) if calib is not None else DEFAULT


def quantize_int8(module, input_shape: tuple[int, int, int, int], dst: str | Path,
                  calib: Callable[[], Iterable] | CalibResult | None = None, method: str = "max",
                  per_channel: bool = True, layout: QdqLayout = DEFAULT) -> Path:
    """Export `module` and write its int8 Q/DQ ONNX in `layout` to `dst`; returns `dst`.

    calib: a CalibResult (from `calibrate` / `calibrate_cached` on this module), or a zero-argument
        callable yielding real input batches (tensors or arrays) calibrated here with `method`; None
        calibrates on 4 seeded random batches — only good enough for timing, never for accuracy.
    """
    import torch

    from ..latency.export import export_onnx
    from .calibrate import CalibResult, calibrate

    if isinstance(calib, CalibResult):
        res = calib
    else:
        if calib is None:
            gen = torch.Generator().manual_seed(0)
            batches = [torch.randn(*input_shape, generator=gen) for _ in range(4)]
        else:
            batches = calib()
        res = calibrate(module, batches, method=method)
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = export_onnx(module, input_shape, Path(tmp) / "fp32.onnx")
        return layout.write_onnx(fp32, dst, res, per_channel=per_channel)
