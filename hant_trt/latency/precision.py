"""Precision lives in the ONNX (TensorRT 11 has no precision flags and no implicit calibration).
This module holds the float side: fp16 (`to_fp16`) — the graph converted to float16 with onnx
alone: initializers, constants and Casts to float16; Casts at the graph I/O (kept fp32 by
default); nodes whose schema has no fp16 form, and inputs the schema fixes to float (Resize
scales...), stay fp32 behind Casts — and the base precision of a plan. int8 Q/DQ is `hant_trt.quant`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import UserError
from .export import check_and_save

FP16_MAX = 65504.0


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
    return check_and_save(model, dst, f"fp16 conversion of {src}")


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
