"""`Candidate`: an op on a slot (or span); its signature keys every table."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from torch import nn

from ..teacher.slot import Slot
from .grammar import ACTIVATIONS, build, canonical


def _shape(s) -> str:
    return "x".join(str(int(v)) for v in s)


def signature(op: str, in_shape, out_shape, stride: int) -> str:
    return f"{op}|{_shape(in_shape)}|{_shape(out_shape)}|s{stride}"


@dataclass(frozen=True)
class Candidate:
    slot: Slot
    op: str

    @property
    def signature(self) -> str:
        """op + input shape + output shape + stride; `keep` signs as the teacher's own op, so it
        shares latency rows with an identical candidate anywhere."""
        op = self.slot.teacher_op if self.op == "keep" else canonical(self.op)
        return signature(op, self.slot.in_shape, self.slot.out_shape, self.slot.stride)

    def build(self, teacher_block: nn.Module | None = None) -> nn.Module:
        return build(self.op, self.slot, teacher_block)

    @cached_property
    def _cost(self) -> tuple[int, int]:
        import torch

        from ..teacher.decompose import count_macs

        if self.op == "keep":
            return self.slot.params, self.slot.macs
        m = self.build(None).eval()
        return sum(p.numel() for p in m.parameters()), count_macs(m, torch.zeros(1, *self.slot.in_shape))

    @property
    def params(self) -> int:
        return self._cost[0]

    @property
    def macs(self) -> int:
        return self._cost[1]


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(round(float(x), 4))


def _se_tokens(block: nn.Module, in_chs: int) -> list[str]:
    """`se<pct>` (+ `hse` for a hard-sigmoid gate) that rebuilds the block's SE width exactly."""
    from .layers import make_divisible

    se = getattr(block, "se", None)
    red = getattr(se, "conv_reduce", None)
    if not isinstance(red, nn.Conv2d):
        return []
    gate = getattr(se, "gate", None)
    hard = isinstance(gate, nn.Hardsigmoid) or "hard" in type(gate).__name__.lower()
    se_in, rd = red.in_channels, red.out_channels
    base = se_in if hard else in_chs
    width = (lambda p: make_divisible(se_in * p / 100)) if hard else (lambda p: max(1, int(round(in_chs * p / 100))))
    guess = max(1, round(100 * rd / base))
    # prefer timm's usual 25 %, then the nearest percentage that gives exactly `rd` channels
    for p in [25] + sorted(range(1, 10 * guess + 2), key=lambda p: abs(p - guess)):
        if width(p) == rd:
            return [f"se{p}"] + (["hse"] if hard else [])
    return [f"se{guess}"] + (["hse"] if hard else [])


def teacher_op_string(block: nn.Module) -> str:
    """The timm block described in the op grammar, e.g. Lite0's InvertedResidual → "ir_k3_e6_relu6",
    a MobileNetV3 block → "ir_k5_e6_se25_hse_hswish", ResNet BasicBlock → "basic_k3_relu". Building
    that string with the block as teacher reproduces the block exactly; "keep" if unsupported."""
    from ..teacher.decompose import block_facts

    try:
        f = block_facts("", block)
    except Exception:  # not a block the grammar describes: it keeps a signature of its own
        return "keep"
    act = f["act"] if f["act"] in ACTIVATIONS else None
    k, kind, groups = f["kernel"], f["kind"], f.get("groups", 1)
    g = [f"g{groups}"] if groups != 1 else []
    if kind in ("ir", "er"):
        parts = [kind, f"k{k}", f"e{_num(f['expansion'])}", *_se_tokens(block, f["in_chs"])]
    elif kind == "ds":
        parts = ["ds", f"k{k}", *_se_tokens(block, f["in_chs"])]
    elif kind == "cn":
        parts = ["conv", f"k{k}", *g]
    elif kind == "basic":
        parts = ["basic", f"k{k}"]
    elif kind == "bottleneck":
        parts = ["bot", f"k{k}", f"e{_num(f['expansion'])}", *g]
    else:
        return "keep"
    same = f["in_chs"] == f["out_chs"] and f["stride"] == 1
    if kind in ("ir", "er", "ds", "cn") and same and not f.get("has_skip", False):
        parts.append("noskip")
    if act:
        parts.append(act)
    return canonical("_".join(parts))
