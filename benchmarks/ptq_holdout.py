"""Baseline: the whole teacher post-training quantized to int8 (ORT layout, simulated), holdout top-1.

    .venv/bin/python benchmarks/ptq_holdout.py

Calibrated on 32 un-augmented images of dev's training part (the runs' split); reports on holdout
only. Its speed is `bench_int8_ort.py`'s figure.
"""
import numpy as np, torch
from hant_trt.teacher.load import load_teacher
from hant_trt.latency.calibrate import calibrate
from hant_trt.latency.fakequant import fake_quantize
from hant_trt.data import scan_folder, split_items, FolderDataset, eval_transform
t = load_teacher("efficientnet_lite0"); m = t.model.eval(); tf = eval_transform(t.data_config)
items,_,_ = scan_folder("../shared/data/imagenet-sample/dev"); tr, ev = split_items(items, 0.2, 0)
xc = torch.stack([FolderDataset(tr[:32], tf)[i][0] for i in range(32)])
cal = calibrate(m, [xc[i:i+8] for i in range(0,32,8)])
sim = fake_quantize(m, cal, layout="ort", input_shape=(1,3,224,224))
hi,_,_ = scan_folder("../shared/data/imagenet-sample/holdout"); ds = FolderDataset(hi, tf)
y = np.array([it.label for it in hi]); pt, ps = [], []
with torch.no_grad():
    for i in range(0, len(hi), 50):
        x = torch.stack([ds[j][0] for j in range(i, min(i+50, len(hi)))])
        pt.append(m(x).argmax(1)); ps.append(sim(x).argmax(1))
pt, ps = torch.cat(pt).numpy(), torch.cat(ps).numpy()
print(f"holdout: teacher {100*(pt==y).mean():.1f}  whole-int8 PTQ (ort layout, simulated) {100*(ps==y).mean():.1f}  agreement {100*(pt==ps).mean():.1f}")
