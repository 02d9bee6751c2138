"""What an int8 part saves next to another int8 part: the junction savings of the latency model.

Why: a part timed alone at int8 pays a QuantizeLinear at its entry and a DequantizeLinear at its
exit. Between two int8 neighbours those conversions vanish (the first part's quantized output is
the second's input), so standalone int8 timings overstate mixed and all-int8 plans: on ORT CPU
slot 0 of Lite0 is twice as slow at int8 as at fp32 alone, yet the all-int8 network runs 2.1x
faster than fp32 (docs/RESULTS.md, session 8). For every junction j of the teacher — the input of
slot j, j = 0 after the stem, j = n_slots before the head — the two teacher parts on its sides are
timed alone and together at int8: saving_j = t(left) + t(right) − t(left → right). The search
subtracts saving_j whenever it puts int8 parts on both sides of junction j, whatever their ops
(what vanishes is the conversion of that one tensor). Pairs are rows of the latency table like any
part (signature `pair:<left>+<right>`), so a second profile measures nothing.
"""

from __future__ import annotations

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
    return f"pair:{left.signature}+{right.signature}"


def junction_items(parts: list[Part]) -> tuple[list[ProfileItem], list[ProfileItem]]:
    """(items for every part alone, items for every adjacent pair as one module)."""
    alone = [ProfileItem(p.signature, p.input_shape, (lambda m=p.module: m.eval())) for p in parts]
    pairs = [ProfileItem(pair_signature(a, b), a.input_shape,
                         (lambda a=a, b=b: nn.Sequential(a.module, b.module).eval()))
             for a, b in zip(parts, parts[1:])]
    return alone, pairs


def junction_savings(parts: list[Part], alone_s: dict[str, float], pair_s: dict[str, float]) -> list[float | None]:
    """saving_j (s) for j = 0..len(parts) − 2 from the timings by signature; None where a timing is
    missing (the search then assumes no saving there)."""
    out = []
    for a, b in zip(parts, parts[1:]):
        ta, tb, tab = alone_s.get(a.signature), alone_s.get(b.signature), pair_s.get(pair_signature(a, b))
        out.append(None if None in (ta, tb, tab) else ta + tb - tab)
    return out


def measure_junctions(parts: list[Part], backend, table, workdir, int8_layout: str, max_seconds: float = 2.0,
                      cv_target: float = 0.02, progress: bool = True) -> dict:
    """{"stem_int8_s", "head_int8_s", "junction_saving_s": [n_slots + 1], "failed": [...]}, every
    figure at int8 in `int8_layout`, measured (or read from `table`) through `profile_items`."""
    from .profile import profile_items

    alone, pairs = junction_items(parts)
    res = profile_items(alone + pairs, backend, table, ["int8"], workdir, progress=progress,
                        max_seconds=max_seconds, cv_target=cv_target, int8_layout=int8_layout)
    ok = {r.signature: r.median_s for r in res if not r.error}
    failed = sorted({r.signature for r in res if r.error})
    return {"stem_int8_s": ok.get(parts[0].signature), "head_int8_s": ok.get(parts[-1].signature),
            "junction_saving_s": junction_savings(parts, ok, ok), "failed": failed}


__all__ = ["Part", "teacher_parts", "junction_items", "junction_savings", "measure_junctions", "pair_signature"]
