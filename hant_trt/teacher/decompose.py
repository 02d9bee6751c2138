"""Cut a timm model into stem → slots → head.

One adapter per model family says where the stem, the replaceable blocks and the head are; block
facts (kind, kernel, expansion, SE, activation) are read from the block's own layers, and shapes,
params and MACs from one forward pass at the chosen resolution.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from ..errors import UserError
from ..ops.cost import count_macs
from ..ops.grammar import ACTIVATIONS, canonical
from ..ops.layers import make_divisible
from .slot import Slot


@dataclass
class Decomposition:
    """stem → blocks[0] → … → blocks[-1] → head reproduces the model's logits."""

    family: str
    stem: nn.Module
    blocks: list[nn.Module]
    head: nn.Module
    slots: list[Slot]
    fixed: dict = field(default_factory=dict)   # stem/head shapes, params, MACs

    def forward(self, x: torch.Tensor, replace: dict[int, nn.Module] | None = None) -> torch.Tensor:
        """Logits, optionally with some slot indices replaced by other modules."""
        replace = replace or {}
        x = self.stem(x)
        for i, block in enumerate(self.blocks):
            x = replace.get(i, block)(x)
        return self.head(x)


def _get(model: nn.Module, name: str) -> nn.Module:
    return getattr(model, name, None) or nn.Identity()


def _efficientnet(model):
    stem = nn.Sequential(model.conv_stem, model.bn1)
    head = nn.Sequential(_get(model, "conv_head"), _get(model, "bn2"), model.global_pool, model.classifier)
    blocks = [(f"blocks.{i}.{j}", b) for i, stage in enumerate(model.blocks) for j, b in enumerate(stage)]
    return stem, blocks, head


def _mobilenetv3(model):
    stem = nn.Sequential(model.conv_stem, model.bn1)
    head = nn.Sequential(model.global_pool, _get(model, "conv_head"), _get(model, "norm_head"),
                         _get(model, "act2"), _get(model, "flatten"), model.classifier)
    blocks = [(f"blocks.{i}.{j}", b) for i, stage in enumerate(model.blocks) for j, b in enumerate(stage)]
    return stem, blocks, head


def _resnet(model):
    stem = nn.Sequential(model.conv1, model.bn1, model.act1, model.maxpool)
    head = nn.Sequential(model.global_pool, model.fc)
    blocks = [(f"layer{i}.{j}", b) for i in range(1, 5) for j, b in enumerate(getattr(model, f"layer{i}"))]
    return stem, blocks, head


ADAPTERS = {"EfficientNet": _efficientnet, "MobileNetV3": _mobilenetv3, "ResNet": _resnet}


def act_name(module: nn.Module | None) -> str:
    if module is None:
        return "none"
    n = type(module).__name__.lower()
    for key, name in (("relu6", "relu6"), ("hardswish", "hswish"), ("hard_swish", "hswish"),
                      ("silu", "silu"), ("swish", "silu"), ("gelu", "gelu"), ("relu", "relu"),
                      ("identity", "none")):
        if key in n:
            return name
    return n


def _se_ratio(block: nn.Module, in_chs: int) -> float:
    se = getattr(block, "se", None)
    reduce = getattr(se, "conv_reduce", None)
    if reduce is None:
        return 0.0
    return round(reduce.out_channels / in_chs, 4)


def _bn_act(bn: nn.Module) -> str:
    return act_name(getattr(bn, "act", None))


