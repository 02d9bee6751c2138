"""Probe: an exact rewrite of a 3x3 stride-2 stem as SpaceToDepth + a 2x2 conv, at int8 on ORT CPU.

    .venv/bin/python benchmarks/probe_stem_s2d.py [--resolution 240] [--rounds 9]

Why: in the int8 teacher the stem's convolution is the slowest node (Lite1: 282 us of 4.5 ms,
`profile_ort_nodes.py`): with 3 input channels its im2col rows are 27 long and the int8 kernel
runs at a third of the MAC rate of the 1x1 convs after it. Over a 2x2 space-to-depth grid the
same convolution is a 2x2 conv on 12 channels, padded at the top and left only (the same numbers
up to float rounding). Both are built with random weights as ONNX (Conv + ReLU6 as Clip),
quantised by ORT's `quantize_static` (QDQ, per-channel) and timed in the same rounds; printed:
the largest fp32 difference and the medians.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# kernel row/column u of the 3x3 stride-2 conv (pad 1) → (which 2x2 block: 0 = the one above/left,
# its row/column inside the block)
_TAPS = {0: (0, 1), 1: (1, 0), 2: (1, 1)}


def s2d_weights(w: np.ndarray) -> np.ndarray:
    """[O, C, 3, 3] of a stride-2 pad-1 conv → [O, 4C, 2, 2] over ONNX SpaceToDepth(2) channels
    ((a * 2 + b) * C + c for the pixel (a, b) of each block)."""
    o, c = w.shape[:2]
    w2 = np.zeros((o, 2, 2, c, 2, 2), np.float32)
    for u in range(3):
        for v in range(3):
            (ph, a), (pw, b) = _TAPS[u], _TAPS[v]
            w2[:, a, b, :, ph, pw] = w[:, :, u, v]
    return w2.reshape(o, 4 * c, 2, 2)


def stem_model(w: np.ndarray, bias: np.ndarray, res: int, s2d: bool):
    from onnx import TensorProto, helper, numpy_helper

    inits = [numpy_helper.from_array(bias, "b"), numpy_helper.from_array(np.array(0, np.float32), "lo"),
             numpy_helper.from_array(np.array(6, np.float32), "hi")]
    if s2d:
        inits.append(numpy_helper.from_array(s2d_weights(w), "w"))
        nodes = [helper.make_node("SpaceToDepth", ["x"], ["s"], blocksize=2),
                 helper.make_node("Conv", ["s", "w", "b"], ["c"], kernel_shape=[2, 2], pads=[1, 1, 0, 0])]
    else:
        inits.append(numpy_helper.from_array(w, "w"))
        nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], kernel_shape=[3, 3], strides=[2, 2],
                                  pads=[1, 1, 1, 1])]
    nodes.append(helper.make_node("Clip", ["c", "lo", "hi"], ["y"]))
    graph = helper.make_graph(nodes, "stem", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, res, res])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, w.shape[0], res // 2, res // 2])],
                              inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--resolution", type=int, default=240)
    ap.add_argument("--rounds", type=int, default=9)
    a = ap.parse_args()
    import onnx
    from peers import ort_ptq

    from hant_trt.latency.backends import get_backend
    from hant_trt.latency.paired import time_in_rounds

    rng = np.random.default_rng(0)
    w = (rng.standard_normal((32, 3, 3, 3)) * 0.3).astype(np.float32)
    bias = (rng.standard_normal(32) * 0.1).astype(np.float32)
    images = [rng.standard_normal((1, 3, a.resolution, a.resolution)).astype(np.float32) for _ in range(9)]

    backend = get_backend("ort", threads=2)
    with tempfile.TemporaryDirectory() as tmp:
        paths = {}
        for s2d in (False, True):
            name = "space-to-depth + 2x2" if s2d else "3x3 stride 2"
            fp32 = Path(tmp) / f"{int(s2d)}.onnx"
            onnx.save(stem_model(w, bias, a.resolution, s2d), fp32)
            ort_ptq(fp32, images[:8], fp32.with_suffix(".q.onnx"), input_name="x")
            paths[f"{name}, fp32"] = fp32
            paths[f"{name}, int8"] = fp32.with_suffix(".q.onnx")
        import onnxruntime as ort

        outs = [ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(None, {"x": images[8]})[0]
                for p in paths.values()]
        print(f"fp32 outputs differ by at most {np.abs(outs[0] - outs[2]).max():.2e}")
        times = time_in_rounds(backend, [backend.prepare(str(p)) for p in paths.values()], a.rounds, max_seconds=0.3)
        for name, t in zip(paths, times):
            print(f"{name:<30} {1e6 * statistics.median(t):8.1f} us")


if __name__ == "__main__":
    main()
