"""Triton model repository: `<repo>/<name>/config.pbtxt` + `<repo>/<name>/1/model.{plan,onnx}`,
and a small protobuf-text-format parser so tests (and users) can read configs back."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from .. import atomic
from ..errors import UserError

TRITON_TYPES = {"FP32": "TYPE_FP32", "FP16": "TYPE_FP16", "INT8": "TYPE_INT8", "INT32": "TYPE_INT32",
                "INT64": "TYPE_INT64", "UINT8": "TYPE_UINT8", "BOOL": "TYPE_BOOL", "FP64": "TYPE_FP64"}


def _io_block(kind: str, tensors: list[dict], batched: bool) -> list[str]:
    lines = [f"{kind} ["]
    for i, t in enumerate(tensors):
        dims = t["shape"][1:] if batched else t["shape"]
        lines += ["  {", f'    name: "{t["name"]}"', f"    data_type: {TRITON_TYPES.get(t['dtype'], 'TYPE_FP32')}",
                  f"    dims: [ {', '.join(str(d) for d in dims)} ]", "  }" + ("," if i < len(tensors) - 1 else "")]
    lines.append("]")
    return lines


def export_triton(model_path: str | Path, repo_dir: str | Path, name: str = "hant_student", max_batch_size: int = 0,
                  instance_kind: str | None = None, instance_count: int = 1, dynamic_batching: bool = True) -> Path:
    """Write the model repository; returns the model folder.

    `max_batch_size` > 0 needs a model whose batch dimension is dynamic; our engines are built with
    a static batch, so for them it must stay 0 (Triton then passes full shapes, batch included).
    """
    from .metadata import io_from_onnx, read_metadata

    src = Path(model_path)
    if not src.is_file():
        raise UserError(f"model file {src} not found")
    if src.suffix in (".plan", ".engine"):
        platform, target = "tensorrt_plan", "model.plan"
        meta = read_metadata(src)
        inputs, outputs = meta.inputs, meta.outputs
        kind = instance_kind or "KIND_GPU"
    elif src.suffix == ".onnx":
        platform, target = "onnxruntime_onnx", "model.onnx"
        inputs, outputs = io_from_onnx(src)
        kind = instance_kind or "KIND_CPU"
    else:
        raise UserError(f"{src.name}: Triton export takes a .plan or an .onnx")
    static_batch = any(t["shape"] and t["shape"][0] > 0 for t in inputs)
    if max_batch_size > 0 and static_batch:
        raise UserError(f"{src.name} has a static batch dimension; use --max-batch-size 0 "
                        "(or export with a dynamic batch)")
    batched = max_batch_size > 0
    lines = [f'name: "{name}"', f'platform: "{platform}"', f"max_batch_size: {max_batch_size}"]
    lines += _io_block("input", inputs, batched) + _io_block("output", outputs, batched)
    if dynamic_batching and batched:
        lines.append("dynamic_batching { }")
    lines += ["instance_group [", "  {", f"    count: {instance_count}", f"    kind: {kind}", "  }", "]"]
    folder = Path(repo_dir) / name
    atomic.write_text(folder / "config.pbtxt", "\n".join(lines) + "\n")
    atomic.write_with(folder / "1" / target, lambda tmp: shutil.copyfile(src, tmp))
    return folder


_TOKEN = re.compile(r'\s*(?:(#[^\n]*)|("(?:[^"\\]|\\.)*")|([{}\[\]:,])|([^\s{}\[\]:,"]+))')


def parse_pbtxt(text: str) -> dict:
    """Protobuf text format → dict. Repeated fields become lists; `[a, b]` lists and nested messages
    are supported; strings unquoted, numbers converted, enums kept as strings."""
    toks = []
    pos = 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            if text[pos:].strip():
                raise ValueError(f"cannot parse pbtxt near: {text[pos:pos + 20]!r}")
            break
        pos = m.end()
        if m.group(1):
            continue
        toks.append(m.group(2) or m.group(3) or m.group(4))
    i = 0

    def value(t):
        if t.startswith('"'):
            return bytes(t[1:-1], "utf-8").decode("unicode_escape")
        for conv in (int, float):
            try:
                return conv(t)
            except ValueError:
                pass
        return t

    def message(end):
        nonlocal i
        out: dict = {}
        while i < len(toks) and toks[i] != end:
            key = toks[i]
            i += 1
            if toks[i] == ":":
                i += 1
            if toks[i] == "{":
                i += 1
                v = message("}")
                i += 1
            elif toks[i] == "[":
                i += 1
                v = []
                while toks[i] != "]":
                    if toks[i] == "{":
                        i += 1
                        v.append(message("}"))
                        i += 1
                    elif toks[i] != ",":
                        v.append(value(toks[i]))
                        i += 1
                    else:
                        i += 1
                i += 1
            else:
                v = value(toks[i])
                i += 1
            if i < len(toks) and toks[i] == ",":
                i += 1
            if key in out:
                prev = out[key]
                out[key] = (prev if isinstance(prev, list) else [prev]) + (v if isinstance(v, list) else [v])
            else:
                out[key] = v
        return out

    return message(None)
