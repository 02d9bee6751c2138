"""The "ort" int8 layout: Q/DQ that ONNX Runtime's CPU provider fuses into integer kernels.

TensorRT's layout (`qdq_trt.quantize_qdq`: symmetric int8, Q/DQ on layer inputs only) runs on
ORT CPU as DequantizeLinear → float Conv: measured 3.6x *slower* than fp32 on Lite0. ORT fuses
DQ(x), DQ(w), DQ(bias) → Conv → Q(y) into QLinearConv only when the output is quantized too, the
bias is int32 and, on x86, activations are uint8 (its S8S8 path measured no faster than fp32).
So this layout, per quantized Conv/Gemm ("site"):

    x ─► Q(u8, s_x, z_x) ─► DQ ─► Conv ◄─ DQ(int8 w, per channel) ◄─ DQ(int32 b, s_x·s_w)
                                    └─► [Relu | Clip(0, hi)] ─► Q(u8, s_y, z_y) ─► DQ ─► y

- activations: asymmetric uint8, scale (hi − lo) / 255, zero point round(−lo / scale), ranges from
  `calibrate` (signed bounds, 0 included);
- a Relu or Clip(0, hi) that is the conv's only reader is quantized *behind* (its output range is
  [0, min(hi, calibrated)], so ORT drops it as redundant and fuses the conv); any other activation
  stays float after the DQ;
- a site whose input is another site's quantized output reuses that Q/DQ (no second rounding);
- the residual Add reads the dequantized conv output and the float skip (stays a float Add);
- with `integer_adds` (the "ort-qadd" layout) the Add's float skip reads instead the Q/DQ the block's
  first conv already puts on that tensor, and a pooled feature map feeding a quantized Gemm gets
  that Gemm's input Q/DQ right after the pooling: ORT then runs the Add as QLinearAdd and the
  pooling as QLinearGlobalAveragePool in its NHWC integer layout, where a float Add or pooling
  costs a DQ + Q (or a whole-map Transpose back to NCHW) each: on Lite0 7 float Adds and the
  head's pooling, what ORT's own quantize_static graph was faster by (docs/RESULTS.md, session 13).

The PyTorch simulation (`fake_quantize_ort`) applies the same roundings through
the `Site` list below, built from the exported graph, so both follow one plan. Quantizing a conv's
output *before* a Relu/Clip(0, hi) with a range [0, h ≤ hi] equals quantizing after it, which is
why the simulation can put the output quantizer on the conv itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import UserError
from ..latency.export import check_and_save, export_onnx, fold_batchnorm, node_scope, onnx_scope_of
from .calibrate import AMAX_FLOOR, CalibResult
from .fakequant import quantize_weight, weight_scale
from .qdq_trt import QDQ_MIN_OPSET, collapse_scope, match_layers, quant_weight, replace_nodes, weight_axis

U8_MAX = 255


@dataclass
class Site:
    """One quantized Conv/Gemm of the ORT layout."""

    node: str                    # ONNX node name
    path: str                    # module path (the calibration key)
    q_tensor: str                # tensor whose Q/DQ carries the output (the activation's when fused)
    act_hi: float | None         # upper bound of the fused Relu (inf) / Clip(0, hi); None: none fused
    input_site: str | None       # path of the site whose quantized output is this site's input
    in_range: tuple[float, float]
    out_range: tuple[float, float]


def u8_params(lo: float, hi: float) -> tuple[float, int]:
    """(scale, zero point) of asymmetric uint8 over [lo, hi] (0 included), as ONNX Runtime's
    quantizer computes them; scale as float32."""
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    scale = float(np.float32(max(hi - lo, AMAX_FLOOR) / U8_MAX))
    zp = int(np.clip(np.round(-lo / scale), 0, U8_MAX))
    return scale, zp


def _const_value(name: str, inits: dict, constants: dict) -> float | None:
    from onnx import numpy_helper

    if not name:
        return None
    t = inits.get(name) or constants.get(name)
    if t is None:
        return None
    a = numpy_helper.to_array(t)
    return float(a.reshape(-1)[0]) if a.size == 1 else None


def _fused_act_bound(act, inits: dict, constants: dict) -> float | None:
    """The upper bound of a Relu (inf) or Clip(0, hi) node; None for anything else."""
    if act.op_type == "Relu":
        return float("inf")
    if act.op_type != "Clip":
        return None
    lo = _const_value(act.input[1] if len(act.input) > 1 else "", inits, constants)
    hi = _const_value(act.input[2] if len(act.input) > 2 else "", inits, constants)
    if lo != 0.0:
        return None
    return float("inf") if hi is None else hi


def plan_sites(model, calib: CalibResult, only_calibrated: bool = False) -> list[Site]:
    """The sites of `model` (an onnx.ModelProto exported from the calibrated module), in graph order.

    only_calibrated: quantize just the layers `calib` has ranges for (a per-layer plan); otherwise
        every Conv/Gemm must have one.
    """
    g = model.graph
    inits = {i.name: i for i in g.initializer}
    constants = {n.output[0]: next(a.t for a in n.attribute if a.name == "value")
                 for n in g.node if n.op_type == "Constant" and any(a.name == "value" for a in n.attribute)}
    readers: dict[str, list] = {}
    for n in g.node:
        for i in n.input:
            readers.setdefault(i, []).append(n)
    outputs = {o.name for o in g.output}
    targets = [n for n in g.node if n.op_type in ("Conv", "Gemm") and len(n.input) > 1 and n.input[1] in inits]
    if not targets:
        raise UserError("the model has no Conv/Gemm with a constant weight to quantize")
    match = match_layers([n.name for n in targets], calib.amax)
    if only_calibrated:
        targets = [n for n in targets if n.name in match]
    missing = [n.name for n in targets if n.name not in match]
    if missing:
        raise UserError(f"no calibrated range for {len(missing)} layer(s) (first: '{missing[0]}'): "
                        "calibrate the module that was exported")
    sites: list[Site] = []
    by_q_tensor: dict[str, Site] = {}
    for n in targets:
        path = match[n.name]
        y = n.output[0]
        q_tensor, act_hi = y, None
        rd = readers.get(y, [])
        if len(rd) == 1 and y not in outputs:
            bound = _fused_act_bound(rd[0], inits, constants)
            if bound is not None:
                q_tensor, act_hi = rd[0].output[0], bound
        lo, hi = calib.output_range(path)
        if act_hi is not None:
            lo, hi = 0.0, max(min(hi, act_hi), 0.0)
        src = by_q_tensor.get(n.input[0])
        in_range = src.out_range if src is not None else calib.input_range(path)
        site = Site(n.name, path, q_tensor, act_hi, src.path if src else None, in_range, (lo, hi))
        sites.append(site)
        by_q_tensor[q_tensor] = site
    return sites


@dataclass
class AddSite:
    """A residual Add whose float skip is given the quantized twin its block's first conv reads."""

    node: str                    # the Add node
    scope: str                   # module path of the block whose forward adds (its input is the skip)
    skip: str                    # the float skip tensor
    range: tuple[float, float]   # the Q/DQ the skip shares with the conv's input


