"""What an int8 part saves next to another int8 part: the junction savings of the latency model.

Why: a part timed alone at int8 pays a QuantizeLinear at its entry and a DequantizeLinear at its
exit. Between two int8 neighbours those conversions vanish (the first part's quantized output is
the second's input), so standalone int8 timings overstate mixed and all-int8 plans: on ORT CPU
slot 0 of Lite0 is twice as slow at int8 as at fp32 alone, yet the all-int8 network runs 2.1x
faster than fp32 (docs/RESULTS.md, "int8 on ONNX Runtime CPU"). For every junction j of the teacher — the input of
slot j, j = 0 after the stem, j = n_slots before the head — the two teacher parts on its sides are
timed alone and together at int8, back to back in a few rounds: saving_j = median over rounds of
t(left) + t(right) − t(left → right). The search
subtracts saving_j whenever it puts int8 parts on both sides of junction j, whatever their ops
(what vanishes is the conversion of that one tensor). Savings are rows of the latency table
(signature `junction:<left>+<right>`, median_s = the saving), so a second profile measures nothing.
"""

from __future__ import annotations

import os
import traceback
from dataclasses import dataclass

from torch import nn

from .profile import ProfileItem


@dataclass
class Part:
    name: str                    # "stem", "slot3", "head"
    signature: str               # its latency-table signature
    module: nn.Module
    input_shape: tuple


def teacher_parts(d, model_name: str, resolution: int, batch: int, keep_signatures: dict[int, str]) -> list[Part]:
    """stem, every slot's own block, head — in order, with the signatures the profile uses for them
    (fixed parts `<model>:stem|<res>`, blocks their keep signature)."""
    from ..teacher.decompose import span_teacher

    parts = [Part("stem", f"{model_name}:stem|{resolution}", d.stem, (batch, 3, resolution, resolution))]
    for i, slot in enumerate(d.slots):
        parts.append(Part(f"slot{i}", keep_signatures[i], span_teacher(d, i, i), (batch, *slot.in_shape)))
    parts.append(Part("head", f"{model_name}:head|{resolution}", d.head, (batch, *d.fixed["head"]["in_shape"])))
    return parts


def pair_signature(left: Part, right: Part) -> str:
    return f"junction:{left.signature}+{right.signature}"


def _item(p: Part) -> ProfileItem:
    return ProfileItem(p.signature, p.input_shape, (lambda m=p.module: m.eval()))


def _pair_item(a: Part, b: Part) -> ProfileItem:
    return ProfileItem(pair_signature(a, b), a.input_shape, (lambda: nn.Sequential(a.module, b.module).eval()))


def paired_saving(backend, left, right, both, rounds: int, max_seconds: float, cv_target: float) -> tuple:
    """(median, p90, stdev) over `rounds` of t(left) + t(right) − t(both), the three timed back to
    back in each round: a difference of three timings, so one slow timing must not make it (the
    machine drifts between rounds; within one it mostly does not)."""
    from .paired import time_in_rounds
    from .timing import Stats

    ts = time_in_rounds(backend, [left, right, both], rounds, warmup_ms=20, max_seconds=max_seconds,
                        cv_target=cv_target)
    st = Stats.of([a + b - ab for a, b, ab in zip(*ts)])
    return st.median, st.p90, st.stdev


def measure_junctions(parts: list[Part], backend, table, workdir, layout, max_seconds: float = 2.0,
                      cv_target: float = 0.02, rounds: int = 3, progress: bool = True, references: dict | None = None,
                      reference_precision: str = "fp32") -> dict:
    """{"stem_int8_s", "head_int8_s", "junction_saving_s": [len(parts) − 1], "failed": [...]}, at
    int8 in `layout` (a `quant.layouts.QdqLayout`). The stem and head are timed like any part (`profile_items`); each
    junction's saving is measured in `rounds` interleaved rounds (`paired_saving`) and stored in
    `table` as its own row (median_s = the saving, possibly negative), so a second profile reads
    it. A junction that cannot be measured is recorded with its error and gets None. references:
    the stem's and head's `profile.Reference` (timed beside their float selves), as candidates."""
    from ..progress import progress as bar_of
    from .lut import LatencyRow
    from .profile import prepare_item, profile_items, table_key

    fixed = profile_items([_item(parts[0]), _item(parts[-1])], backend, table, ["int8"], workdir, progress=False,
                          max_seconds=max_seconds, cv_target=cv_target, layout=layout,
                          references=references, reference_precision=reference_precision)
    ok = {r.signature: r.median_s for r in fixed if not r.error}
    failed = sorted(r.signature for r in fixed if r.error)
    device = backend.device().fingerprint
    savings, prepared = [], {}

    def prep(item):
        if item.signature not in prepared:
            prepared[item.signature] = prepare_item(item, "int8", backend, workdir, layout)
        return prepared[item.signature]

    pairs = list(zip(parts, parts[1:]))
    bar = bar_of(len(pairs), desc=f"int8 junctions on {backend.name}", unit="junction", items=pairs, show=progress)
    for a, b in bar:
        item = _pair_item(a, b)
        key = table_key(item, "int8", backend, device, layout)
        row = table.get(key)
        if row is None:
            try:
                med, p90, sd = paired_saving(backend, prep(_item(a)), prep(_item(b)), prep(item), rounds,
                                             max_seconds, cv_target)
                row = LatencyRow(*key, median_s=med, p90_s=p90, stdev_s=sd, count=max(1, rounds))
            except Exception as exc:  # recorded and skipped: the search then assumes no saving there
                if os.environ.get("HANT_TRT_DEBUG"):
                    traceback.print_exc()
                row = LatencyRow(*key, error=f"{type(exc).__name__}: {exc}"[:500])
            table.put(row)
        if row.error:
            failed.append(item.signature)
        savings.append(None if row.error else row.median_s)
    return {"stem_int8_s": ok.get(parts[0].signature), "head_int8_s": ok.get(parts[-1].signature),
            "junction_saving_s": savings, "failed": failed}


__all__ = ["Part", "teacher_parts", "measure_junctions", "paired_saving", "pair_signature"]
