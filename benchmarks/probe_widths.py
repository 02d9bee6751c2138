"""How an MBConv's int8 latency moves with its hidden width, on ONNX Runtime CPU (`distill.align`).

    .venv/bin/python benchmarks/probe_widths.py [--in-chs 24] [--size 60] [--kernel 3]
        [--widths 64,72,80,...] [--rounds 7]
    .venv/bin/python benchmarks/probe_widths.py --stream 24,32 --widths 144 [--blocks 3]

One inverted residual (1x1 expand, kxk depthwise, 1x1 project, ReLU6, residual) from `--in-chs`
channels at `--size`² per hidden width, random weights, exported to ONNX and quantised by ORT's
`quantize_static` (QDQ, per-channel weights, uint8 activations); every width at fp32 and int8
timed in the same rounds on the project's ORT backend. Printed per width: median µs and µs per
hidden channel. Why: int8 kernels work on channel blocks, so a width between two blocks can cost
more than a wider one — the search never picks such a candidate, and phase 1 trained it for
nothing (Lite0/Lite1's e3 and e5 in their 24- and 40-channel slots; docs/RESULTS.md, session 22).

--stream: the residual stream's width varies instead (the hidden width fixed at the first of
--widths), over a chain of --blocks blocks so the map between them stays int8 as inside a network:
whether a stage's 24, 40 or 112 channels padded with zero channels to the next multiple of 16 (an
exact rewrite) would run faster.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def block(in_chs: int, width: int, kernel: int):
    import torch
    from torch import nn

    class IR(nn.Module):
        def __init__(self):
            super().__init__()
            self.pw = nn.Conv2d(in_chs, width, 1)
            self.dw = nn.Conv2d(width, width, kernel, 1, kernel // 2, groups=width)
            self.pwl = nn.Conv2d(width, in_chs, 1)

        def forward(self, x):
            return x + self.pwl(torch.clamp(self.dw(torch.clamp(self.pw(x), 0, 6)), 0, 6))

    return IR().eval()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--in-chs", type=int, default=24)
    ap.add_argument("--size", type=int, default=60)
    ap.add_argument("--kernel", type=int, default=3)
    ap.add_argument("--widths", default="64,72,80,88,96,104,112,120,128,136,144")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--stream", default=None, help="stream widths to compare (hidden width: the first of --widths)")
    ap.add_argument("--blocks", type=int, default=3, help="with --stream: blocks in the chain")
    a = ap.parse_args()
    import torch
    from peers import ort_ptq

    from hant_trt.latency.backends import get_backend
    from hant_trt.latency.paired import time_in_rounds

    warnings.filterwarnings("ignore", category=DeprecationWarning)     # the TorchScript exporter's notice
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    widths = [int(w) for w in a.widths.split(",")]
    # (stream channels, hidden width) per model
    cases = ([(int(c), widths[0]) for c in a.stream.split(",")] if a.stream else [(a.in_chs, w) for w in widths])
    depth = a.blocks if a.stream else 1

    backend = get_backend("ort", threads=2)
    with tempfile.TemporaryDirectory() as tmp:
        files = []
        for c, w in cases:
            shape = (1, c, a.size, a.size)
            fp32 = Path(tmp) / f"c{c}w{w}.onnx"
            model = torch.nn.Sequential(*[block(c, w, a.kernel) for _ in range(depth)]).eval()
            torch.onnx.export(model, torch.randn(shape), str(fp32), input_names=["x"],
                              dynamo=False, opset_version=17)
            int8 = fp32.with_suffix(".q.onnx")
            ort_ptq(fp32, [rng.standard_normal(shape).astype(np.float32) for _ in range(4)], int8, input_name="x")
            files += [fp32, int8]
        times = time_in_rounds(backend, [backend.prepare(str(f)) for f in files], a.rounds, max_seconds=0.3)
    med = [1e6 * statistics.median(t) for t in times]
    if a.stream:
        print(f"{depth} MBConvs k{a.kernel}, hidden {widths[0]}, at {a.size}x{a.size}, ORT CPU, 2 threads, {a.rounds} rounds")
        print(f"{'stream':>6} {'int8 us':>9} {'fp32 us':>9}")
        for k, (c, _) in enumerate(cases):
            print(f"{c:>6} {med[2 * k + 1]:9.1f} {med[2 * k]:9.1f}")
        return
    print(f"MBConv k{a.kernel} from {a.in_chs} channels at {a.size}x{a.size}, ORT CPU, 2 threads, {a.rounds} rounds")
    print(f"{'width':>6} {'int8 us':>9} {'us/ch':>7} {'fp32 us':>9}")
    for k, w in enumerate(widths):
        print(f"{w:>6} {med[2 * k + 1]:9.1f} {med[2 * k + 1] / w:7.2f} {med[2 * k]:9.1f}"
              + ("" if w % 16 == 0 else "   (not a multiple of 16)"))


if __name__ == "__main__":
    main()