@dataclass
class PoolSite:
    """A global average pooling whose output reaches a quantized Gemm through Flatten/Reshape."""

    node: str                    # the pooling node
    range: tuple[float, float]   # the Gemm's input range


def _module_of_scope(scope: str, under: str) -> str | None:
    """The ancestor of module path `under` whose exported scope is `scope` (None: none is)."""
    atoms = under.split(".")
    for i in range(len(atoms) - 1, 0, -1):
        path = ".".join(atoms[:i])
        if collapse_scope(onnx_scope_of(path)) == collapse_scope(scope):
            return path
    return None


def _inputs_of_scope(g, path: str) -> list[str]:
    """The tensors the module at `path` reads from outside (weights and constants left out)."""
    prefix = collapse_scope(onnx_scope_of(path)) + "/"
    inside = [n for n in g.node if (collapse_scope(node_scope(n.name)) + "/").startswith(prefix)]
    made = {o for n in inside for o in n.output} | {i.name for i in g.initializer}
    made |= {n.output[0] for n in g.node if n.op_type == "Constant"}
    return sorted({i for n in inside for i in n.input if i and i not in made})


def plan_integer_adds(model, sites: list[Site]) -> tuple[list[AddSite], list[PoolSite]]:
    """The Adds and poolings the "ort-qadd" layout quantizes, read off the graph and its sites.

    An Add qualifies when one input is a site's quantized output and the other is either quantized
    already or the float input of a site that quantizes it (no `input_site`) inside the module that
    adds, so the simulation can quantize that module's input the same way (`fake_quantize_ort`).
    A pooling qualifies when it reads a site's quantized output and a quantized Gemm reads it through
    Flatten/Reshape (its Gemm input quantizer, repeated at the pooling's output, changes no value)."""
    g = model.graph
    producer = {o: n for n in g.node for o in n.output}
    quantized = {s.q_tensor for s in sites}
    float_in = {}
    node_of = {n.name: n for n in g.node}
    for s in sites:
        if s.input_site is None:
            float_in.setdefault(node_of[s.node].input[0], []).append(s)
    adds: list[AddSite] = []
    for n in g.node:
        if n.op_type != "Add" or len(n.input) != 2:
            continue
        a, b = n.input
        if b in quantized and a not in quantized:
            a, b = b, a
        if a not in quantized or b in quantized:
            continue
        for s in float_in.get(b, []):
            scope = _module_of_scope(node_scope(n.name), s.path)
            if scope is not None and len({t.in_range for t in float_in[b]}) == 1 and _inputs_of_scope(g, scope) == [b]:
                adds.append(AddSite(n.name, scope, b, s.in_range))
                break
    pools: list[PoolSite] = []
    gemm_in = {node_of[s.node].input[0]: s for s in sites if node_of[s.node].op_type == "Gemm" and s.input_site is None}
    for x, s in gemm_in.items():
        src = producer.get(x)
        if src is None or src.op_type not in ("Flatten", "Reshape"):
            continue
        pool = producer.get(src.input[0])
        if pool is not None and pool.op_type == "GlobalAveragePool" and pool.input[0] in quantized:
            pools.append(PoolSite(pool.name, s.in_range))
    return adds, pools


