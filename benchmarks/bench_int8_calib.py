"""How the int8 calibration choice moves plain int8's accuracy: the whole teacher in the ORT layout,
per calibration method and number of calibration images, judged against the fp32 teacher.

    .venv/bin/python benchmarks/bench_int8_calib.py [--model efficientnet_lite0] [--methods max,percentile,entropy]
        [--images 32,128] [--percentile 99.99]

Calibration images come first from dev's training part (the run's 80/20 split, seed 0); the
judging images are every dev image not used to calibrate (dev's eval part plus the rest of its
training part: only agreement with the teacher is measured there, so nothing is tuned on labels),
run through ONNX Runtime's fused int8 engine, the file a build deploys. Holdout is not read.
KL(teacher ‖ int8) in nats is the fine measure; agreement is top-1 agreement with the teacher.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from hant_trt.data import FolderDataset, eval_transform, scan_folder, split_items
from hant_trt.latency.backends.ort import OrtBackend
from hant_trt.quant.calibrate import calibrate
from hant_trt.quant.layouts import LAYOUTS, quantize_int8
from hant_trt.teacher.load import load_teacher


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared/data/imagenet-sample/dev"))
    ap.add_argument("--model", default="efficientnet_lite0")
    ap.add_argument("--methods", default="max,percentile,entropy")
    ap.add_argument("--images", default="32,128")
    ap.add_argument("--percentile", type=float, default=99.99)
    ap.add_argument("--layout", default="ort-qadd", choices=sorted(LAYOUTS))
    a = ap.parse_args()
    torch.set_num_threads(2)
    t = load_teacher(a.model)
    m = t.model.eval()
    items, _, _ = scan_folder(a.data)
    tr, ev = split_items(items, 0.2, 0)
    tf = eval_transform(t.data_config)
    sizes = [int(x) for x in a.images.split(",")]
    n_cal = max(sizes)
    load = lambda its: torch.stack([FolderDataset(its, tf)[i][0] for i in range(len(its))])  # noqa: E731
    xc = load(tr[:n_cal])
    xj = load(ev + tr[n_cal:])
    with torch.no_grad():
        ref = torch.cat([m(xj[i:i + 50]) for i in range(0, len(xj), 50)])
    shape = (1, 3, t.resolution, t.resolution)
    sess_backend = OrtBackend(threads=2)
    print(f"{a.model}: calibrate on the first {sizes} of dev's training part, judge on the other "
          f"{len(xj)} dev images (ORT int8 engine, layout {a.layout})")
    print("| method | calibration images | KL (teacher ‖ int8) | agreement | calibration s |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for n in sizes:
            for method in a.methods.split(","):
                t0 = time.time()
                calib = calibrate(m, [xc[i:i + 8] for i in range(0, n, 8)], method=method, percentile=a.percentile)
                took = time.time() - t0
                q = quantize_int8(m, shape, Path(tmp) / f"{method}{n}.onnx", calib, layout=LAYOUTS[a.layout])
                sess = sess_backend.session(q)
                out = torch.from_numpy(np.concatenate([sess.run(None, {"input": xj[i:i + 1].numpy()})[0]
                                                       for i in range(len(xj))]))
                kl = float(torch.nn.functional.kl_div(torch.log_softmax(out, 1), torch.log_softmax(ref, 1),
                                                      log_target=True, reduction="batchmean"))
                agree = 100 * float((out.argmax(1) == ref.argmax(1)).float().mean())
                name = method + (f" {a.percentile:g}" if method == "percentile" else "")
                print(f"| {name} | {n} | {kl:.4f} | {agree:.1f} % | {took:.0f} |", flush=True)


if __name__ == "__main__":
    main()
