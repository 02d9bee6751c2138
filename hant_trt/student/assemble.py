"""The student: teacher's fixed parts + one chosen module per slot or span.

Saved as `weights.safetensors` + `spec.json`; the spec alone (with the weights) rebuilds the exact
model without the run directory: `load_student(folder)`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from .. import atomic
from ..errors import UserError


@dataclass
class Choice:
    first: int
    last: int
    op: str
    precision: str = "fp32"


@dataclass
class StudentSpec:
    model: str                       # timm name of the teacher architecture
    resolution: int
    data_config: dict
    choices: list[Choice]
    format: int = 1
    notes: dict = field(default_factory=dict)
    fixed_precision: dict = field(default_factory=dict)   # {"stem": "int8", ...} when not the base precision

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "StudentSpec":
        if d.get("format") != 1:
            raise UserError(f"student spec format {d.get('format')} is not supported (expected 1)")
        d = dict(d)
        d["choices"] = [Choice(**c) for c in d["choices"]]
        return cls(**d)


class Student(nn.Module):
    """stem → parts (one per chosen slot/span) → head."""

    def __init__(self, stem: nn.Module, parts: list[nn.Module], head: nn.Module):
        super().__init__()
        self.stem = stem
        self.parts = nn.ModuleList(parts)
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for p in self.parts:
            x = p(x)
        return self.head(x)


def validate_choices(choices: list[Choice], n_slots: int) -> None:
    """Every slot covered exactly once, in order."""
    nxt = 0
    for c in sorted(choices, key=lambda c: c.first):
        if c.first != nxt or c.last < c.first:
            raise UserError(f"choices do not cover slot {nxt} exactly once (got {c.first}-{c.last} {c.op})")
        nxt = c.last + 1
    if nxt != n_slots:
        raise UserError(f"choices cover slots 0..{nxt - 1}, the teacher has {n_slots}")


def replaced_parts(student: Student, ordered: list[Choice]) -> list[nn.Module]:
    """The student's parts that are not the teacher's own block (`ordered`: its choices by slot)."""
    return [p for p, c in zip(student.parts, ordered) if c.op != "keep"]


def assemble(decomposition, choices: list[Choice], trained: dict[tuple[int, int, str], nn.Module] | None = None
             ) -> Student:
    """A Student from a decomposition (a deep copy: the teacher stays untouched).

    `trained` maps (first, last, op) to a trained module; missing ones are built fresh from the op
    (teacher-initialised), `keep` copies the teacher's block(s).
    """
    import copy

    from ..teacher.decompose import module_slot_of, span_teacher

    d = decomposition
    validate_choices(choices, len(d.slots))
    parts = []
    for c in sorted(choices, key=lambda c: c.first):
        teacher = span_teacher(d, c.first, c.last)
        if c.op == "keep":
            parts.append(copy.deepcopy(teacher))
            continue
        module = (trained or {}).get((c.first, c.last, c.op))
        if module is None:
            from ..ops import build

            module = build(c.op, module_slot_of(d.slots, c.first, c.last), teacher)
        parts.append(copy.deepcopy(module))
    student = Student(copy.deepcopy(d.stem), parts, copy.deepcopy(d.head)).eval()
    # copies inherit requires_grad from a teacher that was frozen for an earlier fine-tune: what a
    # fine-tune trains is its own choice (`trainable`), not an accident of call order
    return student.requires_grad_(True)


def save_student(folder: Path, student: Student, spec: StudentSpec) -> Path:
    folder = Path(folder)
    atomic.save_tensors(folder / "weights.safetensors", student.state_dict())
    atomic.write_json(folder / "spec.json", spec.to_dict())
    return folder


def load_student(folder: Path) -> tuple[Student, StudentSpec]:
    """Rebuild a saved student from spec.json + weights.safetensors alone."""
    from safetensors.torch import load_file

    from ..teacher.decompose import decompose
    from ..teacher.load import create_model

    folder = Path(folder)
    sp, wp = folder / "spec.json", folder / "weights.safetensors"
    if not sp.is_file() or not wp.is_file():
        raise UserError(f"{folder} holds no saved student (spec.json + weights.safetensors)")
    try:
        spec = StudentSpec.from_dict(json.loads(sp.read_text()))
    except (json.JSONDecodeError, TypeError, KeyError) as exc:
        raise UserError(f"{sp} is not a valid student spec ({exc})") from None
    model = create_model(spec.model, pretrained=False).eval()
    d = decompose(model, spec.resolution)
    student = assemble(d, spec.choices)
    try:
        student.load_state_dict(load_file(str(wp)), strict=True)
    except RuntimeError as exc:
        raise UserError(f"{wp} does not fit {sp}: {str(exc).splitlines()[0]}") from None
    return student.eval(), spec


def load_deployed(folder: Path):
    """(model, spec) of a saved student as deployed: its int8 parts simulated from the ranges the
    build saved (`INT8_CALIB`), the plain student when it has none."""
    from ..quant.calibrate import CalibResult
    from ..quant.parts import int8_parts
    from ..quant.plan import simulate_int8
    from ..runfiles import INT8_CALIB

    student, spec = load_student(folder)
    path = Path(folder) / INT8_CALIB
    if path.exists():
        calib = CalibResult.from_json(json.loads(path.read_text()))
        student = simulate_int8(student, int8_parts(spec.choices), calib)
    return student, spec