def write_ort_qdq(src_onnx: str | Path, dst_onnx: str | Path, calib: CalibResult, per_channel: bool = True,
                  only_calibrated: bool = False, integer_adds: bool = False) -> Path:
    """Insert the ORT layout's Q/DQ into the fp32 ONNX `src_onnx` (exported from the calibrated
    module, BN folded) and write `dst_onnx` (atomic); returns it. integer_adds: also the residual
    Adds and global poolings (`plan_integer_adds`; the "ort-qadd" layout)."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(src_onnx))
    for o in model.opset_import:
        if o.domain in ("", "ai.onnx") and o.version < QDQ_MIN_OPSET:
            raise UserError(f"{src_onnx} has opset {o.version}: per-channel Q/DQ needs {QDQ_MIN_OPSET}+ (export with 17)")
    sites = plan_sites(model, calib, only_calibrated)
    adds, pools = plan_integer_adds(model, sites) if integer_adds else ([], [])
    g = model.graph
    inits = {i.name: i for i in g.initializer}
    new_inits: list = []
    before: dict[str, list] = {}          # node name → nodes to put before it
    after: dict[str, list] = {}           # producer of a site's q_tensor → its Q/DQ
    act_dq: dict[tuple, str] = {}
    used_weights: set[str] = set()
    producer = {o: n for n in g.node for o in n.output}
    node_of = {n.name: n for n in g.node}
    if len(node_of) != len(g.node):
        raise UserError(f"{src_onnx}: node names are not unique; export with hant_trt.latency.export")

    def const(name: str, arr: np.ndarray) -> str:
        new_inits.append(numpy_helper.from_array(arr, name))
        return name

    def qdq(x: str, out: str, rng: tuple[float, float], base: str) -> list:
        s, z = u8_params(*rng)
        sn = const(base + "_scale", np.array(s, dtype=np.float32))
        zn = const(base + "_zp", np.array(z, dtype=np.uint8))
        return [helper.make_node("QuantizeLinear", [x, sn, zn], [base + "_q"], name=base + "/QuantizeLinear"),
                helper.make_node("DequantizeLinear", [base + "_q", sn, zn], [out], name=base + "/DequantizeLinear")]

    for k, site in enumerate(sites):
        n = node_of[site.node]
        pre = before.setdefault(n.name, [])
        if site.input_site is None:
            x = n.input[0]
            key = (x, site.in_range)
            if key not in act_dq:
                base = f"{site.node}/input_quantizer_{k}"
                pre.extend(qdq(x, base + "_dq", site.in_range, base))
                act_dq[key] = base + "_dq"
            n.input[0] = act_dq[key]
        s_x, _ = u8_params(*site.in_range)
        wname = n.input[1]
        if wname in used_weights:
            raise UserError(f"{site.node}: weight '{wname}' is shared by several layers; the ORT int8 layout "
                            "needs one weight per layer")
        used_weights.add(wname)
        w = numpy_helper.to_array(inits[wname])
        axis = weight_axis(n)
        q, w_scale = quant_weight(w, per_channel, axis)
        wb = f"{wname}__int8"
        attrs = {"axis": axis} if per_channel else {}
        pre.append(helper.make_node("DequantizeLinear", [const(wb, q), const(wb + "_scale", w_scale),
                                                         const(wb + "_zp", np.zeros(w_scale.shape, np.int8))],
                                    [wb + "_dq"], name=f"{site.node}/weight_quantizer/DequantizeLinear", **attrs))
        n.input[1] = wb + "_dq"
        if len(n.input) > 2 and n.input[2]:
            if n.input[2] not in inits:
                raise UserError(f"{site.node}: bias '{n.input[2]}' is not a constant")
            b = numpy_helper.to_array(inits[n.input[2]]).astype(np.float64)
            b_scale = (np.float64(s_x) * w_scale.astype(np.float64)).astype(np.float32)
            if b.ndim != 1:
                raise UserError(f"{site.node}: bias of shape {b.shape} is not per output channel")
            bq = np.clip(np.round(b / b_scale), -2**31, 2**31 - 1).astype(np.int32)
            # per site: the exporter shares one initializer between equal biases (all zero when
            # BatchNorm is untrained), and each site's int32 bias has its own scale
            bb = f"{n.input[2]}__int32_{k}"
            battrs = {"axis": 0} if b_scale.size > 1 else {}
            pre.append(helper.make_node("DequantizeLinear", [const(bb, bq), const(bb + "_scale", b_scale.reshape(-1) if b_scale.size > 1 else b_scale.reshape(())),
                                                             const(bb + "_zp", np.zeros(b_scale.shape if b_scale.size > 1 else (), np.int32))],
                                        [bb + "_dq"], name=f"{site.node}/bias_quantizer/DequantizeLinear", **battrs))
            n.input[2] = bb + "_dq"
        # the output: the producer writes "<t>__fp"; Q/DQ gives back "<t>", so every reader and
        # graph output sees the dequantized value without being rewired
        t = site.q_tensor
        prod = producer[t]
        prod.output[list(prod.output).index(t)] = t + "__fp"
        after.setdefault(prod.name, []).extend(qdq(t + "__fp", t, site.out_range, f"{site.node}/output_quantizer_{k}"))

    for add in adds:
        n = node_of[add.node]
        n.input[list(n.input).index(add.skip)] = act_dq[(add.skip, add.range)]
    for k, pool in enumerate(pools):
        t = node_of[pool.node].output[0]
        node_of[pool.node].output[0] = t + "__fp"
        after.setdefault(pool.node, []).extend(qdq(t + "__fp", t, pool.range, f"{pool.node}/output_quantizer_{k}"))

    nodes = []
    for n in g.node:
        nodes.extend(before.get(n.name, []))
        nodes.append(n)
        nodes.extend(after.get(n.name, []))
    replace_nodes(g, nodes, new_inits)
    return check_and_save(model, dst_onnx, f"ORT-layout Q/DQ insertion into {src_onnx}")


def plan_of_module(module, input_shape: tuple[int, ...], calib: CalibResult, only_calibrated: bool = False,
                   integer_adds: bool = False) -> tuple[list[Site], list[AddSite]]:
    """(sites, adds) of `module` as it exports (BN folded): what the simulation quantizes; adds are
    planned only with integer_adds (`plan_integer_adds`)."""
    import tempfile

    import onnx

    with tempfile.TemporaryDirectory() as tmp:
        model = onnx.load(str(export_onnx(module, tuple(input_shape), Path(tmp) / "m.onnx")))
    sites = plan_sites(model, calib, only_calibrated)
    return sites, plan_integer_adds(model, sites)[0] if integer_adds else []


class AffineQuantizer:
    """Asymmetric uint8 fake quantization (ONNX Q then DQ with a zero point), as a forward pre-hook
    on a layer's input (`output=False`) or a forward hook on its output (picklable)."""

    def __init__(self, lo: float, hi: float, output: bool):
        self.range = (float(lo), float(hi))
        s, z = u8_params(lo, hi)
        self.scale, self.zp, self.output = torch.tensor(s, dtype=torch.float32), float(z), output

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        s = self.scale.to(x.dtype)
        return (torch.clamp(torch.round(x / s) + self.zp, 0, 255) - self.zp) * s

    def __call__(self, _layer: nn.Module, inputs: tuple, out=None):
        if self.output:
            return self.apply(out)
        return (self.apply(inputs[0]), *inputs[1:])

    def __repr__(self) -> str:
        return f"AffineQuantizer({'output' if self.output else 'input'}, range={self.range})"


