"""The whole teacher in int8 on ONNX Runtime CPU, every Q/DQ layout, beside fp32 in one run.

    .venv/bin/python benchmarks/bench_int8_ort.py [--data ../shared/data/imagenet-sample/dev] [--rounds 5]

Calibrates on 32 un-augmented images of dev's training part (the run's 80/20 split, seed 0),
reports agreement / KL / top-1 against the fp32 teacher on dev's 100-image eval part (never
holdout) for the PyTorch simulation and for ORT's fused engine, and the latency of each graph timed
in alternating rounds with fp32 (ratios of medians); then the "ort" and "ort-qadd" graphs timed
against each other in alternating rounds (what the integer Adds and pooling buy). For each layout
it also prints the op counts of ORT's optimised graph (what ORT fused).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch

from hant_trt.deploy.deploy import measure_side_by_side
from hant_trt.data import FolderDataset, eval_transform, scan_folder, split_items
from hant_trt.latency.backends.ort import OrtBackend
from hant_trt.quant.calibrate import calibrate
from hant_trt.latency.export import export_onnx
from hant_trt.quant.layouts import LAYOUTS, quantize_int8
from hant_trt.teacher.load import load_teacher


def kl(ref: torch.Tensor, got: torch.Tensor) -> float:
    return float(torch.nn.functional.kl_div(torch.log_softmax(got, 1), torch.log_softmax(ref, 1),
                                            log_target=True, reduction="batchmean"))


def _unoptimised(path):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def optimised_ops(path) -> str:
    """Op counts of the graph ONNX Runtime runs for `path` (all optimisations on)."""
    from collections import Counter

    import onnx
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        so = ort.SessionOptions()
        so.optimized_model_filepath = str(Path(tmp) / "opt.onnx")
        ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        ops = Counter(n.op_type for n in onnx.load(so.optimized_model_filepath).graph.node)
    return ", ".join(f"{k} {v}" for k, v in sorted(ops.items(), key=lambda kv: -kv[1]))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared/data/imagenet-sample/dev"))
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--calib-images", type=int, default=32)
    a = ap.parse_args()
    t = load_teacher("efficientnet_lite0")
    m = t.model.eval()
    items, _, _ = scan_folder(a.data)
    tr, ev = split_items(items, 0.2, 0)
    tf = eval_transform(t.data_config)
    xc = torch.stack([FolderDataset(tr[:a.calib_images], tf)[i][0] for i in range(a.calib_images)])
    xe = torch.stack([FolderDataset(ev, tf)[i][0] for i in range(len(ev))])
    labels = np.array([it.label for it in ev])
    calib = calibrate(m, [xc[i:i + 8] for i in range(0, len(xc), 8)])
    with torch.no_grad():
        ref = m(xe)
    shape = (1, 3, t.resolution, t.resolution)
    backend = OrtBackend(threads=2)
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = export_onnx(m, shape, Path(tmp) / "fp32.onnx")
        print(f"{len(ev)} eval images, teacher top-1 {100 * (ref.argmax(1).numpy() == labels).mean():.1f} %")
        graphs = {}
        for layout in LAYOUTS.values():
            q = graphs[layout.name] = quantize_int8(m, shape, Path(tmp) / f"{layout.name}.onnx", calib, layout=layout)
            with torch.no_grad():
                sim = layout.simulate(m, calib, input_shape=shape)(xe)
            sess = backend.session(q)
            eng = torch.from_numpy(np.concatenate([sess.run(None, {"input": xe[i:i + 1].numpy()})[0]
                                                   for i in range(len(xe))]))
            raw = _unoptimised(q)
            written = torch.from_numpy(np.concatenate([raw.run(None, {"input": xe[i:i + 1].numpy()})[0]
                                                       for i in range(len(xe))]))
            d = (written - sim).abs()
            print(f"int8 {layout.name} layout, Q/DQ as written vs simulated: max {float(d.max()):.3f}, mean "
                  f"{float(d.mean()):.4f}, top-1 equal {100 * (written.argmax(1) == sim.argmax(1)).float().mean():.0f} %")
            a_ms, b_ms = measure_side_by_side(backend, fp32, q, rounds=a.rounds)
            for name, out in (("simulated", sim), ("ORT engine", eng)):
                agree = 100 * (out.argmax(1) == ref.argmax(1)).float().mean()
                top1 = 100 * (out.argmax(1).numpy() == labels).mean()
                print(f"int8 {layout.name} layout, {name:10s}: agreement {agree:5.1f} %, KL {kl(ref, out):.4f}, top-1 {top1:.1f} %")
            print(f"int8 {layout.name} layout: fp32 {a_ms * 1e3:.3f} ms, int8 {b_ms * 1e3:.3f} ms → {a_ms / b_ms:.2f}x")
            print(f"int8 {layout.name} layout, ORT's optimised graph: {optimised_ops(q)}")
        a_ms, b_ms = measure_side_by_side(backend, graphs["ort"], graphs["ort-qadd"], rounds=a.rounds)
        print(f"ort {a_ms * 1e3:.3f} ms vs ort-qadd {b_ms * 1e3:.3f} ms, side by side → ort-qadd {a_ms / b_ms:.3f}x faster")


if __name__ == "__main__":
    main()
