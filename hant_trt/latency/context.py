"""In-context latencies: what a candidate saves *inside the whole network*, not alone.

Why: timed alone, some ops look far cheaper than they are inside the model (on ORT CPU fused `e8`
spans and odd widths save half or less of their standalone saving; docs/RESULTS.md, "Additivity"),
and the search seeks exactly those, so its students measure slower than their budget. Here the
teacher with one part swapped in is timed right after the teacher itself, in alternating pairs
(the machine drifts; a pair does not), and the saving is the median over pairs of (1 − swapped /
teacher) × the pair's teacher time. Weights do not change latency, so candidates are built
untrained from their op strings.

A saving depends on the swap (the teacher's part → the candidate), so it is keyed in the latency
table by both signatures and measured once for every slot where that swap occurs (Lite0's
repeated blocks share one measurement). Rows go to the same table, signature
`ctx:<model>@<resolution>:<teacher part signature>-><candidate signature>`, median_s = the saving
in seconds (negative when the candidate is slower in place), stdev_s its spread over the pairs,
count = pairs.

At int8 the context is the whole teacher at int8 (every part, stem and head in the profile's Q/DQ
layout) and the candidate is swapped in at int8: an int8 part standalone carries a quantize of its
input, a dequantize of its output and the layout reorders around them, which inside an int8 network
are shared or elided — standalone int8 rows of early, wide slots were 2x what the same part costs
in a built student (docs/RESULTS.md, session 20).
"""

from __future__ import annotations

import os
import statistics
import traceback
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from ..quant.layouts import DEFAULT, QdqLayout, quantize_int8
from .backends.base import Backend
from .lut import LatencyRow, LatencyTable, make_key


@dataclass
class Swap:
    """One candidate of the run: slots first..last replaced by `op` (signature `signature`), where
    the teacher's own part has signature `keep_signature`."""

    first: int
    last: int
    op: str
    signature: str
    keep_signature: str


def context_signature(model: str, resolution: int, keep_signature: str, signature: str) -> str:
    return f"ctx:{model}@{resolution}:{keep_signature}->{signature}"


def swapped_model(d, first: int, last: int, module: nn.Module | None) -> nn.Module:
    """stem → the teacher's blocks with first..last replaced by `module` (None: none) → head, as
    one Sequential: the teacher is exported through the same path as every swapped model."""
    blocks = list(d.blocks)
    if module is not None:
        blocks[first:last + 1] = [module]
    return nn.Sequential(d.stem, *blocks, d.head).eval()


def paired_saving(backend: Backend, teacher_prep, swapped_prep, rounds: int, max_seconds: float,
                  cv_target: float = 0.02) -> tuple[float, float, float]:
    """(median saving s, p90 of the savings, stdev) over `rounds` pairs (teacher, swapped)."""
    from .paired import time_beside

    pairs = time_beside(backend, teacher_prep, [swapped_prep], rounds, warmup_ms=20, max_seconds=max_seconds,
                        cv_target=cv_target)[0]
    savings = [(1.0 - s / t) * t for t, s in pairs]
    savings.sort()
    p90 = savings[min(len(savings) - 1, int(round(0.9 * (len(savings) - 1))))]
    return statistics.median(savings), p90, statistics.pstdev(savings)


def measure_in_context(d, model_name: str, resolution: int, swaps: list[Swap], make_module, backend: Backend,
                       table: LatencyTable, workdir: Path, batch: int = 1, rounds: int = 5,
                       max_seconds: float = 0.3, progress: bool = True, precision: str = "fp32",
                       layout: QdqLayout = DEFAULT) -> dict[tuple[str, str], LatencyRow]:
    """{(keep_signature, signature): row} for every distinct swap; rows already in `table` for this
    backend, version and device are reused, new ones are written as they are measured (so a killed
    profile resumes where it stopped). A swap that fails to export or run is recorded with its
    error and left out of the result (the search then uses its standalone timing: never fatal).

    make_module(first, last, op) -> the candidate's nn.Module (eval mode, any weights).
    precision: "fp32", or "int8": teacher and swapped model both wholly int8 in `layout` (Q/DQ
    ranges from seeded random images: they do not change latency).
    """
    from ..progress import progress as bar_of
    from .export import export_onnx

    if precision not in ("fp32", "int8"):
        raise ValueError(f"in-context timing is fp32 or int8, not {precision}")
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    device = backend.device().fingerprint
    shape = (batch, 3, resolution, resolution)
    table_precision = layout.table_precision(precision)

    def key(s: Swap) -> tuple:
        return make_key(context_signature(model_name, resolution, s.keep_signature, s.signature), shape,
                        table_precision, backend.name, backend.version(), device)

    def prepared(module, name: str):
        if precision == "int8":
            return backend.prepare(quantize_int8(module, shape, workdir / f"{name}.{layout.file_precision('int8')}.onnx",
                                                 layout=layout), "int8")
        return backend.prepare(export_onnx(module, shape, workdir / f"{name}.onnx"))

    out, todo, seen = {}, [], set()
    for s in swaps:
        k = (s.keep_signature, s.signature)
        if s.op == "keep" or k in seen:
            continue
        seen.add(k)
        row = table.get(key(s))
        if row is None:
            todo.append(s)
        elif row.error is None:
            out[k] = row
    if not todo:
        return out
    teacher_prep = prepared(swapped_model(d, 0, 0, None), "ctx_teacher")
    bar = bar_of(len(todo), desc=f"in-context latency ({precision}) on {backend.name}", unit="swap", items=todo,
                 show=progress)
    for s in bar:
        k = key(s)
        try:
            swapped = prepared(swapped_model(d, s.first, s.last, make_module(s.first, s.last, s.op)), "ctx_swapped")
            med, p90, sd = paired_saving(backend, teacher_prep, swapped, rounds, max_seconds)
            row = LatencyRow(*k, median_s=med, p90_s=p90, stdev_s=sd, count=max(1, rounds))
            out[(s.keep_signature, s.signature)] = row
        except Exception as exc:  # recorded and skipped, never fatal to the run
            if os.environ.get("HANT_TRT_DEBUG"):
                traceback.print_exc()
            row = LatencyRow(*k, error=f"{type(exc).__name__}: {exc}"[:500])
        table.put(row)
    return out


def in_context_latency(keep_s: float, saving_s: float, teacher_s: float, teacher_sum_s: float) -> float:
    """The latency to give a candidate in the table so that the search's whole-model prediction
    (`latency_model = "scale"`: (stem + head + Σ parts) × teacher / Σ teacher's parts) of the
    teacher with that one swap is exactly teacher − saving: keep − saving × Σ / teacher."""
    return keep_s - saving_s * teacher_sum_s / teacher_s


__all__ = ["Swap", "context_signature", "in_context_latency", "measure_in_context", "paired_saving",
           "swapped_model"]
