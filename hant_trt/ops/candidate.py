"""`Candidate`: an op on a slot (or span); its signature keys every table."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from torch import nn

from ..teacher.slot import Slot
from .grammar import build, canonical


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


def _pct(x: float) -> int:
    return int(round(100 * x))


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(round(float(x), 4))


def teacher_op_string(block: nn.Module) -> str:
    """The timm block described in the op grammar (used for `keep`'s signature)."""
    from ..teacher.decompose import block_facts

    f = block_facts("", block)
    act = f["act"] if f["act"] not in ("none",) else None
    se = f"_se{_pct(f['se'])}" if f["se"] else ""
    tail = f"_{act}" if act else ""
    k = f["kernel"]
    kind = f["kind"]
    if kind == "ir":
        return f"ir_k{k}_e{_num(f['expansion'])}{se}{tail}"
    if kind == "er":
        return f"er_k{k}_e{_num(f['expansion'])}{se}{tail}"
    if kind == "ds":
        return f"ds_k{k}{se}{tail}"
    if kind == "cn":
        g = f"_g{f['groups']}" if f.get("groups", 1) != 1 else ""
        return f"conv_k{k}{g}{tail}"
    if kind == "basic":
        return f"basic_k{k}{tail}"
    if kind == "bottleneck":
        g = f"_g{f['groups']}" if f.get("groups", 1) != 1 else ""
        return f"bot_k{k}_e{_num(f['expansion'])}{g}{tail}"
    return f"keep"
