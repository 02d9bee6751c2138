"""Engine metadata JSON written beside every deployable engine, and the compatibility check that
refuses a plan built for another GPU or TensorRT version."""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .. import __version__, atomic
from ..errors import UserError

_ONNX_TYPES = {1: "FP32", 10: "FP16", 11: "FP64", 7: "INT64", 6: "INT32", 3: "INT8", 2: "UINT8", 9: "BOOL"}


@dataclass
class EngineMetadata:
    name: str
    format: str                               # tensorrt_plan | onnxruntime_onnx
    file: str
    sha256: str = ""
    created: str = ""
    tensorrt_version: str | None = None
    cuda_version: str | None = None
    gpu_name: str | None = None
    compute_capability: str | None = None
    cpu: str | None = None
    ort_version: str | None = None
    precision_plan: list = field(default_factory=list)
    inputs: list = field(default_factory=list)        # {name, dtype, shape}
    outputs: list = field(default_factory=list)
    predicted_latency_s: float | None = None
    measured_latency_s: float | None = None
    accuracy: dict = field(default_factory=dict)
    teacher: dict = field(default_factory=dict)
    hant_trt_version: str = __version__


def metadata_path(engine_path: str | Path) -> Path:
    return Path(str(engine_path) + ".json")


def write_metadata(engine_path: str | Path, meta: EngineMetadata) -> Path:
    p = Path(engine_path)
    meta.sha256 = hashlib.sha256(p.read_bytes()).hexdigest()
    meta.created = meta.created or time.strftime("%Y-%m-%dT%H:%M:%S")
    if meta.format == "onnxruntime_onnx" and not meta.ort_version:
        import onnxruntime

        meta.ort_version = onnxruntime.__version__
    return atomic.write_json(metadata_path(p), asdict(meta))


def read_metadata(engine_path: str | Path) -> EngineMetadata:
    p = metadata_path(engine_path)
    if not p.is_file():
        raise UserError(f"no metadata {p.name} beside {Path(engine_path).name}: it was not built by hant-trt")
    try:
        return EngineMetadata(**json.loads(p.read_text()))
    except (json.JSONDecodeError, TypeError) as exc:
        raise UserError(f"{p} is not valid engine metadata ({exc})") from None


def check_compatible(meta: EngineMetadata, current: dict) -> None:
    """`current`: gpu_name, compute_capability, tensorrt_version of this machine."""
    for key, label in (("tensorrt_version", "TensorRT"), ("compute_capability", "GPU compute capability"),
                       ("gpu_name", "GPU")):
        want, have = getattr(meta, key), current.get(key)
        if want and have and str(want) != str(have):
            raise UserError(f"{Path(meta.file).name} was built for {label} {want}, this machine has {have}: "
                            "rebuild it here (`hant-trt build`)")


def io_from_onnx(onnx_path: str | Path) -> tuple[list, list]:
    import onnx

    m = onnx.load(str(onnx_path), load_external_data=False)
    inits = {i.name for i in m.graph.initializer}

    def desc(vi):
        t = vi.type.tensor_type
        return {"name": vi.name, "dtype": _ONNX_TYPES.get(t.elem_type, str(t.elem_type)),
                "shape": [d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim]}

    return ([desc(v) for v in m.graph.input if v.name not in inits], [desc(v) for v in m.graph.output])


def optimize_for_ort(src: str | Path, dst: str | Path, level: str = "extended") -> Path:
    """ONNX Runtime's offline-optimised model (EXTENDED: portable across CPUs, unlike ALL's
    layout-specific kernels)."""
    import onnxruntime as ort

    def write(tmp: str) -> None:
        so = ort.SessionOptions()
        so.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED if level == "extended"
                                       else ort.GraphOptimizationLevel.ORT_ENABLE_BASIC)
        so.optimized_model_filepath = tmp
        so.log_severity_level = 3
        ort.InferenceSession(str(src), so, providers=["CPUExecutionProvider"])

    return atomic.write_with(Path(dst), write)
