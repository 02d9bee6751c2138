"""Triton model repository: `<repo>/<name>/config.pbtxt` + `<repo>/<name>/1/model.{plan,onnx}`.

config.pbtxt is protobuf text format. We write it with a small generic writer (`format_pbtxt`) and
read it back with a small generic parser (`parse_pbtxt`): Triton's ModelConfig schema is not a
dependency, so neither side knows field types, and `google.protobuf.text_format` cannot be used.

Batching: with `max_batch_size > 0` Triton prepends a variable batch dimension to every tensor
and requires the model's first dimension to be dynamic (-1); hant-trt exports static shapes, so for
its models batching stays off (`max_batch_size: 0`, full dims, batch included). Asking for batching
on a static-batch model is refused with a UserError saying so (rather than silently writing a
config Triton would reject, or silently changing the serving contract).
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from .. import atomic
from ..errors import UserError

TRITON_TYPES = {"FP32": "TYPE_FP32", "FP16": "TYPE_FP16", "BF16": "TYPE_BF16", "FP64": "TYPE_FP64",
                "INT8": "TYPE_INT8", "INT16": "TYPE_INT16", "INT32": "TYPE_INT32", "INT64": "TYPE_INT64",
                "UINT8": "TYPE_UINT8", "UINT16": "TYPE_UINT16", "UINT32": "TYPE_UINT32", "UINT64": "TYPE_UINT64",
                "BOOL": "TYPE_BOOL", "STRING": "TYPE_STRING"}
PLATFORMS = {".plan": ("tensorrt_plan", "model.plan", "KIND_GPU"), ".engine": ("tensorrt_plan", "model.plan", "KIND_GPU"),
             ".onnx": ("onnxruntime_onnx", "model.onnx", "KIND_CPU")}
INSTANCE_KINDS = ("KIND_AUTO", "KIND_GPU", "KIND_CPU")
DEFAULT_MAX_BATCH = 8


class Enum(str):
    """A protobuf enum value: written bare (`kind: KIND_GPU`), where a plain str is quoted."""


# -- writer ---------------------------------------------------------------------------------------

def _scalar(v) -> str:
    if isinstance(v, Enum):
        return str(v)
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    raise TypeError(f"cannot write {type(v).__name__} in protobuf text format")


def format_pbtxt(msg: dict, indent: int = 0) -> str:
    """Protobuf text format for a dict: str values are quoted, `Enum` values bare, dicts become
    nested messages `key { ... }`, lists of scalars `key: [ a, b ]`, lists of dicts
    `key [ { ... }, { ... } ]`; a None value is left out."""
    pad = "  " * indent
    out = []
    for key, v in msg.items():
        if v is None:
            continue
        if isinstance(v, dict):
            body = format_pbtxt(v, indent + 1)
            out.append(f"{pad}{key} {{\n{body}{pad}}}\n" if body else f"{pad}{key} {{ }}\n")
        elif isinstance(v, list) and v and all(isinstance(x, dict) for x in v):
            items = [f"{pad}  {{\n{format_pbtxt(x, indent + 2)}{pad}  }}" for x in v]
            out.append(f"{pad}{key} [\n" + ",\n".join(items) + f"\n{pad}]\n")
        elif isinstance(v, list):
            inner = ", ".join(_scalar(x) for x in v)
            out.append(f"{pad}{key}: [ {inner} ]\n" if inner else f"{pad}{key}: [ ]\n")
        else:
            out.append(f"{pad}{key}: {_scalar(v)}\n")
    return "".join(out)


# -- parser ---------------------------------------------------------------------------------------

_TOKEN = re.compile(r"""
    (?P<space>\s+|\#[^\n]*)
  | (?P<string>"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*')
  | (?P<punct>[{}\[\]<>:,;])
  | (?P<word>[^\s{}\[\]<>:,;"'\#]+)
""", re.VERBOSE)
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "a": "\a", "b": "\b", "f": "\f", "v": "\v", "\\": "\\", "'": "'",
            '"': '"', "?": "?"}
_INT = re.compile(r"[-+]?(0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)")
_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?[fF]?")


class PbtxtError(ValueError):
    """Text that is not protobuf text format; the message gives line and column."""


def _unescape(body: str) -> str:
    out, i = bytearray(), 0
    while i < len(body):
        c = body[i]
        if c != "\\":
            out += c.encode("utf-8")
            i += 1
            continue
        n = body[i + 1]
        if n in _ESCAPES:
            out += _ESCAPES[n].encode()
            i += 2
        elif n in "xX":
            m = re.match(r"[0-9a-fA-F]{1,2}", body[i + 2:])
            out.append(int(m.group(), 16))
            i += 2 + len(m.group())
        elif n in "01234567":
            m = re.match(r"[0-7]{1,3}", body[i + 1:])
            out.append(int(m.group(), 8))
            i += 1 + len(m.group())
        else:
            raise PbtxtError(f"unknown escape \\{n}")
    # protobuf strings are bytes; \ooo / \xHH escapes encode UTF-8 bytes
    return out.decode("utf-8", errors="replace")


def _scalar_value(tok: str):
    if tok[0] in "\"'":
        return _unescape(tok[1:-1])
    if tok in ("true", "True"):
        return True
    if tok in ("false", "False"):
        return False
    if _INT.fullmatch(tok):
        return int(tok, 0) if not re.fullmatch(r"[-+]?0[0-7]+", tok) else int(tok.replace("0", "0o", 1), 8)
    if _FLOAT.fullmatch(tok):
        return float(tok.rstrip("fF"))
    return tok  # an enum name (or inf/nan, which we cannot tell apart without the schema)


def parse_pbtxt(text: str) -> dict:
    """Parse protobuf text format into a dict, without a schema.

    Nested messages (`key { ... }` or `key < ... >`, colon optional) become dicts; a field given
    more than once, or as a list `key: [ a, b ]` / `key [ { }, { } ]`, becomes a list (a field
    given once without brackets stays a scalar or dict: without the schema we cannot know it is
    repeated). Strings are unquoted and unescaped (adjacent strings concatenated), integers
    (decimal, hex, octal) and floats converted, true/false become bools, enum names stay str.
    `#` comments and `,`/`;` separators are accepted. Raises PbtxtError with line and column.
    """
    toks: list[tuple[str, str, int]] = []   # (kind, text, offset)
    pos = 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m:
            raise PbtxtError(f"unexpected {text[pos]!r} at {_where(text, pos)}")
        if m.lastgroup != "space":
            toks.append((m.lastgroup, m.group(), pos))
        pos = m.end()
    i = 0

    def fail(msg: str):
        at = toks[i][2] if i < len(toks) else len(text)
        raise PbtxtError(f"{msg} at {_where(text, at)}")

    def peek() -> str | None:
        return toks[i][1] if i < len(toks) else None

    def take(expected: str | None = None) -> tuple[str, str, int]:
        nonlocal i
        if i >= len(toks):
            fail(f"unexpected end of text (expected {expected or 'a value'})")
        if expected is not None and toks[i][1] != expected:
            fail(f"expected {expected!r}, found {toks[i][1]!r}")
        i += 1
        return toks[i - 1]

    def scalar():
        kind, tok, _ = take()
        if kind == "string":
            parts = [_scalar_value(tok)]
            while i < len(toks) and toks[i][0] == "string":   # "a" "b" == "ab"
                parts.append(_scalar_value(take()[1]))
            return "".join(parts)
        if kind != "word":
            i_back()
            fail(f"expected a value, found {tok!r}")
        return _scalar_value(tok)

    def i_back():
        nonlocal i
        i -= 1

    def value():
        t = peek()
        if t in ("{", "<"):
            take()
            v = message("}" if t == "{" else ">")
            take("}" if t == "{" else ">")
            return v
        return scalar()

    def message(end: str | None) -> dict:
        out: dict = {}
        while i < len(toks) and peek() != end:
            kind, key, _ = take()
            if kind != "word":
                i_back()
                fail(f"expected a field name, found {key!r}")
            if peek() == ":":
                take()
            if peek() == "[":
                take()
                v: list = []
                while peek() != "]":
                    v.append(value())
                    if peek() == ",":
                        take()
                    elif peek() is None:
                        fail("unexpected end of text (expected ']')")
                    elif peek() != "]":
                        fail("expected ',' or ']'")
                take("]")
            else:
                v = value()
            if peek() in (",", ";"):
                take()
            if key in out:
                prev = out[key]
                out[key] = (prev if isinstance(prev, list) else [prev]) + (v if isinstance(v, list) else [v])
            else:
                out[key] = v
        if end is None and i < len(toks):
            fail(f"unbalanced {peek()!r}")
        return out

    return message(None)


def as_list(value) -> list:
    """A parsed field as a list: `parse_pbtxt` cannot know a field given once is repeated, so
    `output { ... }` parses to a dict and `output [ { ... } ]` to a list; this treats both alike."""
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def _where(text: str, offset: int) -> str:
    line = text.count("\n", 0, offset) + 1
    col = offset - (text.rfind("\n", 0, offset) + 1) + 1
    return f"line {line}, column {col}"


# -- repository -----------------------------------------------------------------------------------

def _tensor_config(t: dict, batched: bool, src: str) -> dict:
    if t.get("dtype") not in TRITON_TYPES:
        raise UserError(f"{src}: tensor {t.get('name')!r} has dtype {t.get('dtype')!r}, which Triton does not support")
    dims = list(t["shape"][1:] if batched else t["shape"])
    cfg: dict = {"name": t["name"], "data_type": Enum(TRITON_TYPES[t["dtype"]])}
    if dims:
        cfg["dims"] = dims
    else:
        # Triton needs at least one dim: a scalar is served as [1] and reshaped to the model's [].
        cfg["dims"] = [1]
        cfg["reshape"] = {"shape": []}
    return cfg


def _io(src: Path) -> tuple[str, str, str, list[dict], list[dict]]:
    spec = PLATFORMS.get(src.suffix.lower())
    if spec is None:
        raise UserError(f"{src.name}: Triton export takes a TensorRT .plan or an .onnx model")
    platform, target, kind = spec
    if platform == "tensorrt_plan":
        from .metadata import read_metadata

        # A plan cannot be inspected without TensorRT: its tensors come from the metadata JSON that
        # `hant-trt build` writes beside it (recorded from the ONNX it was built from).
        meta = read_metadata(src)
        inputs, outputs = meta.inputs, meta.outputs
        if not inputs or not outputs:
            raise UserError(f"{src.name}.json lists no inputs/outputs; rebuild the engine with `hant-trt build`")
    else:
        from .metadata import io_from_onnx

        inputs, outputs = io_from_onnx(src)
    return platform, target, kind, inputs, outputs


def export_triton(model_path: str | Path, repo_dir: str | Path, name: str, max_batch_size: int | None = None,
                  instance_kind: str | None = None, instance_count: int = 1, dynamic_batching: bool = True) -> Path:
    """Write a Triton model repository entry and return the model folder `<repo_dir>/<name>`.

    model_path: a TensorRT `.plan` (tensors read from its `.plan.json` metadata) or an `.onnx`.
        The platform follows the suffix: tensorrt_plan or onnxruntime_onnx.
    repo_dir: the model repository root (created if missing; other models in it are untouched).
    name: the model name = folder name.
    max_batch_size: Triton's max_batch_size. Default None = 8 when the model's batch dimension is
        dynamic, else 0 (batching off, full dims). An explicit value > 0 on a static-batch model is
        refused: Triton requires the first dimension to be -1 for batching.
    instance_kind: KIND_GPU / KIND_CPU / KIND_AUTO (or gpu/cpu/auto); default KIND_GPU for a plan,
        KIND_CPU for ONNX. A plan cannot run on KIND_CPU.
    instance_count: model instances per device (default 1).
    dynamic_batching: write `dynamic_batching { }` (default True); only when max_batch_size > 0,
        since Triton allows no batcher for a non-batching model.
    """
    src = Path(model_path)
    if not src.is_file():
        raise UserError(f"model file {src} not found")
    if not name or name in (".", "..") or re.search(r"[/\\\s]", name):
        raise UserError(f"Triton model name {name!r} must be a non-empty folder name without slashes or spaces")
    if not isinstance(instance_count, int) or instance_count < 1:
        raise UserError(f"instance count must be a positive integer, got {instance_count!r}")
    platform, target, kind, inputs, outputs = _io(src)
    if instance_kind is not None:   # "" is a bad value too, not "the default"
        up = str(instance_kind).strip().upper()
        kind = up if up.startswith("KIND_") else "KIND_" + up
        if kind not in INSTANCE_KINDS:
            raise UserError(f"instance kind {instance_kind!r} is not one of KIND_GPU, KIND_CPU, KIND_AUTO "
                            "(or gpu, cpu, auto)")
    if platform == "tensorrt_plan" and kind == "KIND_CPU":
        raise UserError(f"{src.name} is a TensorRT plan: it needs a GPU instance (kind gpu), not cpu")

    tensors = inputs + outputs
    dynamic = all(t["shape"] and t["shape"][0] == -1 for t in tensors)
    if max_batch_size is None:
        max_batch_size = DEFAULT_MAX_BATCH if dynamic else 0
    if not isinstance(max_batch_size, int) or max_batch_size < 0:
        raise UserError(f"max batch size must be an integer >= 0, got {max_batch_size!r}")
    if max_batch_size > 0 and not dynamic:
        fixed = next(t for t in tensors if not (t["shape"] and t["shape"][0] == -1))
        raise UserError(f"{src.name} has a static batch dimension ({fixed['name']} is {fixed['shape']}): "
                        "use max batch size 0 (--max-batch-size 0) or export the model with a dynamic batch")
    batched = max_batch_size > 0

    config = {"name": name, "platform": platform, "max_batch_size": max_batch_size,
              "input": [_tensor_config(t, batched, src.name) for t in inputs],
              "output": [_tensor_config(t, batched, src.name) for t in outputs],
              "dynamic_batching": {} if (dynamic_batching and batched) else None,
              "instance_group": [{"count": instance_count, "kind": Enum(kind)}]}
    folder = Path(repo_dir) / name
    header = f"# written by hant-trt from {src.name}\n"
    atomic.write_text(folder / "config.pbtxt", header + format_pbtxt(config))
    atomic.write_with(folder / "1" / target, lambda tmp: shutil.copyfile(src, tmp))
    return folder


__all__ = ["export_triton", "parse_pbtxt", "as_list", "format_pbtxt", "Enum", "PbtxtError", "TRITON_TYPES"]
