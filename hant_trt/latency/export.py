"""PyTorch module → ONNX: opset ≥ 17, static shapes, BatchNorm folded, checked, written atomically.

BatchNorm is folded in PyTorch first (`fold_batchnorm`), so the exported weights are bit-for-bit
the weights that `fakequant.fake_quantize` quantizes: int8 scores in PyTorch and the Q/DQ ONNX see
the same numbers. Whatever BatchNormalization survives (a BN not directly after a conv in module
order, an untraceable module) is folded on the ONNX graph (`fold_batchnorm_onnx`).

Node names keep torch module paths (the TorchScript exporter writes `/blocks/blocks.0/conv_pw/Conv`);
`precision.quantize_qdq` relies on them (`onnx_scope_of`) to find each Conv's calibrated range.
The TorchScript exporter (`dynamo=False`) is used: the dynamo exporter needs onnxscript, which is
not installed, and renames nodes.
"""

from __future__ import annotations

import copy
import warnings
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .. import atomic
from ..errors import UserError

MIN_OPSET = 17


# ---------------------------------------------------------------------------------------------
# BatchNorm folding in PyTorch


def _foldable_pairs_fx(module: nn.Module) -> list[tuple[str, str]] | None:
    """(conv path, bn path) pairs where the conv's only consumer is the BN, from a torch.fx trace;
    None when the module does not trace."""
    import torch.fx

    class _Tracer(torch.fx.Tracer):
        # Conv2d/BatchNorm2d subclasses (timm's Conv2dSame, BatchNormAct2d) stay single nodes
        def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
            return isinstance(m, (nn.Conv2d, nn.BatchNorm2d)) or super().is_leaf_module(m, qualname)

    try:
        graph = _Tracer().trace(module)
    except Exception:  # data-dependent control flow etc.: fall back to module order
        return None
    mods = dict(module.named_modules())
    calls: dict[str, int] = {}
    for n in graph.nodes:
        if n.op == "call_module":
            calls[n.target] = calls.get(n.target, 0) + 1
    pairs = []
    for n in graph.nodes:
        if n.op != "call_module" or not isinstance(mods.get(n.target), nn.BatchNorm2d):
            continue
        src = n.args[0] if n.args else None
        if (isinstance(src, torch.fx.Node) and src.op == "call_module"
                and isinstance(mods.get(src.target), nn.Conv2d) and len(src.users) == 1
                and calls[src.target] == 1 and calls[n.target] == 1):
            pairs.append((src.target, n.target))
    return pairs


def _foldable_pairs_order(module: nn.Module) -> list[tuple[str, str]]:
    """Pairs by registration order: a Conv2d immediately followed by a BatchNorm2d of the same
    width among the children of one parent (timm blocks, ConvNormAct, nn.Sequential)."""
    pairs = []
    for parent_path, parent in module.named_modules():
        kids = list(parent.named_children())
        for (cname, conv), (bname, bn) in zip(kids, kids[1:]):
            if (isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d)
                    and bn.num_features == conv.out_channels):
                pre = f"{parent_path}." if parent_path else ""
                pairs.append((pre + cname, pre + bname))
    return pairs


def _set_submodule(root: nn.Module, path: str, new: nn.Module) -> None:
    parent_path, _, name = path.rpartition(".")
    setattr(root.get_submodule(parent_path) if parent_path else root, name, new)


def folded_weight_bias(weight: torch.Tensor, bias: torch.Tensor | None, bn: nn.BatchNorm2d):
    """(weight, bias) of a conv with `bn`'s running statistics and affine folded in, in float64 (so
    they round to the correctly rounded fp32 values)."""
    w = weight.double()
    b = bias.double() if bias is not None else torch.zeros(w.shape[0], dtype=torch.float64, device=w.device)
    mean = bn.running_mean.double()
    inv_std = torch.rsqrt(bn.running_var.double() + bn.eps)
    gamma = bn.weight.double() if bn.weight is not None else torch.ones_like(mean)
    beta = bn.bias.double() if bn.bias is not None else torch.zeros_like(mean)
    s = gamma * inv_std
    return w * s.reshape(-1, *([1] * (w.dim() - 1))), (b - mean) * s + beta


