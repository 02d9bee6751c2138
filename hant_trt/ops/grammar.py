"""The op grammar: compact, self-describing candidate strings, in the spirit of timm's block strings.

    ir_k5_e3_se25_silu   inverted residual (MBConv), kernel 5, expansion 3, SE 25 %, SiLU
    er_k3_e4_relu        fused MBConv / EdgeResidual
    ds_k3_relu6          depthwise-separable
    conv_k3_relu         plain conv
    bot_k3_e0.25_g32_relu  ResNet(-Xt) bottleneck (e = mid / out channels, g = groups)
    basic_k3_relu        ResNet basic block
    skip / proj / keep   identity / cheap 1x1 projection / the teacher's own block

Tokens are `_`-joined: the family code first, then options in the canonical order k, e, se, g, act.
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
    family: str
    kernel: int | None = None
    exp: float | None = None
    se: int = 0                 # SE reduction as % of the block's input channels (0: none)
    groups: int = 1
    act: str | None = None


@dataclass(frozen=True)
class Family:
    code: str
    build: Callable            # (spec, slot, teacher_block | None) -> (nn.Module, inherited: bool)
    options: frozenset         # which of kernel/exp/se/groups/act it accepts
    required: frozenset
    doc: str = ""


REGISTRY: dict[str, Family] = {}


def register_family(code: str, options=(), required=(), doc: str = ""):
    """Decorator: register `build(spec, slot, teacher_block) -> (module, inherited)` under `code`."""
    if not re.fullmatch(r"[a-z][a-z0-9]*", code):
        raise ValueError(f"family code must be lowercase alphanumeric: {code!r}")

    def deco(fn):
        REGISTRY[code] = Family(code, fn, frozenset(options), frozenset(required), doc or (fn.__doc__ or ""))
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
    """Parse an op string; unknown families or tokens are user errors naming what is known."""
    from . import families  # noqa: F401  (registers the built-in families)

    if not isinstance(text, str) or not text:
        raise UserError(f"empty op string")
    code, *tokens = text.split("_")
    fam = REGISTRY.get(code)
    if fam is None:
        raise UserError(f"unknown op family '{code}' in '{text}' (known: {', '.join(sorted(REGISTRY))})")
    fields: dict = {}
    for tok in tokens:
        for name, rx, conv in _TOKENS:
            m = rx.fullmatch(tok)
            if m:
                break
        else:
            if tok in ACTIVATIONS:
                name, value = "act", tok
            else:
                raise UserError(f"unknown token '{tok}' in op '{text}' (expected k<int>, e<num>, se<pct>, "
                                f"g<int> or an activation: {', '.join(ACTIVATIONS)})")
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
    spec = OpSpec(family=code, **fields)
    if spec.kernel is not None and (spec.kernel < 1 or spec.kernel % 2 == 0):
        raise UserError(f"op '{text}': kernel must be odd and positive")
    if spec.exp is not None and spec.exp <= 0:
        raise UserError(f"op '{text}': expansion must be positive")
    if spec.groups < 1:
        raise UserError(f"op '{text}': groups must be >= 1")
    return spec


def encode(spec: OpSpec) -> str:
    parts = [spec.family]
    if spec.kernel is not None:
        parts.append(f"k{spec.kernel}")
    if spec.exp is not None:
        parts.append(f"e{_fmt(spec.exp)}")
    if spec.se:
        parts.append(f"se{spec.se}")
    if spec.groups != 1:
        parts.append(f"g{spec.groups}")
    if spec.act:
        parts.append(spec.act)
    return "_".join(parts)


def canonical(text: str) -> str:
    return encode(decode(text))


def build_with_info(op: str | OpSpec, slot, teacher_block: nn.Module | None = None):
    """(module, inherited): the op built for `slot`'s exact shapes and stride, initialised from
    `teacher_block`'s weights where the shapes allow."""
    spec = decode(op) if isinstance(op, str) else op
    module, inherited = REGISTRY[spec.family].build(spec, slot, teacher_block)
    return module, bool(inherited)


def build(op: str | OpSpec, slot, teacher_block: nn.Module | None = None) -> nn.Module:
    return build_with_info(op, slot, teacher_block)[0]


def inherits(op: str | OpSpec, slot, teacher_block: nn.Module | None = None) -> bool:
    return build_with_info(op, slot, teacher_block)[1]


def with_act(spec: OpSpec, act: str) -> OpSpec:
    return replace(spec, act=act)
