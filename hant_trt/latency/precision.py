"""Precision lives in the ONNX (TensorRT 11 has no precision flags and no implicit calibration):

- fp16 (`to_fp16`): the graph converted to float16 with onnx alone — initializers, constants and
  Casts to float16; Casts at the graph I/O (kept fp32 by default); nodes whose schema has no fp16
  form, and inputs the schema fixes to float (Resize scales...), stay fp32 behind Casts.
- int8 (`quantize_qdq`): explicit QuantizeLinear/DequantizeLinear in TensorRT's explicit-
  quantization layout — symmetric (zero point 0), per-tensor activations, per-channel weights:

      x ─► Q(scale_x, 0) ─► DQ(scale_x, 0) ─► Conv/Gemm ◄─ DQ(scale_w[axis 0], 0) ◄─ int8 weights

  activation scales come from calibration on real activations (`calibrate.CalibResult`, amax /
  127, matched to ONNX nodes through their torch module path). Biases stay fp32; residual Add
  inputs are not quantized (TensorRT then keeps the Add outside the int8 conv fusion: correct,
  a little slower). ONNX Runtime CPU runs this graph (DQ → float Conv), which is why the PyTorch
  simulation in `fakequant.py` matches it closely.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from .. import atomic
from ..errors import UserError
from .calibrate import CALIB_METHODS, AMAX_FLOOR, CalibResult, calibrate  # noqa: F401  (re-exported)
from .export import node_scope, onnx_scope_of

FP16_MAX = 65504.0
QDQ_MIN_OPSET = 13          # per-channel (axis) Q/DQ


# ---------------------------------------------------------------------------------------------
# fp16


def _schema(node, opset: int):
    from onnx import defs

    try:
        return defs.get_schema(node.op_type, opset, node.domain or "")
    except Exception:
        return None


def _formal(params, k: int):
    """The formal parameter at position k (the last one repeats when variadic)."""
    if not params:
        return None
    if k < len(params):
        return params[k]
    last = params[-1]
    return last if last.option == last.option.__class__.Variadic else None


def _allowed(schema, formal) -> set[str]:
    for c in schema.type_constraints:
        if c.type_param_str == formal.type_str:
            return set(c.allowed_type_strs)
    return {formal.type_str}            # a literal type such as tensor(float)


def _to_half_array(a: np.ndarray) -> np.ndarray:
    # clip so large weights saturate instead of becoming inf
    return np.clip(a, -FP16_MAX, FP16_MAX).astype(np.float16)


def base_precision(precisions) -> str:
    """The precision of everything not chosen at int8 (fixed parts, the teacher, the final model's
    float layers): fp16 when the profile measures fp16 — a GPU target, where TensorRT 11 takes the
    precision from the ONNX —, bf16 when it measures bf16 (PyTorch on a GPU), else fp32."""
    if "fp16" in precisions:
        return "fp16"
    return "bf16" if "bf16" in precisions else "fp32"


def to_fp16(src: str | Path, dst: str | Path, keep_io_types: bool = True,
            keep_fp32: Callable[[str], bool] | None = None) -> Path:
    """Convert the fp32 ONNX `src` to float16 and write it to `dst` (atomic); returns `dst`.

    keep_io_types: True (default) keeps fp32 graph inputs/outputs with a Cast to/from fp16 right
        at them (a drop-in replacement for the fp32 model); False makes the I/O float16 too.
    keep_fp32: node name → True for nodes that stay fp32 (a per-layer plan: parts chosen at fp32 or
        int8); tensors passed between such nodes stay fp32, Casts only at the region's edges.
    Only the main graph is converted (CNN exports have no If/Loop subgraphs). ONNX Runtime CPU runs
    the result (it falls back to fp32 kernels where it has no fp16 one); TensorRT builds it strongly
    typed in fp16.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    FLOAT, HALF = TensorProto.FLOAT, TensorProto.FLOAT16
    model = onnx.shape_inference.infer_shapes(onnx.load(str(src)), strict_mode=True)
    g = model.graph
    if any(a.type == onnx.AttributeProto.GRAPH or a.type == onnx.AttributeProto.GRAPHS
           for n in g.node for a in n.attribute):
        raise UserError(f"{src}: graphs with subgraphs (If/Loop/Scan) are not supported by the fp16 conversion")
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 17)

    elem: dict[str, int] = {}
    for vi in list(g.input) + list(g.output) + list(g.value_info):
        elem[vi.name] = vi.type.tensor_type.elem_type
    for init in g.initializer:
        elem[init.name] = init.data_type
    inits = {i.name: i for i in g.initializer}
    graph_inputs = {i.name for i in g.input}
    graph_outputs = {o.name for o in g.output}

    # 1. decide, from the op schemas, which nodes stay fp32 and which float inputs must stay fp32
    keep_node: set[int] = set()
    fp32_inputs: list[tuple[int, int]] = []        # (node index, input index)
    for ni, n in enumerate(g.node):
        schema = _schema(n, opset)
        if keep_fp32 is not None and keep_fp32(n.name):
            keep_node.add(ni)
            continue
        if schema is None:
            keep_node.add(ni)                       # unknown/custom op: leave its arithmetic alone
            continue
        for k, name in enumerate(n.input):
            f = _formal(schema.inputs, k)
            if not name or f is None or elem.get(name) != FLOAT:
                continue
            allowed = _allowed(schema, f)
            if "tensor(float16)" in allowed:
                continue
            if f.type_str in {c.type_param_str for c in schema.type_constraints}:
                keep_node.add(ni)                   # e.g. Range: no fp16 form at all
            else:
                fp32_inputs.append((ni, k))         # e.g. Resize scales: fixed tensor(float)

    new_nodes: list = []
    counter = [0]

    def cast(src_name: str, to: int, hint: str) -> str:
        counter[0] += 1
        out = f"{src_name}__{'fp16' if to == HALF else 'fp32'}_{counter[0]}"
        new_nodes.append(helper.make_node("Cast", [src_name], [out], name=f"{hint}/Cast_fp16conv_{counter[0]}", to=to))
        return out

    # 2. initializers: fp16, except those read only as fp32 inputs (copy when read both ways)
    fp32_reads = {g.node[ni].input[k] for ni, k in fp32_inputs}
    kept_reads = {name for ni in keep_node for name in g.node[ni].input}
    fp32_set = set(fp32_inputs)
    half_reads = {name for ni, n in enumerate(g.node) if ni not in keep_node for k, name in enumerate(n.input)
                  if (ni, k) not in fp32_set}
    for name, init in list(inits.items()):
        if init.data_type != FLOAT:
            continue
        needs_fp32 = name in fp32_reads or name in kept_reads
        if name in half_reads or name in graph_outputs:
            if needs_fp32:
                copy32 = numpy_helper.from_array(numpy_helper.to_array(init), name + "__fp32")
                g.initializer.append(copy32)
                elem[copy32.name] = FLOAT
            init.CopyFrom(numpy_helper.from_array(_to_half_array(numpy_helper.to_array(init)), name))
            elem[name] = HALF

    # constants read only by fp32 readers (Resize scales...) stay fp32: no lossy round trip
    readers: dict[str, list[tuple[int, int]]] = {}
    for ni, n in enumerate(g.node):
        for k, name in enumerate(n.input):
            readers.setdefault(name, []).append((ni, k))
    still_fp32 = {n.output[0] for n in g.node if n.op_type in ("Constant", "ConstantOfShape")
                  and n.output[0] not in graph_outputs and readers.get(n.output[0])
                  and all(r in fp32_set or r[0] in keep_node for r in readers[n.output[0]])}

    fp32_cache: dict[str, str] = {}

    def fp32_name_of(name: str) -> str:
        """A fp32 version of a (converted) float tensor, for an fp32-only reader."""
        if name in fp32_cache:
            return fp32_cache[name]
        if name in still_fp32:
            return name
        if name in inits:
            return name if inits[name].data_type == FLOAT else name + "__fp32"
        if name not in fp32_cache:
            fp32_cache[name] = cast(name, FLOAT, "fp32in")
        return fp32_cache[name]

    # 3. graph inputs: Cast right after them (or retype them)
    renamed: dict[str, str] = {}
    for gi in g.input:
        if gi.name in inits or gi.type.tensor_type.elem_type != FLOAT:
            continue
        if keep_io_types:
            renamed[gi.name] = cast(gi.name, HALF, "input")
        else:
            gi.type.tensor_type.elem_type = HALF

    # 4. nodes
    io32 = graph_inputs if keep_io_types else set()     # graph inputs that are still fp32
    for ni, n in enumerate(g.node):
        if ni in keep_node:
            for k, name in enumerate(n.input):
                if name and name not in io32 and elem.get(name) == FLOAT:
                    n.input[k] = fp32_name_of(name)
            new_nodes.append(n)
            for k, out in enumerate(n.output):
                if elem.get(out) == FLOAT:
                    if out not in graph_outputs and all(r[0] in keep_node for r in readers.get(out, [])):
                        fp32_cache[out] = out       # read by fp32 nodes only: no Cast at all
                        continue
                    tmp = f"{out}__fp32out"
                    n.output[k] = tmp
                    fp32_cache[out] = tmp       # fp32 readers (kept nodes) take it without a round trip
                    new_nodes.append(helper.make_node("Cast", [tmp], [out], name=f"{n.name}/Cast_fp16conv_out", to=HALF))
            continue
        for k, name in enumerate(n.input):
            if (ni, k) in fp32_set:
                if name not in io32:
                    n.input[k] = fp32_name_of(name)
            elif name in renamed:
                n.input[k] = renamed[name]
        if n.op_type == "Cast":
            for a in n.attribute:
                if a.name == "to" and a.i == FLOAT:
                    a.i = HALF
        elif n.op_type in ("Constant", "ConstantOfShape"):
            if n.output[0] not in still_fp32:
                _constant_to_half(n)
        else:
            for a in n.attribute:                   # RandomNormal, EyeLike...: dtype attribute
                if a.name == "dtype" and a.i == FLOAT:
                    a.i = HALF
        new_nodes.append(n)

    # 5. graph outputs: computed in fp16, Cast back to fp32 at the very end (or retyped)
    for go in g.output:
        if go.type.tensor_type.elem_type != FLOAT:
            continue
        if not keep_io_types:
            go.type.tensor_type.elem_type = HALF
            continue
        internal = f"{go.name}__fp16"
        for n in new_nodes:
            for k, name in enumerate(n.output):
                if name == go.name:
                    n.output[k] = internal
            for k, name in enumerate(n.input):
                if name == go.name:
                    n.input[k] = internal
        new_nodes.append(helper.make_node("Cast", [internal], [go.name], name=f"output/Cast_fp16conv_{go.name}", to=FLOAT))

    del g.node[:]
    g.node.extend(_toposort(new_nodes, {i.name for i in g.input} | {i.name for i in g.initializer}))
    return _check_and_save(model, dst, f"fp16 conversion of {src}")