def block_facts(path: str, block: nn.Module) -> dict:
    """kind, in/out chs, stride, expansion, kernel, se, act, groups of one supported block."""
    cls = type(block).__name__
    if cls == "DepthwiseSeparableConv":
        dw, pw = block.conv_dw, block.conv_pw
        return dict(kind="ds", in_chs=dw.in_channels, out_chs=pw.out_channels, stride=dw.stride[0],
                    expansion=1.0, kernel=dw.kernel_size[0], se=_se_ratio(block, dw.in_channels),
                    act=_bn_act(block.bn1), has_skip=bool(block.has_skip))
    if cls == "InvertedResidual":
        pw, dw, pwl = block.conv_pw, block.conv_dw, block.conv_pwl
        return dict(kind="ir", in_chs=pw.in_channels, out_chs=pwl.out_channels, stride=dw.stride[0],
                    expansion=round(pw.out_channels / pw.in_channels, 4), kernel=dw.kernel_size[0],
                    se=_se_ratio(block, pw.in_channels), act=_bn_act(block.bn1),
                    has_skip=bool(block.has_skip))
    if cls == "EdgeResidual":
        ex, pwl = block.conv_exp, block.conv_pwl
        return dict(kind="er", in_chs=ex.in_channels, out_chs=pwl.out_channels, stride=ex.stride[0],
                    expansion=round(ex.out_channels / ex.in_channels, 4), kernel=ex.kernel_size[0],
                    se=_se_ratio(block, ex.in_channels), act=_bn_act(block.bn1),
                    has_skip=bool(block.has_skip))
    if cls == "ConvBnAct":
        c = block.conv
        return dict(kind="cn", in_chs=c.in_channels, out_chs=c.out_channels, stride=c.stride[0],
                    expansion=1.0, kernel=c.kernel_size[0], se=0.0, act=_bn_act(block.bn1),
                    has_skip=bool(getattr(block, "has_skip", False)), groups=c.groups)
    if cls == "BasicBlock":
        c1, c2 = block.conv1, block.conv2
        return dict(kind="basic", in_chs=c1.in_channels, out_chs=c2.out_channels, stride=c1.stride[0],
                    expansion=1.0, kernel=c1.kernel_size[0], se=0.0, act=act_name(block.act1),
                    has_skip=True, groups=c1.groups)
    if cls == "Bottleneck":
        c1, c2, c3 = block.conv1, block.conv2, block.conv3
        return dict(kind="bottleneck", in_chs=c1.in_channels, out_chs=c3.out_channels,
                    stride=c2.stride[0], expansion=round(c2.out_channels / c3.out_channels, 4),
                    kernel=c2.kernel_size[0], se=0.0, act=act_name(block.act1), has_skip=True,
                    groups=c2.groups)
    raise UserError(f"cannot cut this model into slots: first unsupported module is '{path}' ({cls})")


def _params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(round(float(x), 4))


def _se_tokens(block: nn.Module, in_chs: int) -> list[str]:
    """`se<pct>` (+ `hse` for a hard-sigmoid gate) that rebuilds the block's SE width exactly."""
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


def decompose(model: nn.Module, resolution: int = 224) -> Decomposition:
    """Slots of a supported timm model at `resolution` (square input)."""
    cls = type(model).__name__
    if cls not in ADAPTERS:
        first = next((f"{n} ({type(m).__name__})" for n, m in model.named_children()), cls)
        raise UserError(f"cannot cut '{cls}' into slots (supported: {', '.join(ADAPTERS)}); "
                        f"first unsupported module: {first}")
    stem, named_blocks, head = ADAPTERS[cls](model)
    facts = [block_facts(p, b) for p, b in named_blocks]
    was_training = model.training
    model.eval()
    x = torch.zeros(1, 3, resolution, resolution)
    with torch.no_grad():
        stem_in = tuple(x.shape[1:])
        stem_macs = count_macs(stem, x)
        x = stem(x)
        shapes = []
        macs = []
        for _, b in named_blocks:
            inp = tuple(x.shape[1:])
            macs.append(count_macs(b, x))
            x = b(x)
            shapes.append((inp, tuple(x.shape[1:])))
        head_in = tuple(x.shape[1:])
        head_macs = count_macs(head, x)
        out = head(x)
    model.train(was_training)
    slots = []
    for i, ((path, block), f, (inp, outp), m) in enumerate(zip(named_blocks, facts, shapes, macs)):
        slots.append(Slot(index=i, path=path, in_shape=inp, out_shape=outp, params=_params(block),
                          macs=m, teacher_op=teacher_op_string(block), **f))
    fixed = {
        "stem": {"in_shape": list(stem_in), "out_shape": list(shapes[0][0]) if shapes else list(head_in),
                 "params": _params(stem), "macs": stem_macs},
        "head": {"in_shape": list(head_in), "out_shape": list(out.shape[1:]), "params": _params(head),
                 "macs": head_macs},
    }
    return Decomposition(family=cls, stem=stem, blocks=[b for _, b in named_blocks], head=head,
                         slots=slots, fixed=fixed)


def module_slot_of(slots, first: int, last: int):
    """The Slot (merged for a span) covering first..last."""
    from .slot import merge

    return slots[first] if first == last else merge(slots[first:last + 1])


def span_teacher(d: Decomposition, first: int, last: int) -> nn.Module:
    return d.blocks[first] if first == last else nn.Sequential(*d.blocks[first:last + 1])
