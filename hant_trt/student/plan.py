"""A selection as the ONNX the build deploys, untrained: what the search's engine calibration and
the profile's float islands time."""

from __future__ import annotations

from pathlib import Path

import torch

from ..quant.parts import int8_fixed, int8_parts
from ..quant.plan import calibrate_parts, export_with_plan
from .assemble import Choice, assemble


def plan_onnx(d, sol, shape: tuple, layout, path: Path) -> Path:
    """The student of a selection as ONNX with its int8 plan (parts, stem, head), built untrained
    from its op strings and calibrated on seeded random images: neither weights nor ranges change
    latency, so this is what the build deploys, to time. sol: a `search.ilp.Solution` or anything
    with `.choices` (first, last, op, precision) and `.fixed_choices` (op "stem"/"head", precision)."""
    choices = [Choice(o.first, o.last, o.op, o.precision) for o in sol.choices]
    student = assemble(d, choices).eval()
    fixed = int8_fixed({o.op: o.precision for o in sol.fixed_choices})
    parts = int8_parts(choices)
    calib = None
    if parts or fixed:
        gen = torch.Generator().manual_seed(0)
        batches = [torch.randn(4, *shape[1:], generator=gen) for _ in range(2)]
        calib = calibrate_parts(student, parts, batches, "max", cache_dir=Path(path).parent / "calib",
                                layout=layout, fixed=fixed)
    return export_with_plan(student, shape, Path(path), calib)


__all__ = ["plan_onnx"]
