"""What a float part costs inside an int8 network: the float islands of the int8 latency model.

Why: the int8 model prices a part left at fp32 between int8 neighbours as its standalone fp32
time plus the junction savings it forgoes (`latency.junction`). Inside the whole int8 teacher
such islands cost more on ORT CPU: on Lite1, slot 0 at fp32 added 576 µs where the model said 87,
slot 1 1214 against 818 (docs/RESULTS.md, session 21) — the conversions at a junction between an
int8 and a float part (a quantize or dequantize of the whole map plus the layout reorders
around it) cost more than those a standalone part pays — and the search, blind to that,
kept the stem and slot 0 at fp32 in students that ran 10–18 % faster with them at int8.

So each part (the stem, every slot's own block, the head) is put alone at the base precision in
the int8 teacher, and that model is timed beside the int8 teacher in `rounds` alternating pairs;
the extra (median over pairs of island − int8 teacher) is a row of the latency table (signature
`island:<model>@<res>:<part signature>`, median_s = the extra, possibly negative), so a second
profile measures nothing. The search turns the extras into a cost per mixed junction
(`search.islands`).
"""

from __future__ import annotations

import os
import traceback
from pathlib import Path
from types import SimpleNamespace

from .lut import LatencyRow, LatencyTable, make_key


def island_signature(model: str, resolution: int, part_signature: str) -> str:
    return f"island:{model}@{resolution}:{part_signature}"


def _selection(n_slots: int, at_base: int | None, base: str) -> SimpleNamespace:
    """The teacher as a selection (`student.plan.plan_onnx`): every part int8, part `at_base`
    (−1: the stem, n_slots: the head, None: none) at `base`."""
    def part(i: int, op: str) -> SimpleNamespace:
        return SimpleNamespace(first=i, last=i, op=op, precision=base if i == at_base else "int8")

    return SimpleNamespace(choices=[part(i, "keep") for i in range(n_slots)],
                           fixed_choices=[part(-1, "stem"), part(n_slots, "head")])


def measure_islands(d, model_name: str, resolution: int, part_signatures: list[str], backend,
                    table: LatencyTable, workdir: Path, layout, batch: int = 1, rounds: int = 15,
                    max_seconds: float = 0.5, base: str = "fp32", progress: bool = True) -> list[float | None]:
    """Per part (stem, slots 0..n−1, head: `part_signatures` in that order), the seconds it adds at
    `base` inside the int8 teacher (None: could not be measured; the error is in the table).
    Rows already in `table` for this backend, version and device are reused; new ones are written
    as they are measured, so a killed profile resumes where it stopped."""
    from ..progress import progress as bar_of
    from ..student.plan import plan_onnx
    from .context import paired_saving

    n = len(d.slots)
    if len(part_signatures) != n + 2:
        raise ValueError(f"{len(part_signatures)} part signatures for {n} slots + stem + head")
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    shape = (batch, 3, resolution, resolution)
    device = backend.device().fingerprint
    precision = layout.table_precision("int8")
    keys = [make_key(island_signature(model_name, resolution, s), shape, precision, backend.name,
                     backend.version(), device) for s in part_signatures]
    rows = [table.get(k) for k in keys]
    todo = [k for k, r in enumerate(rows) if r is None]
    if todo:
        int8 = backend.prepare(plan_onnx(d, _selection(n, None, base), shape, layout, workdir / "island_int8.onnx"),
                               "int8")
        bar = bar_of(len(todo), desc=f"float islands in the int8 teacher on {backend.name}", unit="island",
                     items=todo, show=progress)
        for k in bar:
            try:
                island = backend.prepare(plan_onnx(d, _selection(n, k - 1, base), shape, layout,
                                                   workdir / "island.onnx"), "int8")
                med, _, sd = paired_saving(backend, int8, island, rounds, max_seconds)
                # paired_saving gives int8 teacher − island: the island's extra is its negative
                rows[k] = LatencyRow(*keys[k], median_s=-med, stdev_s=sd, count=max(1, rounds))
            except Exception as exc:  # recorded and skipped: the search then prices no mixed junction there
                if os.environ.get("HANT_TRT_DEBUG"):
                    traceback.print_exc()
                rows[k] = LatencyRow(*keys[k], error=f"{type(exc).__name__}: {exc}"[:500])
            table.put(rows[k])
    return [None if r.error else r.median_s for r in rows]


__all__ = ["island_signature", "measure_islands"]