def _check_and_save(model, dst, what: str) -> Path:
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


def _constant_to_half(n) -> None:
    from onnx import TensorProto, numpy_helper

    for a in n.attribute:
        if a.name == "value" and a.t.data_type == TensorProto.FLOAT:
            a.t.CopyFrom(numpy_helper.from_array(_to_half_array(numpy_helper.to_array(a.t)), a.t.name))
        elif a.name in ("value_float", "value_floats"):
            vals = np.array(a.f if a.name == "value_float" else list(a.floats), dtype=np.float32)
            t = numpy_helper.from_array(_to_half_array(vals), "")
            a.Clear()
            a.name, a.type = "value", 4    # AttributeProto.TENSOR
            a.t.CopyFrom(t)


def _toposort(nodes: list, available: set[str]) -> list:
    """Nodes in dependency order (the inserted Casts must precede their readers)."""
    have = set(available) | {""}
    out, pending = [], list(nodes)
    while pending:
        rest = []
        for n in pending:
            if all(i in have for i in n.input):
                out.append(n)
                have.update(n.output)
            else:
                rest.append(n)
        if len(rest) == len(pending):
            raise RuntimeError(f"fp16 conversion: cannot order nodes (cycle or missing input near {rest[0].name})")
        pending = rest
    return out


# ---------------------------------------------------------------------------------------------
# int8 Q/DQ


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


