"""PyTorch module → ONNX: opset 17, static shapes, BatchNorm folded into the preceding Conv,
checked with onnx's checker, written atomically.

Folding is done on the ONNX graph (Conv → BatchNormalization with constant parameters), so it
works for any module without knowing its Python structure.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .. import atomic
from ..errors import UserError


def fold_batchnorm_onnx(model) -> int:
    """Fold every BatchNormalization that directly follows a Conv (sole consumer, constant weights)
    into that Conv. Returns how many were folded."""
    import onnx
    from onnx import numpy_helper

    g = model.graph
    inits = {i.name: i for i in g.initializer}
    consumers: dict[str, int] = {}
    for n in g.node:
        for i in n.input:
            consumers[i] = consumers.get(i, 0) + 1
    producer = {o: n for n in g.node for o in n.output}
    folded, remove = 0, []
    for bn in list(g.node):
        if bn.op_type != "BatchNormalization" or len(bn.output) != 1:
            continue
        conv = producer.get(bn.input[0])
        if conv is None or conv.op_type != "Conv" or consumers.get(bn.input[0], 0) != 1:
            continue
        if not all(n in inits for n in bn.input[1:5]) or conv.input[1] not in inits:
            continue
        eps = next((a.f for a in bn.attribute if a.name == "epsilon"), 1e-5)
        scale, bias, mean, var = (numpy_helper.to_array(inits[n]).astype(np.float64) for n in bn.input[1:5])
        w = numpy_helper.to_array(inits[conv.input[1]]).astype(np.float64)
        b = (numpy_helper.to_array(inits[conv.input[2]]).astype(np.float64) if len(conv.input) > 2 and conv.input[2]
             else np.zeros(w.shape[0]))
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
    # drop initializers nobody uses any more
    used = {i for n in g.node for i in n.input} | {o.name for o in g.output}
    keep = [i for i in g.initializer if i.name in used]
    del g.initializer[:]
    g.initializer.extend(keep)
    return folded


def export_onnx(module: torch.nn.Module, input_shape: tuple[int, ...], path: str | Path, opset: int = 17,
                input_name: str = "input", output_name: str = "output") -> Path:
    """Export `module` (eval mode) for a static `input_shape` (N, C, H, W) to `path`."""
    import onnx

    path = Path(path)
    module = module.eval()
    x = torch.randn(*input_shape)

    def write(tmp: str) -> None:
        with torch.no_grad():
            torch.onnx.export(module, (x,), tmp, input_names=[input_name], output_names=[output_name],
                              opset_version=opset, do_constant_folding=True, dynamo=False)
        model = onnx.load(tmp)
        fold_batchnorm_onnx(model)
        onnx.checker.check_model(model)
        onnx.save(model, tmp)

    try:
        return atomic.write_with(path, write)
    except UserError:
        raise
    except Exception as exc:
        raise RuntimeError(f"ONNX export to {path} failed: {exc}") from exc


def load_onnx(path: str | Path):
    """An ONNX model from disk; unreadable or invalid files are user errors."""
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
