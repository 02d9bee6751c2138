"""Candidate presets: which op strings each slot gets.

`tiny` (≈ 8 per slot: tests and the demo), `tiny-fused` (`tiny` + fused MBConvs at stride-2
slots), `small` (≈ 30), `paper` (≥ 197 per MBConv slot, the cross product used in the HANT paper's
search space). Cheap variants use the slot's own activation.
Users add presets with `register_preset(name)(fn)`, fn(slot) -> list of op strings.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Callable

from ..errors import UserError
from .grammar import ACTIVATIONS, canonical, decode, encode, is_valid
from .layers import make_divisible

PRESETS: dict[str, Callable] = {}


def register_preset(name: str):
    """Decorator registering `fn(slot) -> list of op strings` as preset `name`. The list may hold
    ops that do not fit the slot: `candidates` drops them, dedupes and puts "keep" first."""
    if not name or not name.replace("-", "").replace("_", "").isalnum():
        raise ValueError(f"preset name must be alphanumeric: {name!r}")

    def deco(fn):
        PRESETS[name] = fn
        return fn

    return deco


def _a(slot, act: str | None = None) -> str:
    a = act or slot.act
    return a if a in ACTIVATIONS else "relu"


def _se(slot) -> str:
    """SE token(s) in the teacher's style: MobileNetV3 slots get its hard-sigmoid SE."""
    return "_se25_hse" if "_hse" in (slot.teacher_op or "") else "_se25"


def _shape_keep(slot) -> list[str]:
    same = tuple(slot.in_shape) == tuple(slot.out_shape) and slot.stride == 1
    return ["keep", "skip" if same else "proj"]


def _span_ops(slot, expansions) -> list[str]:
    """Fused candidates of a span (one op replacing several blocks, the paper's kernel fusion):
    MBConvs at the span's kernel, from slim to wider than one block. They inherit the span's
    blocks merged into one (`ops.families.mbconv.span_source`), so e6 over two e6 blocks starts
    as the most important half of both; ops that cannot inherit are not trained. `es`
    (`ops.families.stride`) is left out: on Lite0's span 0-1 it distilled to a swap-one KL of 0.72
    (docs/RESULTS.md, session 14), far above what its saving is worth to a search."""
    k = slot.kernel if slot.kernel in (3, 5, 7) else 3
    return [f"ir_k{k}_e{x}_{_a(slot)}" for x in expansions]


@register_preset("tiny")
def tiny(slot) -> list[str]:
    """≈ 8 per slot, anchored on the teacher's own block: the cheap end (skip/proj, ds, e2) plus
    moderate slimming near it (its kernel at 1/2 and 2/3 of its expansion, a 3x3 kernel at full
    expansion). With a few hundred images, candidates close to the teacher's function distil best
    and compose best, and they are the ones a search under a moderate budget picks."""
    a = _a(slot)
    if slot.kind == "span":
        return _shape_keep(slot) + _span_ops(slot, (4, 8))
    if slot.kind == "ds":  # already cheap: only cheaper stand-ins
        return _shape_keep(slot) + [f"ir_k3_e1_{a}", f"er_k3_e1_{a}", f"conv_k1_{a}"]
    k = slot.kernel if slot.kernel in (3, 5, 7) else 3
    e = slot.expansion if slot.kind in ("ir", "er") and slot.expansion >= 2 else 6
    half, two_thirds = max(1, round(e / 2)), max(2, round(2 * e / 3))
    ops = _shape_keep(slot) + [f"ds_k3_{a}", f"ir_k3_e2_{a}", f"ir_k{k}_e{half}_{a}", f"ir_k{k}_e{two_thirds}_{a}"]
    ops += [f"ir_k3_e{round(e)}_{a}"] if k > 3 else [f"ir_k3_e{max(two_thirds + 1, round(5 * e / 6))}_{a}"]
    return ops + [f"ir_k3_e1_{a}", f"er_k3_e1_{a}"]


@register_preset("tiny-fused")
def tiny_fused(slot) -> list[str]:
    """`tiny`, plus fused MBConvs (`er`: a dense kxk expand conv, then the 1x1 project) at e2–e4 in
    stride-2 MBConv slots. There an inverted residual runs its 1x1 expansion at the input's full
    resolution and strides only in the depthwise conv; a fused one strides in its first conv. On ORT
    CPU int8 (AMD EPYC with VNNI; `benchmarks/probe_ops.py`) Lite1's stride-2 slot 1 ran `er_k3_e2`
    / `er_k3_e4` at 0.40 / 0.70 of its block against `ir_k3_e2` / `ir_k3_e4` at 0.67 / 0.80; in
    stride-1 slots fused ones were no cheaper than `ir` of the same width, so they are not added.
    They cannot inherit an `ir` teacher block (its ReLU6 sits between the two convs a fused one
    merges) and start from PyTorch's init: in Lite1's phase 1 they stayed behind the `ir` of about
    the same latency (slot 1: `er_k3_e4` validation MSE 0.187 against `ir_k3_e2`'s 0.139) and the
    search picked none at int8x 1.5–1.8 (docs/RESULTS.md, session 24). Kept for targets where
    depthwise convs are the slow ones (GPUs at large batch)."""
    ops = tiny(slot)
    if slot.kind == "ir" and slot.stride == 2:
        ops += [f"er_k3_e{x}_{_a(slot)}" for x in (2, 3, 4)]
    return ops


