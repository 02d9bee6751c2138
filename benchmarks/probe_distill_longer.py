"""Probe: would a slot's candidates distil better with more steps, or on mixed images?

    .venv/bin/python benchmarks/probe_distill_longer.py RUN --slots 16 \
        --ops ir_k3_e6_relu6,ir_k5_e4_relu6 --steps 1440 --full-res-steps 360 [--mixup 1.0] [--out DIR]
        [--er-from-ir]

Trains the named candidates of RUN's phase 1 again (the same config, seeds and initialisation;
only `distill.steps` / `distill.full_res_steps` changed, and with --mixup every training image
blended with another of the same batch by a Beta(a, a) weight — "function matching": every step
sees new inputs, which a few hundred images lack) into DIR (default a temporary folder), then
prints each candidate's validation MSE (normalised, the phase-1 measure on the eval split) from
RUN's slot files beside the new one. Why: the late slots' candidates of Lite1 (8x8 maps) lose
3–5x the swap-one KL of the same change in earlier stages (docs/RESULTS.md, session 23).
--er-from-ir: fused MBConv candidates start from the teacher's inverted residual, linearised,
instead of PyTorch's init (session 24).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


class Mixed:
    """A training set whose item i is a Beta(alpha, alpha) blend of image i with a seeded other one
    (its label is the first image's: the distillation does not read labels)."""

    def __init__(self, base, alpha: float, seed: int = 0):
        self.base, self.alpha, self.seed, self.calls = base, alpha, seed, 0

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int):
        import numpy as np

        self.calls += 1
        rng = np.random.default_rng((self.seed, i, self.calls))
        lam = float(rng.beta(self.alpha, self.alpha))
        x, y = self.base[i]
        other, _ = self.base[int(rng.integers(len(self.base)))]
        return lam * x + (1 - lam) * other, y


def er_from_ir() -> None:
    """Fused MBConv (`er`) candidates start from the teacher's inverted residual, linearised
    (`inherit_er_from_ir`), instead of PyTorch's init — for this process only."""
    import dataclasses

    from hant_trt.ops import grammar
    from hant_trt.ops.families import mbconv as mb

    original = grammar.REGISTRY["er"].build

    def build_er(spec, slot, teacher):
        t = mb.span_source(teacher, slot)
        if not (mb._kind(t) == "ir" and mb._same_io(t, slot)):
            return original(spec, slot, teacher)
        m, _ = original(spec, slot, None)           # the family's own module, untouched
        return m, mb.inherit_er_from_ir(m, t, spec.kernel)

    grammar.REGISTRY["er"] = dataclasses.replace(grammar.REGISTRY["er"], build=build_er)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run")
    ap.add_argument("--slots", required=True, help="comma-separated slot numbers")
    ap.add_argument("--ops", required=True, help="comma-separated candidate ops (as in scores.csv)")
    ap.add_argument("--steps", type=int, required=True)
    ap.add_argument("--full-res-steps", type=int, default=0)
    ap.add_argument("--mixup", type=float, default=0.0, help="Beta(a, a) of the blends (0: off)")
    ap.add_argument("--out", default=None)
    ap.add_argument("--er-from-ir", action="store_true",
                    help="fused MBConvs start from the teacher's inverted residual, linearised")
    a = ap.parse_args()
    if a.er_from_ir:
        er_from_ir()

    from hant_trt.config import from_dict
    from hant_trt.distill.stage import distill_sets
    from hant_trt.distill.train import distill
    from hant_trt.teacher.stage import load_from_config

    run = Path(a.run)
    cfg = from_dict(json.loads((run / "run.json").read_text())["config"])
    cfg.distill.steps, cfg.distill.full_res_steps = a.steps, a.full_res_steps
    teacher, d = load_from_config(cfg)
    sets = distill_sets(cfg, teacher.data_config)
    train = Mixed(sets.train, a.mixup) if a.mixup > 0 else sets.train
    full = sets.full
    if full is not None and a.mixup > 0:
        full = Mixed(full, a.mixup, seed=1)
    slots = [int(s) for s in a.slots.split(",")]
    keys = {(s, s, op) for s in slots for op in a.ops.split(",")}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(a.out or tmp)
        distill(d, train, sets.eval, cfg.distill, out, f"probe:{a.steps}:{a.full_res_steps}:{a.mixup}",
                resume=(out / "ckpt").exists(), bn_set=sets.bn, full_set=full, only_keys=keys)
        print(f"validation MSE, {run} (distill.steps {json.loads((run / 'run.json').read_text())['config']['distill']['steps']})"
              f" vs {a.steps} steps ({a.full_res_steps} at full resolution){f', mixup {a.mixup}' if a.mixup else ''}")
        for s in slots:
            old = {c["op"]: c for c in json.loads((run / "candidates" / f"slot{s}.json").read_text())["candidates"]}
            for c in json.loads((out / f"slot{s}.json").read_text())["candidates"]:
                o = old[c["op"]]["mse_final"]
                print(f"slot {s:>2} {c['op']:<18} {o:.4f} -> {c['mse_final']:.4f} ({100 * (c['mse_final'] / o - 1):+.1f} %)")


if __name__ == "__main__":
    main()
