"""Validate the TensorRT backend end to end on a machine with an NVIDIA GPU and TensorRT 10/11.

    pip install -e '.[tensorrt]'
    python tools/validate_tensorrt.py [--workdir /tmp/hant-trt-validate]

Builds a small conv net and one EfficientNet-Lite0 block through our ONNX export (fp32, fp16,
int8 Q/DQ), builds engines with the timing cache, times them with CUDA events, prints the
trtexec-like summary and what it found (TensorRT version, API generation, GPU, pass/fail per step).
Never run by this project's CI (no GPU there).
"""

from __future__ import annotations

import argparse
import sys
import traceback
from pathlib import Path


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workdir", default="/tmp/hant-trt-validate")
    args = ap.parse_args()
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    results = []

    def step(name, fn):
        try:
            out = fn()
            results.append((name, "ok", out))
            shown = (f"median {out.median_s * 1e3:.4f} ms over {out.count} iterations"
                     if hasattr(out, "median_s") and hasattr(out, "count") else out)
            print(f"[ok]   {name}: {shown}")
            return out
        except Exception as exc:  # report and continue
            results.append((name, "FAIL", repr(exc)))
            print(f"[FAIL] {name}: {exc}")
            traceback.print_exc()
            return None

    import numpy as np

    from hant_trt.latency.backends.tensorrt import TensorRTBackend, build_engine_file
    from hant_trt.latency.bench import BenchResult, format_summary
    from hant_trt.latency.timing import median
    from hant_trt.latency.export import export_onnx
    from hant_trt.latency.precision import to_fp16
    from hant_trt.quant.layouts import quantize_int8
    from hant_trt.teacher.decompose import decompose
    from hant_trt.teacher.load import load_teacher

    be = step("import tensorrt + cuda-python", lambda: TensorRTBackend(timing_cache=work / "timing.cache"))
    if be is None:
        return 1
    step("versions", lambda: f"TensorRT {be.version()}, API generation {be.major}, "
                             f"strongly-typed flag {'present' if be.network_flags() else 'absent'}")
    step("device", lambda: be.device().fingerprint)
    step("cuda runtime", lambda: type(be.cuda).__name__)
    t = load_teacher()
    d = decompose(t.model, 224)
    block = d.blocks[5]
    shape = (1, *d.slots[5].in_shape)
    fp32 = step("export fp32", lambda: export_onnx(block, shape, work / "b.fp32.onnx"))
    fp16 = step("convert fp16", lambda: to_fp16(fp32, work / "b.fp16.onnx"))
    int8 = step("quantize int8 (Q/DQ)", lambda: quantize_int8(block, shape, work / "b.int8.onnx"))
    for name, path in (("fp32", fp32), ("fp16", fp16), ("int8", int8)):
        if path is None:
            continue
        plan = step(f"build {name} engine", lambda p=path, n=name: build_engine_file(p, work / f"b.{n}.plan", be))
        if plan is None:
            continue
        timing = step(f"time {name}", lambda p=path: be.time(be.prepare(p), max_seconds=2.0))
        if timing is not None:
            print(format_summary(BenchResult(str(path), "tensorrt", timing)))
            step(f"{name}: CUDA graph used / device-timed", lambda t=timing: (t.cuda_graph, t.device_timed))
    if fp32 is not None:
        def plan_roundtrip():
            # a plan with metadata is accepted on this GPU; outputs are finite; copies timed (bench mode)
            from hant_trt.deploy.metadata import EngineMetadata, write_metadata

            plan = work / "b.fp32.plan"
            dev = be.device()
            write_metadata(plan, EngineMetadata(name="b", format="tensorrt_plan", file=str(plan),
                                                tensorrt_version=be.version(), gpu_name=dev.name,
                                                compute_capability=dev.details["cc"]))
            be2 = TensorRTBackend(timing_cache=work / "timing.cache", data_transfers=True)
            prepared = be2.prepare(plan)
            outs = prepared.outputs()
            t2 = be2.time(prepared, max_seconds=1.0)
            assert all(np.isfinite(v).all() for v in outs.values()), "non-finite outputs"
            return (f"H2D median {median(sorted(t2.h2d_s)) * 1e3:.4f} ms, "
                    f"compute median {t2.gpu_compute.median_s * 1e3:.4f} ms")

        step("plan + metadata: load, outputs, copies timed", plan_roundtrip)
    whole = step("export teacher", lambda: export_onnx(t.model, (1, 3, 224, 224), work / "teacher.onnx"))
    if whole is not None:
        step("teacher engine + timing", lambda: be.time(be.prepare(whole), max_seconds=3.0).median_s)
    failed = [r for r in results if r[1] != "ok"]
    print(f"\n{len(results) - len(failed)} steps passed, {len(failed)} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
