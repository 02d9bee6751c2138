"""The "trt" int8 layout: TensorRT's explicit quantization as QuantizeLinear/DequantizeLinear in
the ONNX — symmetric (zero point 0), per-tensor activations, per-channel weights:

    x ─► Q(scale_x, 0) ─► DQ(scale_x, 0) ─► Conv/Gemm ◄─ DQ(scale_w[axis 0], 0) ◄─ int8 weights

Activation scales come from calibration on real activations (`calibrate.CalibResult`, amax / 127,
matched to ONNX nodes through their torch module path). Biases stay fp32; residual Add inputs are
not quantized (TensorRT then keeps the Add outside the int8 conv fusion: correct, a little
slower). ONNX Runtime CPU runs this graph (DQ → float Conv), which is why the PyTorch simulation
in `fakequant.py` matches it closely. The graph helpers here (weight quantization, layer matching,
node replacement) serve the "ort" layout's writer too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import numpy as np

from ..errors import UserError
from ..latency.export import check_and_save, node_scope, onnx_scope_of
from .calibrate import AMAX_FLOOR, CalibResult

QDQ_MIN_OPSET = 13          # per-channel (axis) Q/DQ


def replace_nodes(g, nodes: list, new_inits: list) -> None:
    """Give graph `g` the node list `nodes` and the initializers `new_inits`, then drop the
    initializers nothing reads any more (the float weights a Q/DQ rewrite replaced)."""
    del g.node[:]
    g.node.extend(nodes)
    g.initializer.extend(new_inits)
    used = {i for n in g.node for i in n.input} | {o.name for o in g.output}
    keep = [i for i in g.initializer if i.name in used]
    del g.initializer[:]
    g.initializer.extend(keep)


def quant_weight(w: np.ndarray, per_channel: bool, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 weights and their float32 scales (per `axis` channel, or one scale)."""
    if per_channel:
        red = tuple(d for d in range(w.ndim) if d != axis)
        amax = np.abs(w).max(axis=red) if red else np.abs(w)
    else:
        amax = np.array(np.abs(w).max())
    scale = (np.maximum(amax, AMAX_FLOOR) / 127.0).astype(np.float32)
    shape = [1] * w.ndim
    if per_channel:
        shape[axis] = -1
    q = np.clip(np.round(w.astype(np.float32) / scale.reshape(shape)), -127, 127).astype(np.int8)
    return q, scale


def weight_axis(node) -> int:
    if node.op_type == "Gemm":
        trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
        return 0 if trans_b else 1                   # output-feature axis of B
    if node.op_type == "MatMul":
        return 1
    return 0                                          # Conv: K (output channels)


def match_layers(node_names: Iterable[str], paths: Iterable[str]) -> dict[str, str]:
    """ONNX node name → calibrated module path, through torch.onnx's scope naming."""
    by_scope = {collapse_scope(onnx_scope_of(p)): p for p in paths}
    return {n: by_scope[collapse_scope(node_scope(n))] for n in node_names if collapse_scope(node_scope(n)) in by_scope}


def collapse_scope(scope: str) -> str:
    """A scope without its container levels: "/parts/parts.2/conv_pw" → "/parts.2/conv_pw". A
    ModuleList is never called, so torch.onnx names no scope after it while a called Sequential
    gets one; dropping every level whose child repeats its name makes both spellings equal."""
    atoms = scope.split("/")
    return "/".join(a for i, a in enumerate(atoms) if not (a and i + 1 < len(atoms) and atoms[i + 1].startswith(a + ".")))


