"""Phase-1 throughput: the shared-teacher step vs a naive loop that runs the teacher once per
candidate, in the same process, on Lite0 with the `small` preset (CPU).

    .venv/bin/python benchmarks/bench_phase1_throughput.py [--steps 3] [--batch 8] [--res 128]

Prints candidate-samples per second for both and their ratio, and the peak RSS.
"""

from __future__ import annotations

import argparse
import resource
import time

import torch

from hant_trt.config import DistillCfg
from hant_trt.teacher.capture import capture, normalised_mse, teacher_modules_eval
from hant_trt.distill.train import make_groups, plan_jobs
from hant_trt.training import adamw
from hant_trt.teacher.decompose import decompose
from hant_trt.teacher.load import load_teacher


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--res", type=int, default=128)
    ap.add_argument("--preset", default="small")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t = load_teacher("efficientnet_lite0", "default", args.res)
    d = decompose(t.model, args.res)
    teacher_modules_eval(d)
    cfg = DistillCfg(preset=args.preset, batch_size=args.batch)
    jobs = [j for j in plan_jobs(d, cfg) if any(p.requires_grad for p in j.module.parameters())]
    groups = make_groups(jobs, args.batch, cfg.group_mb)
    params = [p for j in jobs for p in j.module.parameters() if p.requires_grad]
    opt = adamw(params, 1e-3)   # the product's optimizer, in both loops
    x = torch.randn(args.batch, 3, args.res, args.res)
    print(f"{len(jobs)} trainable candidates over {len(d.slots)} slots ({args.preset}), "
          f"{len(groups)} groups, batch {args.batch} at {args.res}px, {args.threads} threads")

    def shared_step():
        acts, _ = capture(d, x)
        for j in jobs:
            normalised_mse(j.module(acts[j.first]), acts[j.last + 1]).backward()
        opt.step()
        opt.zero_grad()

    own = [adamw([p for p in j.module.parameters() if p.requires_grad], 1e-3) for j in jobs]

    def naive_step():
        for j, o in zip(jobs, own):  # the teacher runs again for every candidate
            acts, _ = capture(d, x)
            normalised_mse(j.module(acts[j.first]), acts[j.last + 1]).backward()
            o.step()
            o.zero_grad()

    figures = {}
    for name, fn in (("shared", shared_step), ("naive", naive_step)):
        fn()  # warm-up
        t0 = time.perf_counter()
        for _ in range(args.steps):
            fn()
        dt = time.perf_counter() - t0
        figures[name] = len(jobs) * args.batch * args.steps / dt
        print(f"{name:7s}: {figures[name]:9.1f} candidate-samples/s ({dt / args.steps:.2f} s/step)")
    print(f"ratio shared/naive: {figures['shared'] / figures['naive']:.2f}x")
    print(f"peak RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
