"""Which parts of a student are int8 and which ranges are theirs: parts by index in
`student.parts` (slot order), the stem and head by name. Plain data: importing it loads no torch."""

from __future__ import annotations

FIXED_PARTS = ("stem", "head")


def int8_parts(choices) -> list[int]:
    """Indices (in `student.parts`, i.e. slot order) of the choices at int8."""
    ordered = sorted(choices, key=lambda c: c.first)
    return [i for i, c in enumerate(ordered) if c.precision == "int8"]


def part_calib(calib, i: int):
    """The ranges of part `i`, keyed by path within that part (what `fake_quantize` expects)."""
    return calib.subset((f"parts.{i}.",), strip=True)


def int8_fixed(source) -> tuple[str, ...]:
    """Which of the stem and head are at int8: from {"stem": precision, ...} (solution.json's
    fixed_parts), or from a calibration (the parts it covers); () for None."""
    if source is None:
        return ()
    if isinstance(source, dict):
        return tuple(n for n in FIXED_PARTS if source.get(n) == "int8")
    return tuple(n for n in FIXED_PARTS if any(k.startswith(f"{n}.") for k in source.amax))