def _quant_weight(w: np.ndarray, per_channel: bool, axis: int) -> tuple[np.ndarray, np.ndarray]:
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


def _weight_axis(node) -> int:
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
        raise TypeError("quantize_qdq needs a CalibResult (see hant_trt.latency.calibrate.calibrate)")
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
            axis = _weight_axis(n)
            q, wscale = _quant_weight(w, per_channel, axis)
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
    return _check_and_save(model, dst_onnx, f"Q/DQ insertion into {src_onnx}")


def quantize_int8(module, input_shape: tuple[int, int, int, int], dst: str | Path,
                  calib: Callable[[], Iterable] | CalibResult | None = None, method: str = "max",
                  per_channel: bool = True, layout: str = "trt") -> Path:
    """Export `module` and write its int8 Q/DQ ONNX to `dst`; returns `dst`.

    layout: "trt" (default: TensorRT's explicit quantization, `quantize_qdq`) or "ort" (ONNX
        Runtime CPU's integer kernels, `int8_ort.write_ort_qdq`).
    calib: a CalibResult (from `calibrate` / `calibrate_cached` on this module), or a zero-argument
        callable yielding real input batches (tensors or arrays) calibrated here with `method`; None
        calibrates on 4 seeded random batches — only good enough for timing, never for accuracy.
    """
    import torch

    from .export import export_onnx

    if isinstance(calib, CalibResult):
        res = calib
    else:
        if calib is None:
            gen = torch.Generator().manual_seed(0)
            batches = [torch.randn(*input_shape, generator=gen) for _ in range(4)]
        else:
            batches = calib()
        res = calibrate(module, batches, method=method)
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = export_onnx(module, input_shape, Path(tmp) / "fp32.onnx")
        if layout == "ort":
            from .int8_ort import write_ort_qdq

            return write_ort_qdq(fp32, dst, res, per_channel=per_channel)
        if layout != "trt":
            raise UserError(f"unknown int8 layout '{layout}' (trt | ort)")
        return quantize_qdq(fp32, dst, res, per_channel=per_channel)
