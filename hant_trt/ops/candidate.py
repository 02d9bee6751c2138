"""`Candidate`: an op on a slot (or span); its signature keys every table."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from torch import nn

from ..teacher.slot import Slot
from .grammar import REGISTRY, build, canonical, decode


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
        shares latency rows with an identical candidate anywhere; an op built from the teacher's
        blocks (`teacher_bound`) signs with them, e.g. `es[ds_k3_relu6+ir_k3_e6_relu6]`."""
        if self.op == "keep":
            op = self.slot.teacher_op
        else:
            op = canonical(self.op)
            if REGISTRY[decode(op).family].teacher_bound:
                op = f"{op}[{self.slot.teacher_op}]"
        return signature(op, self.slot.in_shape, self.slot.out_shape, self.slot.stride)

    def build(self, teacher_block: nn.Module | None = None) -> nn.Module:
        return build(self.op, self.slot, teacher_block)

    @cached_property
    def _cost(self) -> tuple[int, int]:
        import torch

        from .cost import count_macs

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
