"""The op grammar: compact, self-describing candidate strings, in the spirit of timm's block strings.

    ir_k5_e3_se25_silu   inverted residual (MBConv), kernel 5, expansion 3, SE 25 %, SiLU
    er_k3_e4_relu        fused MBConv / EdgeResidual
    ds_k3_relu6          depthwise-separable
    conv_k3_relu         plain conv
    bot_k3_e0.25_g32_relu  ResNet(-Xt) bottleneck (e = mid / out channels, g = groups)
    basic_k3_relu        ResNet basic block
    skip / proj / keep   identity / cheap 1x1 projection / the teacher's own block
    ir_k5_e6_se25_hse_hswish  MobileNetV3-style SE (flag `hse`); `noskip` drops the residual

Tokens are `_`-joined: the family code first, then options in the canonical order k, e, se, g,
the family's flags (alphabetical), act. `se<pct>` is the SE reduction in percent of the block's
input channels (timm EfficientNet); with the `hse` flag it is in percent of the SE's own input
(the hidden channels), rounded to a multiple of 8, with a ReLU and a hard-sigmoid gate (timm
MobileNetV3), so each teacher block has one string that rebuilds it exactly.
One registry maps a family code to what it accepts and how it builds, so a new family is one
decorated function in its own module (`register_family`), never an edit here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Callable

from torch import nn

from ..errors import UserError

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": lambda: nn.ReLU(inplace=True),
    "relu6": lambda: nn.ReLU6(inplace=True),
    "silu": lambda: nn.SiLU(inplace=True),
    "hswish": lambda: nn.Hardswish(inplace=True),
    "gelu": lambda: nn.GELU(),
}


@dataclass(frozen=True)
class OpSpec:
    """One parsed op string.

    family: registered family code ("ir", "ds", ...). kernel: spatial kernel (odd) or None.
    exp: expansion (hidden / input channels; for `bot` mid / output) or None. se: SE reduction in
    percent (0: no SE). groups: conv groups (default 1). act: activation name or None (None: the
    slot's own activation). flags: family-specific switches such as "hse", "noskip" (sorted).
    """

    family: str
    kernel: int | None = None
    exp: float | None = None
    se: int = 0
    groups: int = 1
    act: str | None = None
    flags: tuple[str, ...] = ()


@dataclass(frozen=True)
class Family:
    """A registered family: `build(spec, slot, teacher_block) -> (module, inherited)`; `validate(spec,
    slot)` raises UserError when the op cannot realise the slot (None: try building it)."""

    code: str
    build: Callable
    options: frozenset         # which of kernel/exp/se/groups/act it accepts
    required: frozenset
    flags: frozenset = frozenset()
    validate: Callable | None = None
    doc: str = ""
    teacher_bound: bool = False  # built from the teacher's blocks alone: its signature names them


REGISTRY: dict[str, Family] = {}
_OPTIONS = {"kernel", "exp", "se", "groups", "act"}
_GENERIC = re.compile(r"(k|e|se|g)\d")


def register_family(code: str, options=(), required=(), flags=(), validate: Callable | None = None,
                    doc: str = "", teacher_bound: bool = False):
    """Decorator registering a family's build function under `code` — the only step to add one.

    code: the op strings' first token (lowercase alphanumeric). options: which of kernel, exp, se,
    groups, act the family accepts (default none). required: options that must be given. flags:
    bare word tokens the family accepts (e.g. "noskip"). validate: optional cheap check
    `(spec, slot) -> None` raising UserError where the op cannot fit the slot; presets use it to
    filter without building. doc: one line for listings (default: the function's docstring).
    """
    if not re.fullmatch(r"[a-z][a-z0-9]*", code):
        raise ValueError(f"family code must be lowercase alphanumeric: {code!r}")
    unknown = set(options) - _OPTIONS
    if unknown or not set(required) <= set(options):
        raise ValueError(f"family {code!r}: options must be among {sorted(_OPTIONS)} and include required")
    for f in flags:
        if not re.fullmatch(r"[a-z][a-z0-9]*", f) or f in ACTIVATIONS or _GENERIC.match(f):
            raise ValueError(f"family {code!r}: flag {f!r} must be a word that is no other token")

    def deco(fn):
        REGISTRY[code] = Family(code, fn, frozenset(options), frozenset(required), frozenset(flags),
                                validate, doc or (fn.__doc__ or "").strip().split("\n")[0], teacher_bound)
        return fn

    return deco


def _fmt(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(float(x))


_TOKENS = [
    ("kernel", re.compile(r"k(\d+)"), int),
    ("exp", re.compile(r"e(\d+(?:\.\d+)?)"), float),
    ("se", re.compile(r"se(\d+)"), int),
    ("groups", re.compile(r"g(\d+)"), int),
]


def decode(text: str) -> OpSpec:
    """Parse an op string; unknown families or tokens are user errors naming what is known (the
    built-in families are registered by `hant_trt.ops`, which Python imports before this module)."""
    if not isinstance(text, str) or not text:
        raise UserError("empty op string: give e.g. 'ir_k3_e3_relu' or 'keep'")
    code, *tokens = text.split("_")
    fam = REGISTRY.get(code)
    if fam is None:
        raise UserError(f"unknown op family '{code}' in '{text}' (known: {', '.join(sorted(REGISTRY))})")
    fields: dict = {}
    flags: list[str] = []
    for tok in tokens:
        for name, rx, conv in _TOKENS:
            m = rx.fullmatch(tok)
            if m:
                break
        else:
            if tok in ACTIVATIONS:
                name, value = "act", tok
            elif tok in fam.flags:
                if tok in flags:
                    raise UserError(f"token '{tok}' repeats in op '{text}'")
                flags.append(tok)
                continue
            else:
                extra = f"; flags of '{code}': {', '.join(sorted(fam.flags))}" if fam.flags else ""
                raise UserError(f"unknown token '{tok}' in op '{text}' (expected k<int>, e<num>, se<pct>, "
                                f"g<int> or an activation: {', '.join(ACTIVATIONS)}{extra})")
            m = None
        if m is not None:
            value = conv(m.group(1))
        if name in fields:
            raise UserError(f"token '{tok}' repeats a setting in op '{text}'")
        if name not in fam.options:
            raise UserError(f"op family '{code}' takes no '{tok}' (in '{text}')")
        fields[name] = value
    missing = fam.required - set(fields)
    if missing:
        raise UserError(f"op '{text}' lacks {', '.join(sorted(missing))} for family '{code}'")
    spec = OpSpec(family=code, flags=tuple(sorted(flags)), **fields)
    if spec.kernel is not None and (spec.kernel < 1 or spec.kernel % 2 == 0):
        raise UserError(f"op '{text}': kernel must be odd and positive")
    if spec.exp is not None and spec.exp <= 0:
        raise UserError(f"op '{text}': expansion must be positive")
    if spec.groups < 1:
        raise UserError(f"op '{text}': groups must be >= 1")
    return spec


def encode(spec: OpSpec) -> str:
    """The canonical op string of `spec` (encode(decode(s)) == s for canonical s)."""
    parts = [spec.family]
    if spec.kernel is not None:
        parts.append(f"k{spec.kernel}")
    if spec.exp is not None:
        parts.append(f"e{_fmt(spec.exp)}")
    if spec.se:
        parts.append(f"se{spec.se}")
    if spec.groups != 1:
        parts.append(f"g{spec.groups}")
    parts.extend(sorted(spec.flags))
    if spec.act:
        parts.append(spec.act)
    return "_".join(parts)


def canonical(text: str) -> str:
    """`text` in canonical token order (raises UserError for a bad op string)."""
    return encode(decode(text))


def check(op: str | OpSpec, slot) -> None:
    """Raise UserError if `op` cannot realise `slot`'s shapes and stride (cheap where the family has
    a validate hook; otherwise by building it once without a teacher)."""
    spec = decode(op) if isinstance(op, str) else op
    fam = REGISTRY[spec.family]
    if fam.validate is not None:
        fam.validate(spec, slot)
    elif spec.family != "keep":
        fam.build(spec, slot, None)


def is_valid(op: str | OpSpec, slot) -> bool:
    """Whether `op` fits `slot` (see `check`)."""
    try:
        check(op, slot)
    except UserError:
        return False
    return True


def build_with_info(op: str | OpSpec, slot, teacher_block: nn.Module | None = None):
    """(module, inherited): the op built for `slot`'s exact shapes and stride, initialised from
    `teacher_block`'s weights where the shapes allow."""
    spec = decode(op) if isinstance(op, str) else op
    fam = REGISTRY[spec.family]
    if fam.validate is not None:
        fam.validate(spec, slot)
    module, inherited = fam.build(spec, slot, teacher_block)
    return module, bool(inherited)


def build(op: str | OpSpec, slot, teacher_block: nn.Module | None = None) -> nn.Module:
    """The op as an nn.Module for `slot` (Slot or merged span). teacher_block: the teacher's module
    for that slot (default None: no inheritance; required for `keep`)."""
    return build_with_info(op, slot, teacher_block)[0]


def inherits(op: str | OpSpec, slot, teacher_block: nn.Module | None = None) -> bool:
    """Whether `op` starts from `teacher_block`'s weights on `slot` (builds it once to find out;
    prefer `build_with_info` when the module is needed too)."""
    return build_with_info(op, slot, teacher_block)[1]


def with_act(spec: OpSpec, act: str) -> OpSpec:
    return replace(spec, act=act)
