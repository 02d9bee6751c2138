"""The student's per-layer int8 plan: the parts the search chose at int8 are calibrated on real run
images, simulated in PyTorch (`latency.fakequant`) and quantized in the ONNX (`latency.precision.
quantize_qdq`, Q/DQ on their layers only) from one `CalibResult`, so the model evaluated here is the
model exported. Parts at fp32 stay float in both. (On GPU targets TensorRT 11 would also need the
float parts converted to fp16 in the ONNX; the CPU targets here run them in fp32.)"""

from __future__ import annotations

import copy
import hashlib
import shutil
from pathlib import Path

import torch

from .. import atomic
from ..runfiles import INT8_CALIB
from ..latency.calibrate import CalibResult, calibrate_cached
from ..latency.fakequant import fake_quantize


def int8_parts(choices) -> list[int]:
    """Indices (in `student.parts`, i.e. slot order) of the choices at int8."""
    ordered = sorted(choices, key=lambda c: c.first)
    return [i for i, c in enumerate(ordered) if c.precision == "int8"]


def weights_digest(module: torch.nn.Module) -> str:
    """SHA-256 of a module's state (names, shapes, values): part of a calibration cache key."""
    h = hashlib.sha256()
    for k, v in sorted(module.state_dict().items()):
        h.update(k.encode())
        h.update(str(tuple(v.shape)).encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


FIXED_PARTS = ("stem", "head")


def calibrate_parts(student, parts: list[int], batches: list[torch.Tensor], method: str = "max",
                    cache_dir: Path | None = None, layout: str = "trt", fixed: tuple[str, ...] = ()) -> CalibResult:
    """Ranges of every Conv/Linear input inside `student.parts[i]` for i in `parts` (and inside the
    stem / head when named in `fixed`), keyed by their path in the student ("parts.3.conv_pw"),
    from the student itself run on `batches` (its int8 parts see their real inputs: the outputs of
    the student's own preceding parts)."""
    key = {"what": "student int8 parts", "weights": weights_digest(student), "parts": parts,
           "images": int(sum(b.shape[0] for b in batches)),
           "data": hashlib.sha256(b"".join(b.numpy().tobytes() for b in batches)).hexdigest()}
    full = calibrate_cached(key, student, batches, method=method, cache_dir=cache_dir)
    out = full.subset(tuple(f"parts.{i}." for i in parts) + tuple(f"{name}." for name in fixed))
    out.extra["layout"] = layout            # travels with the ranges: simulation, export, int8_calib.json
    out.extra["input_shape"] = [1, *batches[0].shape[1:]]
    return out


def part_calib(calib: CalibResult, i: int) -> CalibResult:
    """The ranges of part `i`, keyed by path within that part (what `fake_quantize` expects)."""
    return calib.subset((f"parts.{i}.",), strip=True)


def simulate_int8(student, parts: list[int], calib: CalibResult):
    """A copy of `student` whose int8 parts run simulated int8 (BN folded, as exported). The "ort"
    layout (`calib.extra["layout"]`) is planned on the whole student, as its ONNX is written: a part
    whose input is the previous int8 part's quantized output reuses that rounding."""
    if calib.extra.get("layout", "trt") == "ort":
        return fake_quantize(student, calib, layout="ort", input_shape=tuple(calib.extra["input_shape"]),
                             only_calibrated=True)
    sim = copy.deepcopy(student).eval()
    for i in parts:
        sim.parts[i] = fake_quantize(student.parts[i], part_calib(calib, i))
    for name in int8_fixed(calib):
        setattr(sim, name, fake_quantize(getattr(student, name), calib.subset((f"{name}.",), strip=True)))
    return sim


def fixed_int8(precisions: dict) -> tuple[str, ...]:
    """The stem / head chosen at int8, from {"stem": precision, ...} (solution.json's fixed_parts)."""
    return tuple(n for n in FIXED_PARTS if precisions.get(n) == "int8")


def int8_fixed(calib: CalibResult | None) -> tuple[str, ...]:
    """Which of the stem and head the calibration covers (the search chose them at int8)."""
    if calib is None:
        return ()
    return tuple(n for n in FIXED_PARTS if any(k.startswith(f"{n}.") for k in calib.amax))


def load_deployed(folder: Path):
    """(model, spec) of a saved student as deployed: its int8 parts simulated from the ranges the
    build saved (`INT8_CALIB`), the plain student when it has none."""
    import json

    from .assemble import load_student

    student, spec = load_student(folder)
    path = Path(folder) / INT8_CALIB
    if path.exists():
        calib = CalibResult.from_json(json.loads(path.read_text()))
        student = simulate_int8(student, int8_parts(spec.choices), calib)
    return student, spec


def part_of_node(node_name: str) -> int | None:
    """The student part an exported node belongs to ("/parts/parts.3/conv_pw/Conv" → 3), or None
    for the stem and head."""
    import re

    from ..latency.precision import collapse_scope, node_scope

    m = re.match(r"/parts\.(\d+)(/|$)", collapse_scope(node_scope(node_name)) + "/")
    return int(m.group(1)) if m else None


def export_with_plan(student, shape: tuple, dst: Path, calib: CalibResult | None, choices=None,
                     base: str = "fp32", dynamic_batch: bool = False) -> Path:
    """The student's ONNX with its per-layer precision plan: Q/DQ on the calibrated (int8) layers
    when `calib` is given; with base "fp16" (GPU targets) every part chosen at fp16, the stem and
    the head converted to fp16, the parts chosen at fp32 or int8 left in fp32 around their Q/DQ."""
    import tempfile

    from ..latency.export import export_onnx
    from ..latency.precision import quantize_qdq, to_fp16

    if base == "bf16":      # ONNX Runtime and TensorRT take fp32 for it; PyTorch serves it in bf16
        base = "fp32"
    if base not in ("fp32", "fp16"):
        raise ValueError(f"base precision must be fp32, fp16 or bf16, not {base!r}")
    qdq = calib is not None and bool(calib.amax)
    if not qdq and base == "fp32":
        return export_onnx(student, shape, dst, dynamic_batch=dynamic_batch)
    with tempfile.TemporaryDirectory() as tmp:
        out = export_onnx(student, shape, Path(tmp) / "fp32.onnx", dynamic_batch=dynamic_batch)
        if qdq and calib.extra.get("layout", "trt") == "ort":
            from ..latency.int8_ort import write_ort_qdq

            out = write_ort_qdq(out, Path(tmp) / "qdq.onnx", calib, only_calibrated=True)
        elif qdq:
            out = quantize_qdq(out, Path(tmp) / "qdq.onnx", calib, only_calibrated=True)
        if base == "fp16":
            ordered = sorted(choices or [], key=lambda c: c.first)
            stay = {i for i, c in enumerate(ordered) if c.precision != "fp16"}
            if qdq and int8_fixed(calib):
                stay.add(None)          # an int8 stem or head: the nodes outside the parts stay fp32
            out = to_fp16(out, Path(tmp) / "fp16.onnx", keep_fp32=lambda n: part_of_node(n) in stay)
        return atomic.write_with(Path(dst), lambda t: shutil.copyfile(out, t))
