"""From a fine-tuned student to deployable files: ONNX (verified), engine + metadata, side-by-side
latency with the teacher on the search's backend, Triton repository, report."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import torch

from .. import atomic
from ..config import RunConfig
from ..rundir import RunDir
from ..runfiles import default_engines_dir

def _sample_inputs(loader, batch: int = 1, n: int = 2, side: int | None = None) -> list[np.ndarray]:
    """`n` arrays of `batch` real images each (images reused in turn when the loader has fewer);
    side: the loader's images resized to it (`student_view`: a loader at the teacher's side)."""
    from ..student.finetune import student_view

    images = [student_view(x, side)[i:i + 1] for x, _ in loader for i in range(x.shape[0])][:batch * n]
    if not images:
        raise ValueError("no images to verify the export with")
    return [torch.cat([images[(k * batch + i) % len(images)] for i in range(batch)]).numpy() for k in range(n)]


def measure_side_by_side(backend, onnx_a: Path, onnx_b: Path, rounds: int = 3, max_seconds: float = 1.0):
    """Median latency of two ONNX models timed in alternating rounds (same process, same machine
    state), so the ratio is not skewed by drift."""
    return measure_prepared(backend, backend.prepare(str(onnx_a)), backend.prepare(str(onnx_b)), rounds, max_seconds)


def measure_prepared(backend, pa, pb, rounds: int = 3, max_seconds: float = 1.0):
    """`measure_side_by_side` for two things already prepared on `backend` (files or modules)."""
    from ..latency.paired import time_in_rounds

    a, b = time_in_rounds(backend, [pa, pb], rounds, max_seconds=max_seconds)
    return float(np.median(a)), float(np.median(b))


def target_fields(backend) -> dict:
    """The engine metadata's machine fields from the backend that timed it: GPU name, compute
    capability, TensorRT and CUDA versions for GPU targets; CPU model and ONNX Runtime version for
    CPU targets (the torch backend records its device and leaves the engine versions empty)."""
    dev = backend.device()
    if dev.kind == "cuda":
        out = {"gpu_name": dev.name, "compute_capability": str(dev.details.get("cc") or "") or None}
        for key, detail in (("driver_version", "driver"), ("torch_version", "torch")):
            if dev.details.get(detail) is not None:
                out[key] = str(dev.details[detail])
        if backend.name == "tensorrt":
            out["tensorrt_version"] = backend.version()
            props = getattr(getattr(backend, "cuda", None), "device_properties", None)
            runtime = props().get("runtime") if callable(props) else None
            out["cuda_version"] = str(runtime) if runtime is not None else None
        else:
            out["cuda_version"] = torch.version.cuda
        return out
    return {"cpu": dev.name, "ort_version": backend.version() if backend.name == "ort" else None}


def _say_if_cores_taken(backend) -> None:
    """One stderr line when other processes now hold cores the side-by-side timing's threads need:
    its speedup then reads low (docs/RESULTS.md, "Latencies on a busy machine")."""
    import sys

    from ..latency.device import free_cores

    threads = getattr(backend, "threads", None)
    free = free_cores() if threads else None
    if free is not None and free < threads:
        print(f"hant-trt: build: other processes keep {threads - free} of the {threads} cores this timing uses "
              "busy; the measured speedup may read low (build again when the machine is quieter)",
              file=sys.stderr)


def deploy(run: RunDir, cfg: RunConfig, student, teacher, solution: dict, spec, acc: dict, eval_loader,
           engines_dir: Path | None = None, calib=None, reference=None, eval_side: int | None = None) -> dict:
    """calib: the int8 parts' ranges (None: all fp32); reference: the model the ONNX must match
    (the student with its int8 parts simulated; default the student); eval_side: the student's side
    on `eval_loader`'s images (`BuildData.eval_side`). With `build.teacher_resolution` the teacher
    is timed at that side: the student at a smaller input is measured against the teacher as it was
    trained, which is what it replaces."""
    from ..latency.export import export_onnx
    from ..latency.backends import profile_backend, profiled_threads
    from ..latency.precision import base_precision, to_fp16
    from ..quant.layouts import layout_of_calib
    from ..quant.plan import export_with_plan
    from .metadata import EngineMetadata, io_from_onnx, optimize_for_ort, write_metadata
    from .report import report_data_from_run, write_report
    from .triton import DEFAULT_MAX_BATCH, export_triton
    from .verify import verify_onnx

    batch = cfg.profile.batch
    res = teacher.resolution
    shape = (batch, 3, res, res)
    t_res = cfg.build.teacher_resolution or res
    t_shape = (batch, 3, t_res, t_res)
    sdir = run.root / "student"
    base = base_precision(cfg.profile.precisions)       # fp16/bf16 on GPU targets: everything not int8
    backend = profile_backend(cfg.profile, profiled_threads(run))
    gpu = backend.device().kind == "cuda"
    if not gpu:
        _say_if_cores_taken(backend)
    # a GPU target is served by batching requests (Triton, TensorRT profiles): a symbolic batch there
    s_onnx = export_with_plan(student, shape, sdir / "student.onnx", calib, spec.choices, base, dynamic_batch=gpu)
    t_onnx = export_onnx(teacher.model, t_shape, sdir / "teacher.onnx", dynamic_batch=gpu)
    if base == "fp16":                                   # side by side at the same base precision
        t_onnx = to_fp16(t_onnx, sdir / "teacher.fp16.onnx")
    onnx_base = "fp16" if base == "fp16" else "fp32"
    ver = verify_onnx(reference if reference is not None else student, s_onnx, _sample_inputs(eval_loader, batch, side=eval_side),
                      "int8" if calib is not None else onnx_base, base=onnx_base,
                      layout=layout_of_calib(calib))
    if backend.name == "torch":                          # the modules themselves, as the profile timed parts
        t_s, s_s = measure_prepared(backend, backend.prepare_module(teacher.model, t_shape, base),
                                    backend.prepare_module(student, shape, base),
                                    max_seconds=max(1.0, cfg.profile.max_seconds))
    else:
        t_s, s_s = measure_side_by_side(backend, t_onnx, s_onnx, max_seconds=max(1.0, cfg.profile.max_seconds))
    name = cfg.build.engine_name or f"{Path(run.root).name}_{teacher.name}"
    edir = Path(engines_dir) if engines_dir else default_engines_dir()
    if backend.name == "tensorrt":
        from ..latency.backends.tensorrt import build_engine_file

        engine = build_engine_file(s_onnx, edir / f"{name}.plan")
        fmt = "tensorrt_plan"
    elif gpu:        # ORT's offline optimisation writes CPU-only fused ops: a GPU target ships the ONNX
        engine = atomic.write_with(edir / f"{name}.onnx", lambda tmp: shutil.copyfile(s_onnx, tmp))
        fmt = "onnxruntime_onnx"
    else:
        engine = optimize_for_ort(s_onnx, edir / f"{name}.ort.onnx")
        fmt = "onnxruntime_onnx"
    inputs, outputs = io_from_onnx(s_onnx)
    fixed = getattr(spec, "fixed_precision", None) or {}
    meta = EngineMetadata(
        name=name, format=fmt, file=str(engine),
        precision_plan=[{"slot": "stem", "op": "keep", "precision": fixed.get("stem", base)}]
        + [{"slot": f"{c.first}" if c.first == c.last else f"{c.first}-{c.last}", "op": c.op,
            "precision": c.precision} for c in spec.choices]
        + [{"slot": "head", "op": "keep", "precision": fixed.get("head", base)}],
        inputs=inputs, outputs=outputs, batch=batch,
        predicted_latency_s=solution.get("predicted_s"), measured_latency_s=s_s,
        accuracy=acc, teacher={"model": teacher.name, "measured_latency_s": t_s,
                                            **({"resolution": t_res} if t_res != res else {})},
        **target_fields(backend),
    )
    write_metadata(engine, meta)
    triton = export_triton(s_onnx, run.root / "triton", "hant_student",
                           max_batch_size=max(DEFAULT_MAX_BATCH, batch) if gpu else 0,
                           instance_kind="gpu" if gpu else None)
    report = write_report(run.root, report_data_from_run(run.root, t_s, s_s, acc, teacher.name))
    return {"backend": backend.name, "batch": batch, "teacher_latency_ms": t_s * 1e3,
            "student_latency_ms": s_s * 1e3, "speedup": t_s / s_s,
            "predicted_latency_ms": (solution.get("predicted_s") or 0) * 1e3,
            "verify": {"passed": ver.passed, "precision": ver.precision, "max_abs_diff": ver.max_abs_diff,
                       "atol": ver.atol, "engine_max_abs_diff": ver.engine_max_abs_diff,
                       "engine_top1_agreement": ver.engine_top1_agreement},
            "onnx": str(s_onnx), "engine": str(engine), "triton": str(triton), "report": str(report),
            "student_top1": acc.get("student_top1"), "teacher_top1": acc.get("teacher_top1"),
            "plain_int8_speedup": plain_int8_speedup(run.root, solution.get("device")),
            **({"teacher_resolution": t_res, "student_resolution": res} if t_res != res else {})}


def plain_int8_speedup(run_root: Path, device: str | None) -> float | None:
    """The whole teacher at int8 against the teacher, as the profile timed them on this machine
    (int8 profiles; None otherwise): what quantizing alone gives here, the figure a student's
    speedup is worth comparing with."""
    import json

    from ..runfiles import LATENCY_FIXED

    p = Path(run_root) / LATENCY_FIXED
    if not p.is_file():
        return None
    f = json.loads(p.read_text()).get("device", {}).get(device or "", {})
    t, t8 = f.get("teacher_s"), f.get("teacher_int8_s")
    return t / t8 if t and t8 else None