def rounded_bias(bias: torch.Tensor, w_scale: torch.Tensor, in_range: tuple[float, float]) -> torch.Tensor:
    """`bias` as the int32 bias at s_x · s_w (the scale rounded to float32 as in the ONNX), dequantized."""
    s_x, _ = u8_params(*in_range)
    b_scale = (np.float64(s_x) * w_scale.double()).float().double().reshape(-1)
    bq = torch.clamp(torch.round(bias.double() / b_scale), -2**31, 2**31 - 1)
    return (bq * b_scale).to(bias.dtype)


@torch.no_grad()
def fake_quantize_ort(module: nn.Module, calib: CalibResult, per_channel: bool = True, input_shape=None,
                      only_calibrated: bool = False, integer_adds: bool = False) -> nn.Module:
    """A BN-folded eval copy of `module` running the "ort" layout's roundings on its sites, which
    are read off the module's own export (`input_shape`: N, C, H, W), so simulation and ONNX follow
    one plan. only_calibrated: quantize only the layers `calib` has ranges for (a per-layer plan).
    integer_adds: the "ort-qadd" layout: a block whose Add reads a quantized skip gets its input
    quantized (its first conv quantizes the same tensor with the same range; the pooling's extra
    Q/DQ repeats its Gemm's and changes nothing)."""
    if not isinstance(calib, CalibResult):
        raise TypeError("fake_quantize_ort needs a CalibResult (see hant_trt.quant.calibrate.calibrate)")
    if input_shape is None:
        raise ValueError("the ort int8 layout needs the module's input shape")
    sites, adds = plan_of_module(module, input_shape, calib, only_calibrated, integer_adds)
    m = fold_batchnorm(module)
    for add in adds:
        m.get_submodule(add.scope).register_forward_pre_hook(AffineQuantizer(*add.range, output=False))
    for site in sites:
        layer = m.get_submodule(site.path)
        w_scale = weight_scale(layer.weight.data, per_channel).double()
        layer.weight.data = quantize_weight(layer.weight.data, per_channel)
        if layer.bias is not None:
            layer.bias.data = rounded_bias(layer.bias.data, w_scale, site.in_range)
        if site.input_site is None:
            layer.register_forward_pre_hook(AffineQuantizer(*site.in_range, output=False))
        layer.register_forward_hook(AffineQuantizer(*site.out_range, output=True))
    return m
