"""Engine metadata: the JSON written beside every deployable engine (`<engine>.json`), and the check
that refuses a TensorRT plan built for another GPU or TensorRT version.

A plan only runs on the TensorRT version and GPU it was built for (TensorRT deserialises foreign
plans with a cryptic error, or not at all), so everything needed to explain a refusal in one line is
recorded at build time: TensorRT/CUDA versions, GPU name and compute capability. CPU targets get
ONNX Runtime's offline-optimised model (`optimize_for_ort`) with the same metadata.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from .. import __version__, atomic
from ..errors import UserError

PLAN_FORMAT = "tensorrt_plan"
ORT_FORMAT = "onnxruntime_onnx"
FORMATS = (PLAN_FORMAT, ORT_FORMAT)

# ONNX TensorProto element type -> our dtype name (Triton's TYPE_<name> without the prefix).
ONNX_DTYPES = {1: "FP32", 2: "UINT8", 3: "INT8", 4: "UINT16", 5: "INT16", 6: "INT32", 7: "INT64", 8: "STRING",
               9: "BOOL", 10: "FP16", 11: "FP64", 12: "UINT32", 13: "UINT64", 16: "BF16"}


@dataclass
class EngineMetadata:
    """What one deployable engine is, where it can run and what it was measured to do.

    name: engine name (also the Triton model name by default).
    format: "tensorrt_plan" or "onnxruntime_onnx".
    file: the engine's path or file name as written.
    sha256: hex digest of the engine file; filled by `write_metadata`.
    created: UTC ISO-8601 time; filled by `write_metadata` when empty.
    tensorrt_version, cuda_version, gpu_name, compute_capability ("8.6"): the build machine, for
        plans (None for CPU targets).
    cpu, ort_version: the build machine's CPU and ONNX Runtime version, for CPU targets.
    driver_version, torch_version: the GPU driver and PyTorch that timed a GPU target.
    batch: the batch it was timed at (inputs' batch dimension is -1 when the export is dynamic).
    precision_plan: one {slot, op, precision} per chosen part, slot "3" or "3-4" for a span, between
        a "stem" and a "head" entry at their own precision (int8 when the search chose it, else the
        base precision: fp16/bf16 on GPU targets, fp32 otherwise).
    inputs, outputs: one {name, dtype, shape} per tensor; dtype as in `ONNX_DTYPES` ("FP32"),
        shape with -1 for a dynamic dimension.
    predicted_latency_s: the search's additive prediction; measured_latency_s: timed on the engine.
    accuracy: e.g. {"agreement": 97.1, "student_top1": ..., "teacher_top1": ...} (percent).
    teacher: e.g. {"model": "efficientnet_lite0", "measured_latency_s": ..., "resolution": 224} (its
        input side when it is not the student's: `build.teacher_resolution`).
    hant_trt_version: the package version that wrote it.
    """

    name: str
    format: str
    file: str
    sha256: str = ""
    created: str = ""
    tensorrt_version: str | None = None
    cuda_version: str | None = None
    gpu_name: str | None = None
    compute_capability: str | None = None
    cpu: str | None = None
    ort_version: str | None = None
    driver_version: str | None = None
    torch_version: str | None = None
    batch: int | None = None
    precision_plan: list[dict] = field(default_factory=list)
    inputs: list[dict] = field(default_factory=list)
    outputs: list[dict] = field(default_factory=list)
    predicted_latency_s: float | None = None
    measured_latency_s: float | None = None
    accuracy: dict = field(default_factory=dict)
    teacher: dict = field(default_factory=dict)
    hant_trt_version: str = __version__

    @classmethod
    def from_dict(cls, d: dict) -> EngineMetadata:
        """Build from parsed JSON; keys written by a newer hant-trt are ignored, missing required
        keys (name, format, file) or an unknown format raise ValueError."""
        known = {f.name for f in fields(cls)}
        missing = [k for k in ("name", "format", "file") if k not in d]
        if missing:
            raise ValueError(f"missing {', '.join(missing)}")
        if d["format"] not in FORMATS:
            raise ValueError(f"format {d['format']!r} is not one of {', '.join(FORMATS)}")
        return cls(**{k: v for k, v in d.items() if k in known})


def metadata_path(engine_path: str | Path) -> Path:
    """`model.plan` -> `model.plan.json` (the suffix is appended, so `x.ort.onnx` -> `x.ort.onnx.json`)."""
    return Path(str(engine_path) + ".json")


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks (plans can be hundreds of MB)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_metadata(engine_path: str | Path, meta: EngineMetadata) -> Path:
    """Write `meta` atomically as `<engine_path>.json` and return that path.

    engine_path: the engine file, which must already exist (its SHA-256 is recorded).
    meta: filled in place: sha256 always, `created` and `file` when empty, `ort_version` for an
        ONNX Runtime engine when empty.
    """
    p = Path(engine_path)
    if meta.format not in FORMATS:
        raise ValueError(f"EngineMetadata.format must be one of {FORMATS}, got {meta.format!r}")
    if not p.is_file():
        raise UserError(f"engine {p} not found: write the engine before its metadata")
    meta.sha256 = file_sha256(p)
    meta.created = meta.created or time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    meta.file = meta.file or p.name
    if meta.format == ORT_FORMAT and not meta.ort_version:
        import onnxruntime

        meta.ort_version = onnxruntime.__version__
    return atomic.write_json(metadata_path(p), asdict(meta))


def read_metadata(path: str | Path, verify: bool = True) -> EngineMetadata:
    """Read engine metadata.

    path: the engine (`model.plan`, metadata read from `model.plan.json`) or the JSON itself.
    verify: when the engine file is present, check its SHA-256 against the recorded one (default
        True), so a plan swapped under its metadata is refused instead of trusted.
    """
    p = Path(path)
    if p.suffix == ".json" and p.is_file():
        jpath, engine = p, Path(str(p)[: -len(".json")])
    else:
        jpath, engine = metadata_path(p), p
    if not jpath.is_file():
        raise UserError(f"no metadata {jpath.name} beside {engine.name}: it was not built by hant-trt "
                        "(rebuild it with `hant-trt build`)")
    try:
        meta = EngineMetadata.from_dict(json.loads(jpath.read_text()))
    except (json.JSONDecodeError, TypeError, ValueError, AttributeError) as exc:
        raise UserError(f"{jpath} is not valid engine metadata ({exc})") from None
    if verify and meta.sha256 and engine.is_file() and file_sha256(engine) != meta.sha256:
        raise UserError(f"{engine.name} does not match its metadata {jpath.name} (SHA-256 differs): "
                        "the file was replaced or damaged; rebuild it with `hant-trt build`")
    return meta


def _norm_version(v) -> list[str]:
    return [c for c in str(v).strip().lstrip("vV").split(".") if c != ""]


def _same_version(a, b) -> bool:
    # "10.9.0" and "10.9.0.34" name the same release at different precision: compare what both say.
    x, y = _norm_version(a), _norm_version(b)
    n = min(len(x), len(y))
    return x[:n] == y[:n]


def _norm_cc(v) -> str:
    if isinstance(v, (tuple, list)):
        return ".".join(str(int(c)) for c in v)
    return str(v).strip()


def _norm_gpu(v) -> str:
    return " ".join(str(v).split()).lower()


def check_compatible(meta: EngineMetadata, current: dict) -> None:
    """Refuse an engine built for another TensorRT version or GPU, with one line saying which.

    meta: the engine's metadata.
    current: this machine, keys `tensorrt_version` ("10.9.0"), `compute_capability` ("8.6" or
        (8, 6)) and `gpu_name`; a key missing here or in `meta` is not checked (a CPU engine
        records none of them).
    Checked in order TensorRT version, compute capability, GPU name: the first mismatch is the one
    reported, since it alone is reason enough to rebuild.
    """
    name = Path(meta.file).name or meta.name
    checks = (("tensorrt_version", "TensorRT", _same_version),
              ("compute_capability", "GPU compute capability", lambda a, b: _norm_cc(a) == _norm_cc(b)),
              ("gpu_name", "GPU", lambda a, b: _norm_gpu(a) == _norm_gpu(b)))
    for key, label, same in checks:
        want, have = getattr(meta, key), current.get(key)
        if want in (None, "") or have in (None, ""):
            continue
        if not same(want, have):
            shown_want = _norm_cc(want) if key == "compute_capability" else want
            shown_have = _norm_cc(have) if key == "compute_capability" else have
            raise UserError(f"{name} was built for {label} {shown_want}, this machine has {shown_have}: "
                            "rebuild the engine here with `hant-trt build`")


def io_from_onnx(onnx_path: str | Path) -> tuple[list[dict], list[dict]]:
    """Graph inputs (initialisers excluded) and outputs of an ONNX file as {name, dtype, shape}
    lists; a symbolic or unknown dimension is -1."""
    import onnx

    p = Path(onnx_path)
    if not p.is_file():
        raise UserError(f"ONNX file {p} not found")
    try:
        m = onnx.load(str(p), load_external_data=False)
    except Exception as exc:  # onnx raises DecodeError and friends for a file that is not a model
        raise UserError(f"{p.name} is not a readable ONNX model ({type(exc).__name__})") from None
    inits = {i.name for i in m.graph.initializer}

    def desc(vi) -> dict:
        t = vi.type.tensor_type
        if t.elem_type not in ONNX_DTYPES:
            raise UserError(f"{p.name}: tensor {vi.name!r} has ONNX element type {t.elem_type}, "
                            "which Triton and hant-trt do not support")
        if not t.HasField("shape"):
            raise UserError(f"{p.name}: tensor {vi.name!r} has no shape; export with static shapes")
        return {"name": vi.name, "dtype": ONNX_DTYPES[t.elem_type],
                "shape": [d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim]}

    return [desc(v) for v in m.graph.input if v.name not in inits], [desc(v) for v in m.graph.output]


def optimize_for_ort(src_onnx: str | Path, dst_onnx: str | Path, threads: int | None = None) -> Path:
    """Write ONNX Runtime's offline-optimised copy of `src_onnx` to `dst_onnx` (atomically).

    Uses ORT_ENABLE_EXTENDED: constant folding and node fusions into `com.microsoft` ops (e.g.
    FusedConv) that every ONNX Runtime CPU build runs. ORT_ENABLE_ALL is deliberately not used: it
    adds the NCHWc layout transformer, whose `com.microsoft.nchwc` ops are blocked for this CPU's
    vector width (ORT itself warns the file "should only be used in the same environment"); the
    session still applies those layout optimisations at load time on the target machine.

    src_onnx: the verified student ONNX. dst_onnx: output path (conventionally `NAME.ort.onnx`).
    threads: intra-op threads for the optimising session (default: ONNX Runtime's choice); it does
        not change the written model.
    """
    import onnxruntime as ort

    src, dst = Path(src_onnx), Path(dst_onnx)
    if not src.is_file():
        raise UserError(f"ONNX file {src} not found")
    if src.resolve() == dst.resolve():
        raise UserError(f"optimize_for_ort would overwrite its input {src}; choose another output path")

    def write(tmp: str) -> None:
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        so.optimized_model_filepath = tmp   # ends in .tmp, so ORT writes ONNX (".ort" would mean ORT format)
        so.log_severity_level = 3
        if threads:
            so.intra_op_num_threads = int(threads)
        try:
            ort.InferenceSession(str(src), so, providers=["CPUExecutionProvider"])
        except Exception as exc:  # ORT's Fail/InvalidGraph/... for a model it cannot load
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UserError(f"ONNX Runtime cannot load {src.name}: {first[:200]}") from None

    return atomic.write_with(dst, write)


__all__ = ["EngineMetadata", "PLAN_FORMAT", "ORT_FORMAT", "FORMATS", "ONNX_DTYPES", "metadata_path",
           "file_sha256", "write_metadata", "read_metadata", "check_compatible", "io_from_onnx",
           "optimize_for_ort"]
