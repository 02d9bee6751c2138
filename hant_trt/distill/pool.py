"""The candidate pool of a decomposition: op lists, modules (teacher-initialised), trained weights.

The only place phase 1 talks to `hant_trt.ops`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from ..teacher.decompose import Decomposition, module_slot_of, span_teacher
from ..teacher.slot import Slot


def candidate_ops(slot: Slot, preset: str, fused: bool = False, align: int = 0) -> list[str]:
    from ..ops import candidates

    ops = candidates(slot, preset, align)
    if fused:  # a span's "keep" is the teacher's blocks; "skip" would drop several layers at once
        ops = [o for o in ops if o not in ("keep",)]
    return ops


def build_candidate(op: str, slot: Slot, teacher: nn.Module) -> tuple[nn.Module, bool]:
    """(module, inherits): the candidate, initialised from the teacher's weights where it can."""
    from ..ops import build, inherits

    return build(op, slot, teacher), bool(inherits(op, slot, teacher))


@dataclass(frozen=True)
class TrainedPart:
    """A module standing in for the teacher's slots first..last: a distilled candidate, a slot's own
    block (`keep`), or either simulated at int8. `key` names it in swap-one scoring."""

    key: str
    first: int
    last: int
    op: str
    module: nn.Module
    precision: str = "fp32"

    @property
    def where(self) -> tuple[int, int, str]:
        """(first, last, op): what a solution's choice names."""
        return self.first, self.last, self.op


def keep_entries(d: Decomposition) -> list[TrainedPart]:
    """Every slot's own teacher block."""
    return [TrainedPart(f"{s.name}:keep", s.index, s.index, "keep", d.blocks[s.index]) for s in d.slots]


def load_trained(folder: Path, d: Decomposition) -> list[TrainedPart]:
    """Every distilled candidate in `folder` (slot*.json), at fp32."""
    from safetensors.torch import load_file

    out = []
    for meta_path in sorted(Path(folder).glob("slot*.json"), key=lambda p: _slot_order(p.stem)):
        meta = json.loads(meta_path.read_text())
        first, last = meta["first"], meta["last"]
        slot = module_slot_of(d.slots, first, last)
        teacher = span_teacher(d, first, last)
        wpath = meta_path.with_suffix(".safetensors")
        tensors = load_file(str(wpath)) if wpath.exists() else {}
        for c in meta["candidates"]:
            op = c["op"]
            module, _ = build_candidate(op, slot, teacher)
            prefix = f"{op}::"
            sd = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
            module.load_state_dict(sd, strict=True)
            module.eval()
            out.append(TrainedPart(f"{slot.name}:{op}", first, last, op, module))
    return out


def _slot_order(stem: str) -> tuple[int, int]:
    a, _, b = stem.removeprefix("slot").partition("-")
    return int(a), int(b or a)


def signature_of(d: Decomposition, first: int, last: int, op: str) -> str:
    from ..ops import Candidate

    return Candidate(module_slot_of(d.slots, first, last), op).signature


def cost_of(d: Decomposition, first: int, last: int, op: str, module: nn.Module) -> tuple[int, int]:
    """(params, MACs) of a candidate module at its slot's input shape."""
    import torch

    from ..ops.cost import count_macs

    slot = module_slot_of(d.slots, first, last)
    params = sum(p.numel() for p in module.parameters())
    was = module.training
    module.eval()
    macs = count_macs(module, torch.zeros(1, *slot.in_shape))
    module.train(was)
    return params, macs