def quantize_qdq(src_onnx: str | Path, dst_onnx: str | Path, calib: CalibResult, per_channel: bool = True,
                 only_calibrated: bool = False) -> Path:
    """Insert QuantizeLinear/DequantizeLinear into the fp32 ONNX `src_onnx`, write `dst_onnx`.

    calib: ranges from `calibrate` on the same module that was exported (`export_onnx`), keyed by
        module path; each Conv/Gemm (and MatMul with a constant weight) must have one, unless
        `only_calibrated`: then only the layers with a range are quantized and the rest stay float
        (a per-layer precision plan: int8 where it was chosen).
    per_channel: True (default) gives one weight scale per output channel (DQ axis 0 for Conv);
        False one scale per weight tensor.
    Activations: one Q→DQ pair per quantized tensor (scale amax/127, int8 zero point 0) feeding
    the Conv/Gemm data input only (other readers, e.g. a residual Add, keep the float tensor).
    Weights: int8 initializer → DQ (float32 scales, int8 zero points 0). Biases stay float32.
    """
    import onnx
    from onnx import helper, numpy_helper

    if not isinstance(calib, CalibResult):
        raise TypeError("quantize_qdq needs a CalibResult (see hant_trt.quant.calibrate.calibrate)")
    model = onnx.load(str(src_onnx))
    for o in model.opset_import:
        if o.domain in ("", "ai.onnx") and o.version < QDQ_MIN_OPSET:
            raise UserError(f"{src_onnx} has opset {o.version}: per-channel Q/DQ needs {QDQ_MIN_OPSET}+ (export with 17)")
    g = model.graph
    inits = {i.name: i for i in g.initializer}
    target_idx = [i for i, n in enumerate(g.node) if n.op_type in ("Conv", "Gemm")
                  or (n.op_type == "MatMul" and len(n.input) > 1 and n.input[1] in inits)]
    targets = [g.node[i] for i in target_idx]
    if not targets:
        raise UserError(f"{src_onnx} has no Conv/Gemm to quantize")
    match = match_layers([n.name for n in targets], calib.amax)
    if only_calibrated:
        target_idx = [i for i in target_idx if g.node[i].name in match]
        targets = [g.node[i] for i in target_idx]
        if not targets:
            raise UserError(f"none of the {len(calib.amax)} calibrated layers is a Conv/Gemm of {src_onnx}")
    missing = [n.name for n in targets if n.name not in match]
    if missing:
        raise UserError(f"no calibrated range for {len(missing)} layer(s) of {src_onnx} (first: '{missing[0]}'): "
                        "calibrate the module that was exported")
    for n in targets:
        if n.input[1] not in inits:
            raise UserError(f"{n.name}: weight '{n.input[1]}' is not a constant; export with BatchNorm folding")

    new_inits: list = []
    act_dq: dict[tuple[str, float], str] = {}
    prefix_nodes: dict[int, list] = {}          # node index → Q/DQ/weight nodes to put before it
    used_weights: dict[str, str] = {}

    def const(name: str, arr: np.ndarray) -> str:
        new_inits.append(numpy_helper.from_array(arr, name))
        return name

    for idx in target_idx:
        n = g.node[idx]
        path = match[n.name]
        scale = np.float32(calib.scale(path))
        if not scale > 0:
            raise UserError(f"calibrated range of '{path}' is not positive")
        before = prefix_nodes.setdefault(idx, [])
        x = n.input[0]
        key = (x, float(scale))
        if key not in act_dq:
            base = f"{x}__q{len(act_dq)}"
            s_name = const(base + "_scale", np.array(scale, dtype=np.float32))
            z_name = const(base + "_zp", np.array(0, dtype=np.int8))
            q_out, dq_out = base + "_quantized", base + "_dequantized"
            before.append(helper.make_node("QuantizeLinear", [x, s_name, z_name], [q_out], name=f"{node_scope(n.name)}/input_quantizer/QuantizeLinear"))
            before.append(helper.make_node("DequantizeLinear", [q_out, s_name, z_name], [dq_out], name=f"{node_scope(n.name)}/input_quantizer/DequantizeLinear"))
            act_dq[key] = dq_out
        n.input[0] = act_dq[key]

        wname = n.input[1]
        if wname not in used_weights:
            w = numpy_helper.to_array(inits[wname])
            axis = weight_axis(n)
            q, wscale = quant_weight(w, per_channel, axis)
            base = f"{wname}__int8"
            qw = const(base, q)
            ws = const(base + "_scale", wscale)
            wz = const(base + "_zp", np.zeros(wscale.shape, dtype=np.int8))
            attrs = {"axis": axis} if per_channel else {}
            before.append(helper.make_node("DequantizeLinear", [qw, ws, wz], [base + "_dequantized"],
                                           name=f"{node_scope(n.name)}/weight_quantizer/DequantizeLinear", **attrs))
            used_weights[wname] = base + "_dequantized"
        n.input[1] = used_weights[wname]

    nodes = []
    for idx, n in enumerate(g.node):
        nodes.extend(prefix_nodes.get(idx, []))
        nodes.append(n)
    replace_nodes(g, nodes, new_inits)
    return check_and_save(model, dst_onnx, f"Q/DQ insertion into {src_onnx}")
