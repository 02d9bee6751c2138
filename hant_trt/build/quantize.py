"""The student's per-layer int8 plan: the parts the search chose at int8 are calibrated on real run
images, simulated in PyTorch (`latency.fakequant`) and quantized in the ONNX (`latency.precision.
quantize_qdq`, Q/DQ on their layers only) from one `CalibResult`, so the model evaluated here is the
model exported. Parts at fp32 stay float in both. (On GPU targets TensorRT 11 would also need the
float parts converted to fp16 in the ONNX; the CPU targets here run them in fp32.)"""

from __future__ import annotations

import copy
import hashlib
from pathlib import Path

import torch

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


def calibrate_parts(student, parts: list[int], batches: list[torch.Tensor], method: str = "max",
                    cache_dir: Path | None = None) -> CalibResult:
    """Ranges of every Conv/Linear input inside `student.parts[i]` for i in `parts`, keyed by their
    path in the student ("parts.3.conv_pw"), from the student itself run on `batches` (its int8
    parts see their real inputs: the outputs of the student's own preceding parts)."""
    key = {"what": "student int8 parts", "weights": weights_digest(student), "parts": parts,
           "images": int(sum(b.shape[0] for b in batches)),
           "data": hashlib.sha256(b"".join(b.numpy().tobytes() for b in batches)).hexdigest()}
    full = calibrate_cached(key, student, batches, method=method, cache_dir=cache_dir)
    return _subset(full, tuple(f"parts.{i}." for i in parts))


def part_calib(calib: CalibResult, i: int) -> CalibResult:
    """The ranges of part `i`, keyed by path within that part (what `fake_quantize` expects)."""
    return _subset(calib, (f"parts.{i}.",), strip=True)


def _subset(calib: CalibResult, prefixes: tuple[str, ...], strip: bool = False) -> CalibResult:
    """`calib` restricted to the paths under `prefixes` (with the prefix removed when `strip`)."""
    amax = {(k[len(p):] if strip else k): v for k, v in calib.amax.items() for p in prefixes if k.startswith(p)}
    return CalibResult(amax=amax, method=calib.method, percentile=calib.percentile, num_bins=calib.num_bins,
                       batches=calib.batches, samples=calib.samples)


def simulate_int8(student, parts: list[int], calib: CalibResult):
    """A copy of `student` whose int8 parts run simulated int8 (BN folded, as exported)."""
    sim = copy.deepcopy(student).eval()
    for i in parts:
        sim.parts[i] = fake_quantize(student.parts[i], part_calib(calib, i))
    return sim


INT8_CALIB = "int8_calib.json"      # beside a saved student: the ranges of its int8 parts


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


def export_with_plan(student, shape: tuple, dst: Path, calib: CalibResult | None) -> Path:
    """The student's ONNX: fp32, with Q/DQ on the calibrated (int8) layers when `calib` is given."""
    import tempfile

    from ..latency.export import export_onnx
    from ..latency.precision import quantize_qdq

    if calib is None or not calib.amax:
        return export_onnx(student, shape, dst)
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = export_onnx(student, shape, Path(tmp) / "fp32.onnx")
        return quantize_qdq(fp32, dst, calib, only_calibrated=True)
