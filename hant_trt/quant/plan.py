"""The student's per-layer int8 plan: the parts the search chose at int8 are calibrated on real run
images, simulated in PyTorch and quantized in the ONNX (Q/DQ on their layers only) by one
`QdqLayout` from one `CalibResult`, so the model evaluated here is the model exported. Parts at fp32 stay float in both. (On GPU targets TensorRT 11 would also need the
float parts converted to fp16 in the ONNX; the CPU targets here run them in fp32.)"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import torch

from .. import atomic
from .calibrate import CalibResult, calibrate_cached
from .layouts import DEFAULT, QdqLayout, layout_of_calib
from .parts import int8_fixed


def weights_digest(module: torch.nn.Module) -> str:
    """SHA-256 of a module's state (names, shapes, values): part of a calibration cache key."""
    h = hashlib.sha256()
    for k, v in sorted(module.state_dict().items()):
        h.update(k.encode())
        h.update(str(tuple(v.shape)).encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def calibrate_parts(student, parts: list[int], batches: list[torch.Tensor], method: str = "max",
                    cache_dir: Path | None = None, layout: QdqLayout = DEFAULT, fixed: tuple[str, ...] = ()) -> CalibResult:
    """Ranges of every Conv/Linear input inside `student.parts[i]` for i in `parts` (and inside the
    stem / head when named in `fixed`), keyed by their path in the student ("parts.3.conv_pw"),
    from the student itself run on `batches` (its int8 parts see their real inputs: the outputs of
    the student's own preceding parts)."""
    key = {"what": "student int8 parts", "weights": weights_digest(student), "parts": parts,
           "images": int(sum(b.shape[0] for b in batches)),
           "data": hashlib.sha256(b"".join(b.numpy().tobytes() for b in batches)).hexdigest()}
    full = calibrate_cached(key, student, batches, method=method, cache_dir=cache_dir)
    out = full.subset(tuple(f"parts.{i}." for i in parts) + tuple(f"{name}." for name in fixed))
    out.extra["layout"] = layout.name       # travels with the ranges: simulation, export, int8_calib.json
    out.extra["input_shape"] = [1, *batches[0].shape[1:]]
    return out


def simulate_int8(student, parts: list[int], calib: CalibResult):
    """A copy of `student` whose int8 parts run simulated int8 (BN folded, as exported), in the
    layout the ranges were calibrated for."""
    return layout_of_calib(calib).simulate_student(student, parts, calib)


def part_of_node(node_name: str) -> int | None:
    """The student part an exported node belongs to ("/parts/parts.3/conv_pw/Conv" → 3), or None
    for the stem and head."""
    import re

    from ..latency.export import node_scope
    from .qdq_trt import collapse_scope

    m = re.match(r"/parts\.(\d+)(/|$)", collapse_scope(node_scope(node_name)) + "/")
    return int(m.group(1)) if m else None


def export_with_plan(student, shape: tuple, dst: Path, calib: CalibResult | None, choices=None,
                     base: str = "fp32", dynamic_batch: bool = False) -> Path:
    """The student's ONNX with its per-layer precision plan: Q/DQ on the calibrated (int8) layers
    when `calib` is given; with base "fp16" (GPU targets) every part chosen at fp16, the stem and
    the head converted to fp16, the parts chosen at fp32 or int8 left in fp32 around their Q/DQ."""
    import tempfile

    from ..latency.export import export_onnx
    from ..latency.precision import to_fp16

    if base == "bf16":      # ONNX Runtime and TensorRT take fp32 for it; PyTorch serves it in bf16
        base = "fp32"
    if base not in ("fp32", "fp16"):
        raise ValueError(f"base precision must be fp32, fp16 or bf16, not {base!r}")
    qdq = calib is not None and bool(calib.amax)
    if not qdq and base == "fp32":
        return export_onnx(student, shape, dst, dynamic_batch=dynamic_batch)
    with tempfile.TemporaryDirectory() as tmp:
        out = export_onnx(student, shape, Path(tmp) / "fp32.onnx", dynamic_batch=dynamic_batch)
        if qdq:
            out = layout_of_calib(calib).write_onnx(out, Path(tmp) / "qdq.onnx", calib, only_calibrated=True)
        if base == "fp16":
            ordered = sorted(choices or [], key=lambda c: c.first)
            stay = {i for i, c in enumerate(ordered) if c.precision != "fp16"}
            if qdq and int8_fixed(calib):
                stay.add(None)          # an int8 stem or head: the nodes outside the parts stay fp32
            out = to_fp16(out, Path(tmp) / "fp16.onnx", keep_fp32=lambda n: part_of_node(n) in stay)
        return atomic.write_with(Path(dst), lambda t: shutil.copyfile(out, t))