@register_preset("small")
def small(slot) -> list[str]:
    """≈ 26 per MBConv slot, anchored like `tiny` but dense near the teacher's block: every
    expansion below the teacher's in steps of 0.5 (whole steps at kernels 3 and 5 both, half steps
    at the teacher's kernel), a few wider kernels, SE, EdgeResidual, depthwise-separable and
    bottleneck stand-ins. Ops costlier than the teacher's block (full expansion at a larger kernel,
    fused convs wider than e1) are left out: a search never picks them, and each costs phase-1 time."""
    a = _a(slot)
    if slot.kind == "span":
        return _shape_keep(slot) + _span_ops(slot, (2, 3, 4, 5, 6, 8))
    if slot.kind == "ds":
        return _shape_keep(slot) + [f"ir_k3_e1_{a}", f"ir_k5_e1_{a}", f"er_k3_e1_{a}", f"conv_k1_{a}",
                                    f"bot_k3_e0.25_{a}", f"bot_k3_e0.5_{a}", f"ds_k3{_se(slot)}_{a}",
                                    f"ir_k3_e1{_se(slot)}_{a}"]
    k = slot.kernel if slot.kernel in (3, 5, 7) else 3
    e = slot.expansion if slot.kind in ("ir", "er") and slot.expansion >= 2 else 6
    whole = [x for x in range(1, int(e)) if x < e]
    ops = _shape_keep(slot)
    ops += [f"ir_k{kk}_e{x}_{a}" for kk in sorted({3, 5}) for x in whole]
    ops += [f"ir_k{k}_e{x + 0.5}_{a}" for x in whole if x + 0.5 < e]
    ops += [f"ir_k3_e{round(e)}_{a}"] if k > 3 else []
    ops += [f"ir_k7_e{x}_{a}" for x in (2, 3)]
    ops += [f"ir_k3_e{x}{_se(slot)}_{a}" for x in (2, 3)]
    ops += [f"er_k3_e1_{a}", f"ds_k3_{a}", f"ds_k5_{a}", f"bot_k3_e0.25_{a}", f"bot_k3_e0.5_{a}"]
    return ops


@register_preset("paper")
def paper(slot) -> list[str]:
    acts = sorted({"relu", "silu", "hswish", _a(slot)})
    ops = _shape_keep(slot)
    for a in acts:
        for se in ("", _se(slot)):
            ops += [f"ir_k{k}_e{e}{se}_{a}" for k in (3, 5, 7) for e in (1, 2, 3, 4, 6)]
            ops += [f"er_k{k}_e{e}{se}_{a}" for k in (3, 5, 7) for e in (1, 2, 3, 4, 6)]
            ops += [f"ds_k{k}{se}_{a}" for k in (3, 5, 7)]
        ops += [f"conv_k{k}_{a}" for k in (1, 3, 5)]
        ops += [f"bot_k3_e{e}_{a}" for e in (0.25, 0.5)]
    return ops


_VALID_CACHE: dict[tuple, bool] = {}


def _exp_for(width: int, in_chs: int) -> float:
    """The shortest expansion whose hidden width (timm's rounding to 8) is `width`."""
    for digits in range(2, 7):
        e = round(width / in_chs, digits)
        if make_divisible(in_chs * e) == width:
            return e
    return width / in_chs


def aligned(op: str, slot, align: int) -> list[str]:
    """`op`, or — where its hidden width (an `ir` / `er` expansion times the input channels) is not
    a multiple of `align` — the same op at the two multiples around that width.

    Why: int8 kernels work on channel blocks, and a width between two multiples of the block runs
    slower than the next multiple up. On ORT CPU int8 (AMD EPYC, 2 threads;
    `benchmarks/probe_widths.py`) an MBConv at 60x60 from 24 channels took 362 us at 120 hidden
    channels (e5) against 248 at 112 and 280 at 128; from 40 channels at 30x30, 295 us at 200 (e5)
    against 219 at 208 and 230 at the teacher's e6 (240): a search cannot want such ops. On Lite1
    the aligned candidates were picked but the students were no better (docs/RESULTS.md, session
    22), so this is opt-in (`distill.align`). The upper multiple stays within the teacher's own
    hidden width (what inheritance can fill)."""
    if not align:
        return [op]
    spec = decode(op)
    if spec.family not in ("ir", "er") or spec.exp is None:
        return [op]
    width = make_divisible(slot.in_chs * spec.exp)
    if width % align == 0:
        return [op]
    cap = make_divisible(slot.in_chs * slot.expansion) if slot.kind in ("ir", "er") else None
    lo, hi = width // align * align, (width // align + 1) * align
    widths = [w for w in (lo, hi) if w > 0 and (cap is None or w <= cap)]
    return [encode(replace(spec, exp=_exp_for(w, slot.in_chs))) for w in widths]


def candidates(slot, preset: str, align: int = 0) -> list[str]:
    """Canonical, deduplicated op strings of `preset` that fit `slot` ("keep" first).

    slot: a Slot or a merged span. preset: a registered preset name (tiny, small, paper, ...).
    align: hidden widths at multiples of this (`aligned`; 0: the preset's own widths).
    The teacher's own op string is left out: "keep" has its signature and its exact weights.
    """
    fn = PRESETS.get(preset)
    if fn is None:
        raise UserError(f"unknown preset '{preset}' (known: {', '.join(PRESETS)})")
    out, seen = ["keep"], {"keep", slot.teacher_op}
    for op in (a for o in fn(slot) for a in aligned(canonical(o), slot, align)):
        op = canonical(op)
        if op in seen:
            continue
        key = (op, tuple(slot.in_shape), tuple(slot.out_shape), slot.stride)
        if key not in _VALID_CACHE:
            _VALID_CACHE[key] = is_valid(op, slot)
        if _VALID_CACHE[key]:
            seen.add(op)
            out.append(op)
    return out
