"""`Slot`: one replaceable layer of the teacher (or a span of consecutive ones, for fusion)."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Slot:
    """A replaceable layer. Shapes are per sample, (C, H, W), at the run's resolution.

    `index`..`last` is the span of teacher slots it covers (equal for an ordinary slot).
    `teacher_op` is the op string (see `hant_trt.ops`) that describes the teacher's own block, so
    that `keep` shares its signature (and its latency) with an identical candidate elsewhere.
    """

    index: int
    path: str                      # module path in the teacher, e.g. "blocks.3.0"
    kind: str                      # ds | ir | er | cn | basic | bottleneck
    in_chs: int
    out_chs: int
    stride: int
    expansion: float               # hidden / in channels (1 where the block has no expansion)
    kernel: int
    se: float                      # SE ratio (0: none)
    act: str                       # relu | relu6 | silu | hswish | gelu
    in_shape: tuple[int, int, int]
    out_shape: tuple[int, int, int]
    params: int
    macs: int
    has_skip: bool = False
    teacher_op: str = "keep"
    last: int = -1                 # last slot index covered; -1 means == index
    groups: int = 1

    @property
    def end(self) -> int:
        return self.index if self.last < 0 else self.last

    @property
    def span(self) -> tuple[int, int]:
        return (self.index, self.end)

    @property
    def name(self) -> str:
        """Slot id as written in tables: "3" or, for a span, "3-4"."""
        return str(self.index) if self.end == self.index else f"{self.index}-{self.end}"

    def to_dict(self) -> dict:
        d = asdict(self)
        d["in_shape"] = list(self.in_shape)
        d["out_shape"] = list(self.out_shape)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Slot":
        d = dict(d)
        d["in_shape"] = tuple(d["in_shape"])
        d["out_shape"] = tuple(d["out_shape"])
        return cls(**d)


def merge(slots: list[Slot]) -> Slot:
    """The span of consecutive slots as one Slot (what a fused candidate replaces)."""
    first, last = slots[0], slots[-1]
    stride = 1
    for s in slots:
        stride *= s.stride
    return Slot(
        index=first.index, last=last.end,
        path="+".join(s.path for s in slots),
        kind="span", in_chs=first.in_chs, out_chs=last.out_chs, stride=stride,
        expansion=max(s.expansion for s in slots), kernel=max(s.kernel for s in slots),
        se=max(s.se for s in slots), act=first.act,
        in_shape=first.in_shape, out_shape=last.out_shape,
        params=sum(s.params for s in slots), macs=sum(s.macs for s in slots),
        has_skip=first.in_shape == last.out_shape,
        teacher_op="+".join(s.teacher_op for s in slots),
    )