@torch.no_grad()
def _fold_into(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    w, b = folded_weight_bias(conv.weight, conv.bias, bn)
    conv.weight.copy_(w.to(conv.weight.dtype))
    new_b = b.to(conv.weight.dtype)
    if conv.bias is None:
        conv.bias = nn.Parameter(new_b, requires_grad=conv.weight.requires_grad)
    else:
        conv.bias.copy_(new_b)


def _bn_remainder(bn: nn.BatchNorm2d) -> nn.Module:
    """What is left of a BN after its affine part moved into the conv: nothing for a plain
    BatchNorm2d, the drop + activation of timm's BatchNormAct2d."""
    act = getattr(bn, "act", None)
    drop = getattr(bn, "drop", None)
    if act is None and drop is None:
        return nn.Identity()
    parts = [(n, m) for n, m in (("drop", drop), ("act", act)) if m is not None and not isinstance(m, nn.Identity)]
    if not parts:
        return nn.Identity()
    if len(parts) == 1:
        return parts[0][1]
    return nn.Sequential(OrderedDict(parts))


def batchnorm_pairs(module: nn.Module) -> list[tuple[str, str]]:
    """The (conv path, BatchNorm path) pairs `fold_batchnorm` folds in `module` (left untouched)."""
    pairs = _foldable_pairs_fx(module)
    if pairs is None:
        pairs = _foldable_pairs_order(module)
    out = []
    for conv_path, bn_path in pairs:
        conv, bn = module.get_submodule(conv_path), module.get_submodule(bn_path)
        if bn.running_mean is not None and bn.running_var is not None and conv.out_channels == bn.num_features:
            out.append((conv_path, bn_path))
    return out


def fold_batchnorm(module: nn.Module) -> nn.Module:
    """A deep copy of `module` in eval mode with every Conv2d → BatchNorm2d pair folded.

    module: any nn.Module (left untouched). Pairs come from a torch.fx trace when the module
    traces (the conv's only consumer must be the BN), otherwise from registration order (a Conv2d
    directly followed by a BatchNorm2d of the same width in one parent). The conv takes the BN's
    affine transform (a bias is added if it had none); the BN is replaced by `nn.Identity()`, or,
    for timm's `BatchNormAct2d`, by its activation (and dropout, if any), so the output is the
    same up to float rounding. BNs without running statistics are left alone.
    """
    m = copy.deepcopy(module).eval()
    for conv_path, bn_path in batchnorm_pairs(m):
        conv, bn = m.get_submodule(conv_path), m.get_submodule(bn_path)
        _fold_into(conv, bn)
        _set_submodule(m, bn_path, _bn_remainder(bn))
    return m


# ---------------------------------------------------------------------------------------------
# ONNX graph clean-ups


def fold_batchnorm_onnx(model) -> int:
    """Fold every BatchNormalization that directly follows a Conv (sole consumer, constant
    parameters) into that Conv, in place. model: an onnx.ModelProto. Returns how many were folded."""
    from onnx import numpy_helper

    g = model.graph
    inits = {i.name: i for i in g.initializer}
    consumers: dict[str, int] = {}
    for n in g.node:
        for i in n.input:
            consumers[i] = consumers.get(i, 0) + 1
    graph_outputs = {o.name for o in g.output}
    producer = {o: n for n in g.node for o in n.output}
    folded, remove = 0, []
    for bn in list(g.node):
        if bn.op_type != "BatchNormalization" or len(bn.output) != 1:
            continue
        conv = producer.get(bn.input[0])
        if (conv is None or conv.op_type != "Conv" or consumers.get(bn.input[0], 0) != 1
                or bn.input[0] in graph_outputs):
            continue
        if not all(n in inits for n in bn.input[1:5]) or conv.input[1] not in inits:
            continue
        eps = next((a.f for a in bn.attribute if a.name == "epsilon"), 1e-5)
        scale, bias, mean, var = (numpy_helper.to_array(inits[n]).astype(np.float64) for n in bn.input[1:5])
        w = numpy_helper.to_array(inits[conv.input[1]]).astype(np.float64)
        has_b = len(conv.input) > 2 and conv.input[2] in inits
        b = numpy_helper.to_array(inits[conv.input[2]]).astype(np.float64) if has_b else np.zeros(w.shape[0])
        s = scale / np.sqrt(var + eps)
        w_new = (w * s.reshape(-1, *([1] * (w.ndim - 1)))).astype(np.float32)
        b_new = ((b - mean) * s + bias).astype(np.float32)
        wname, bname = conv.input[1] + "_bnfold", conv.name + "_bias_bnfold"
        g.initializer.append(numpy_helper.from_array(w_new, wname))
        g.initializer.append(numpy_helper.from_array(b_new, bname))
        x_in = conv.input[0]
        del conv.input[:]
        conv.input.extend([x_in, wname, bname])
        conv.output[0] = bn.output[0]
        remove.append(bn)
        folded += 1
    for n in remove:
        g.node.remove(n)
    _drop_unused_initializers(model)
    return folded


def inline_initializer_identities(model) -> int:
    """Remove Identity nodes whose input is an initializer, in place (the exporter deduplicates
    equal weights through them); consumers then read an initializer directly, which is what
    weight quantization and TensorRT's constant folding expect. Returns how many were removed."""
    g = model.graph
    inits = {i.name: i for i in g.initializer}
    graph_outputs = {o.name for o in g.output}
    rename: dict[str, str] = {}
    remove = []
    for n in g.node:
        if n.op_type == "Identity" and n.input[0] in inits and n.output[0] not in graph_outputs:
            rename[n.output[0]] = n.input[0]
            remove.append(n)
    for n in remove:
        g.node.remove(n)
    for n in g.node:
        for k, name in enumerate(n.input):
            if name in rename:
                n.input[k] = rename[name]
    return len(remove)


def _drop_unused_initializers(model) -> None:
    g = model.graph
    used = {i for n in g.node for i in n.input} | {o.name for o in g.output}
    keep = [i for i in g.initializer if i.name in used]
    del g.initializer[:]
    g.initializer.extend(keep)


# ---------------------------------------------------------------------------------------------
# Export


def _outputs(y) -> list[torch.Tensor]:
    if isinstance(y, torch.Tensor):
        return [y]
    if isinstance(y, (tuple, list)):
        return [t for t in y if isinstance(t, torch.Tensor)]
    return []


@torch.no_grad()
def _fold_verified(module: nn.Module, x: torch.Tensor) -> nn.Module:
    """fold_batchnorm(module), or the unfolded eval copy if folding changed the output (a pair
    found by module order that the forward does not actually chain): the graph fold then does it."""
    ref_model = copy.deepcopy(module).eval()
    folded = fold_batchnorm(module)
    ref, out = _outputs(ref_model(x)), _outputs(folded(x))
    ok = len(ref) == len(out) and all(
        r.shape == o.shape and float((r - o).abs().max()) <= 1e-3 * max(1.0, float(r.abs().max()))
        for r, o in zip(ref, out))
    return folded if ok else ref_model


def export_onnx(module: nn.Module, input_shape: tuple[int, int, int, int], path: str | Path, opset: int = 17,
                input_name: str = "input", output_name: str = "output", dynamic_batch: bool = False) -> Path:
    """Export `module` to ONNX at `path` (atomic) and return the path.

    module: the PyTorch module (not modified: a BN-folded eval copy is exported).
    input_shape: (N, C, H, W) — resolution baked in; the batch too unless `dynamic_batch`.
    opset: ONNX opset, at least 17 (default 17).
    input_name / output_name: graph I/O names (defaults "input" / "output"; several outputs get
    "output", "output_1", ...).
    dynamic_batch: the first dimension of every input and output is symbolic ("batch"), as an
    inference server that batches requests needs (default False: static, what latency tables time).
    The graph is checked with onnx's checker (with shape inference) before it is written.
    """
    import onnx

    if opset < MIN_OPSET:
        raise UserError(f"ONNX opset {opset} is too old: use {MIN_OPSET} or newer")
    if len(input_shape) != 4 or any(int(d) <= 0 for d in input_shape):
        raise UserError(f"input shape {tuple(input_shape)} is not a positive (N, C, H, W)")
    path = Path(path)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(*[int(d) for d in input_shape], generator=gen)
    model_to_export = _fold_verified(module, x)
    with torch.no_grad():
        n_out = len(_outputs(model_to_export(x)))
    out_names = [output_name] + [f"{output_name}_{i}" for i in range(1, n_out)]

    def write(tmp: str) -> None:
        with torch.no_grad(), warnings.catch_warnings():
            # the TorchScript exporter is deprecated upstream but is the one that works offline here
            warnings.simplefilter("ignore", DeprecationWarning)
            axes = {n: {0: "batch"} for n in [input_name, *out_names]} if dynamic_batch else None
            torch.onnx.export(model_to_export, (x,), tmp, input_names=[input_name], output_names=out_names,
                              opset_version=opset, do_constant_folding=True, dynamo=False, dynamic_axes=axes)
        model = onnx.load(tmp)
        inline_initializer_identities(model)
        fold_batchnorm_onnx(model)
        model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
        onnx.checker.check_model(model, full_check=True)
        onnx.save(model, tmp)

    try:
        return atomic.write_with(path, write)
    except UserError:
        raise
    except Exception as exc:
        raise RuntimeError(f"ONNX export to {path} failed: {exc}") from exc


def load_onnx(path: str | Path):
    """An ONNX model from disk, checked; a missing, unreadable or invalid file is a UserError."""
    import onnx

    p = Path(path)
    if not p.is_file():
        raise UserError(f"model file {p} not found")
    try:
        model = onnx.load(str(p))
        onnx.checker.check_model(model)
    except Exception as exc:
        raise UserError(f"{p} is not a readable ONNX model ({type(exc).__name__}: {str(exc)[:100]})") from None
    return model


def _unqualified(qualified: str) -> str:
    # mirrors torch.onnx's scope naming: trailing atoms from the last non-numeric one
    atoms = qualified.split(".")
    for i in range(len(atoms) - 1, -1, -1):
        if not atoms[i].isnumeric():
            return ".".join(atoms[i:])
    return qualified


def onnx_scope_of(module_path: str) -> str:
    """The node-name scope torch.onnx (TorchScript exporter) gives the ops of the submodule at
    `module_path`: "blocks.0.0.conv_pw" → "/blocks/blocks.0/blocks.0.0/conv_pw" (a node is then
    named "<scope>/Conv", "<scope>/Conv_1", ...). The root module ("") has scope ""."""
    if not module_path:
        return ""
    atoms = module_path.split(".")
    return "".join("/" + _unqualified(".".join(atoms[:i + 1])) for i in range(len(atoms)))


def node_scope(node_name: str) -> str:
    """The module scope part of an exported node name: "/a/b/Conv_2" → "/a/b"."""
    return node_name.rpartition("/")[0]


def check_and_save(model, dst, what: str) -> Path:
    """Shapes re-inferred from scratch, full onnx check, atomic write: a rewritten graph that does not
    check is an internal error, never a file."""
    import onnx

    del model.graph.value_info[:]
    try:
        model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
        onnx.checker.check_model(model, full_check=True)
    except Exception as exc:
        raise RuntimeError(f"{what} produced an invalid graph: {exc}") from exc
    return atomic.write_with(Path(dst), lambda tmp: onnx.save(model, tmp))
