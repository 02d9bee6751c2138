"""Probe: the unchanged teacher at lower input resolutions — holdout top-1 and ORT CPU speed.

    .venv/bin/python benchmarks/probe_resolution.py --model efficientnet_lite1 --sizes 240,224,208,192
        [--holdout DIR] [--calib DIR] [--rounds 9] [--out FILE.json]

Why: the first lever a deployment engineer tries is a smaller input, with no training at all. Its
speed beside its accuracy is the peer any "speed at the teacher's accuracy" has to be read
against, and it composes with what the search changes (hant-trt runs at any multiple of 32 via
`teacher.resolution`). Per size: the teacher exported as ONNX at that size (batch 1), in fp32 and
as ONNX Runtime's `quantize_static` (the peers benchmark's plain int8, calibrated on 64 images of
`--calib` at that size), top-1 on the holdout (timm's eval transform at that size: resize to
size / crop_pct, centre crop); every model timed beside the fp32 teacher at its own size in the same
rounds. Printed: top-1, speedup over the fp32 teacher and over plain int8 at the teacher's size.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA = ROOT.parent / "shared" / "data" / "imagenet-sample"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="efficientnet_lite0")
    ap.add_argument("--weights", default="default")
    ap.add_argument("--sizes", default="224,208,192", help="input sides; the first is the reference")
    ap.add_argument("--holdout", default=str(DATA / "holdout"))
    ap.add_argument("--calib", default=str(DATA / "dev"), help="images int8 is calibrated on (64 of them)")
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--seconds", type=float, default=0.4, help="timing per model per round")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default=None, help="write the figures as JSON here")
    a = ap.parse_args()
    from peers import cpu_name, holdout_batches, onnx_logits, ort_ptq

    from hant_trt.latency.backends import get_backend
    from hant_trt.latency.export import export_onnx
    from hant_trt.latency.paired import time_beside
    from hant_trt.teacher.load import load_teacher

    sizes = [int(s) for s in a.sizes.split(",")]
    teacher = load_teacher(a.model, a.weights)
    work = Path(tempfile.mkdtemp(prefix="probe_res_"))
    files, rows = {}, []
    for s in sizes:
        dc = {**teacher.data_config, "input_size": (3, s, s)}
        fp32 = export_onnx(teacher.model, (1, 3, s, s), work / f"fp32_{s}.onnx")
        calib = [x for x, _ in holdout_batches(a.calib, dc, batch=64, limit=64)]
        int8 = ort_ptq(fp32, calib, work / f"int8_{s}.onnx")
        batches = holdout_batches(a.holdout, dc)
        y = np.concatenate([b[1] for b in batches])
        for prec, path in (("fp32", fp32), ("int8", int8)):
            top1 = float((onnx_logits(path, batches).argmax(1) == y).mean() * 100)
            files[(s, prec)] = path
            rows.append({"size": s, "precision": prec, "top1": round(top1, 1), "images": len(y)})
            print(f"{s} px {prec}: top-1 {top1:.1f} on {len(y)} images", flush=True)
    backend = get_backend("ort", threads=a.threads)
    ref = backend.prepare(str(files[(sizes[0], "fp32")]))
    keys = [(r["size"], r["precision"]) for r in rows]
    pairs = time_beside(backend, ref, [backend.prepare(str(files[k])) for k in keys], a.rounds, max_seconds=a.seconds)
    for r, model in zip(rows, pairs):
        r["speedup"] = round(statistics.median(t / m for t, m in model), 3)
        r["ms"] = round(statistics.median(m for _, m in model) * 1e3, 3)
    int8_ref = next(r for r in rows if r["size"] == sizes[0] and r["precision"] == "int8")
    top_ref = next(r for r in rows if r["size"] == sizes[0] and r["precision"] == "fp32")["top1"]
    print(f"\n{a.model}, ONNX Runtime CPU, {cpu_name()}, {a.rounds} rounds; teacher fp32 at {sizes[0]} px "
          f"= 1.00x, top-1 {top_ref}")
    print("| size | precision | top-1 | − teacher | ms | speedup | over plain int8 at the teacher's size |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        r["over_int8"] = round(r["speedup"] / int8_ref["speedup"], 3)
        print(f"| {r['size']} | {r['precision']} | {r['top1']} | {r['top1'] - top_ref:+.1f} | {r['ms']} | "
              f"{r['speedup']:.2f}x | {r['over_int8']:.2f}x |")
    if a.out:
        Path(a.out).write_text(json.dumps({"model": a.model, "cpu": cpu_name(), "rounds": a.rounds, "rows": rows},
                                          indent=1))


if __name__ == "__main__":
    main()
