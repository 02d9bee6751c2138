"""INT8 calibration on real activations, in PyTorch: one per-tensor range (amax) for the input of
every Conv2d/Linear, keyed by its module path — the ranges `qdq_trt.quantize_qdq` writes into the
Q/DQ ONNX and `fakequant.fake_quantize` simulates. Signed bounds of each layer's input and output
are recorded too (`lo`/`hi`, `out_lo`/`out_hi`): the "ort" layout quantizes activations
asymmetrically to uint8 and also quantizes layer outputs (see `qdq_ort`).

Methods (as in TensorRT's and pytorch-quantization's calibrators):
- "max": the largest |x| seen;
- "percentile": the `percentile`-th percentile of |x| over a histogram of `num_bins` bins;
- "entropy": the threshold minimising the KL divergence between the |x| histogram and its 128-level
  quantized version (TensorRT's entropy calibration).

Results are cached under calib/ (`calibrate_cached`) keyed by the SHA-256 of what produced them.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch
from torch import nn

from .. import atomic
from ..errors import UserError

CALIB_METHODS = ("max", "percentile", "entropy")
QUANT_LAYERS = (nn.Conv2d, nn.Linear)
AMAX_FLOOR = 1e-8          # an all-zero input still needs a positive scale
CACHE_VERSION = 2          # bump when the calibration arithmetic changes: old cache files are ignored


def int8_scale(amax: float) -> float:
    """Symmetric int8 scale for a range: max(amax, AMAX_FLOOR) / 127 (as float32, like the ONNX)."""
    return float(np.float32(max(float(amax), AMAX_FLOOR) / 127.0))


@dataclass
class CalibResult:
    """Calibrated activation ranges.

    amax: module path (within the calibrated module) → per-tensor |x| range of that Conv2d/Linear's input.
    lo / hi: the same inputs' signed bounds (min, max), clipped to ±amax;
    out_lo / out_hi: the signed bounds of the layer's output, clipped to ±(its |y| range by `method`).
    method: "max" | "percentile" | "entropy"; percentile / num_bins: the method's parameters.
    batches / samples: how much data produced it.
    """

    amax: dict[str, float]
    lo: dict[str, float] = field(default_factory=dict)
    hi: dict[str, float] = field(default_factory=dict)
    out_lo: dict[str, float] = field(default_factory=dict)
    out_hi: dict[str, float] = field(default_factory=dict)
    method: str = "max"
    percentile: float = 99.99
    num_bins: int = 2048
    batches: int = 0
    samples: int = 0
    extra: dict = field(default_factory=dict)

    def scale(self, path: str) -> float:
        """The int8 scale (amax / 127) of the input of the layer at `path`."""
        return int8_scale(self.amax[path])

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, obj: dict) -> "CalibResult":
        known = {k: obj[k] for k in cls.__dataclass_fields__ if k in obj}
        for name in ("amax", "lo", "hi", "out_lo", "out_hi"):
            known[name] = {str(k): float(v) for k, v in known.get(name, {}).items()}
        return cls(**known)

    def subset(self, prefixes: tuple[str, ...], strip: bool = False) -> "CalibResult":
        """The ranges of the paths under `prefixes` (the prefix removed when `strip`)."""
        def sub(d: dict) -> dict:
            return {(k[len(p):] if strip else k): v for k, v in d.items() for p in prefixes if k.startswith(p)}

        return CalibResult(amax=sub(self.amax), lo=sub(self.lo), hi=sub(self.hi), out_lo=sub(self.out_lo),
                           out_hi=sub(self.out_hi), method=self.method, percentile=self.percentile,
                           num_bins=self.num_bins, batches=self.batches, samples=self.samples, extra=dict(self.extra))

    def input_range(self, path: str) -> tuple[float, float]:
        """Signed (lo, hi) of the layer's input, 0 included (uint8 with a zero point needs it);
        (−amax, amax) for results without signed bounds."""
        a = self.amax[path]
        return _with_zero(self.lo.get(path, -a), self.hi.get(path, a))

    def output_range(self, path: str) -> tuple[float, float]:
        """Signed (lo, hi) of the layer's output, 0 included."""
        if path not in self.out_lo:
            raise UserError(f"no output range for '{path}': calibrate again (ranges from before output "
                            "ranges were recorded)")
        return _with_zero(self.out_lo[path], self.out_hi[path])


def _with_zero(lo: float, hi: float) -> tuple[float, float]:
    return min(float(lo), 0.0), max(float(hi), 0.0)


class _Histogram:
    """Histogram of |x| with a fixed bin width set by the first batch; a later, larger value adds
    bins of the same width (pytorch-quantization's HistogramCalibrator), so no data is rebinned."""

    def __init__(self, num_bins: int):
        self.num_bins = num_bins
        self.counts: np.ndarray | None = None
        self.width = 0.0

    def add(self, x: torch.Tensor) -> None:
        a = x.detach().abs().flatten().float().cpu()
        top = float(a.max()) if a.numel() else 0.0
        if self.counts is None:
            if top <= 0.0:
                return                    # width unknown yet; zeros only move bin 0
            self.width = top / self.num_bins
            self.counts = np.zeros(self.num_bins, dtype=np.float64)
        n = len(self.counts)
        if top > n * self.width:
            n = int(np.ceil(top / self.width))
            self.counts = np.concatenate([self.counts, np.zeros(n - len(self.counts))])
        h = torch.histc(a, bins=n, min=0.0, max=n * self.width).double().numpy()
        self.counts += h

    def edges(self) -> np.ndarray:
        return np.arange(len(self.counts) + 1, dtype=np.float64) * self.width


def percentile_amax(counts: np.ndarray, edges: np.ndarray, percentile: float) -> float:
    """The upper edge of the bin where the cumulative share of |x| reaches `percentile` %."""
    cdf = np.cumsum(counts) / counts.sum()
    idx = int(np.searchsorted(cdf, percentile / 100.0))
    return float(edges[min(idx + 1, len(edges) - 1)])


def entropy_amax(counts: np.ndarray, edges: np.ndarray, num_bits: int = 8, start_bin: int = 128,
                 stride: int = 1) -> float:
    """TensorRT's entropy calibration: for each candidate threshold bin i ≥ `start_bin`, the
    reference distribution P is the histogram clipped at i (outliers added to its last bin) and Q is
    P's first i bins merged into 2^(num_bits-1) levels and expanded back uniformly over the non-empty
    bins; the threshold minimising KL(P‖Q) wins (the last one on ties), as in pytorch-quantization.

    counts / edges: the |x| histogram (len(edges) == len(counts) + 1).
    """
    bins = counts.astype(np.float64).copy()
    if len(bins) > 1:
        bins[0] = bins[1]                 # the (ReLU) zero spike would dominate every divergence
    total = bins.sum()
    nlevels = 1 << (num_bits - 1)
    if len(bins) < start_bin or total <= 0:
        return float(edges[-1])
    tail = np.concatenate([np.cumsum(bins[::-1])[::-1], [0.0]])   # tail[i] = sum(bins[i:])
    cands = np.arange(start_bin, len(bins) + 1, stride)
    j = np.arange(len(bins))
    kls = np.empty(len(cands))
    # thresholds in chunks, each a (chunk, bins) array: vectorised, memory bounded
    step = max(1, (1 << 21) // len(bins))
    for c0 in range(0, len(cands), step):
        ii = cands[c0:c0 + step][:, None]
        rows = np.arange(len(ii))[:, None]
        valid = j[None, :] < ii
        p = np.where(valid, bins[None, :], 0.0)
        # level of each bin, exactly np.digitize(range(i), linspace(0, i, nlevels + 1)) - 1
        level = np.minimum((j[None, :] * nlevels) // ii, nlevels - 1)
        flat = (rows * nlevels + level).ravel()
        nonzero = p > 0
        level_sum = np.bincount(flat, weights=p.ravel(), minlength=len(ii) * nlevels)
        level_cnt = np.bincount(flat, weights=nonzero.ravel(), minlength=len(ii) * nlevels)
        idx = rows * nlevels + level
        q = np.where(nonzero, level_sum[idx] / np.maximum(level_cnt[idx], 1), 0.0)
        p[rows[:, 0], ii[:, 0] - 1] += tail[ii[:, 0]]          # outliers into the last kept bin
        p /= p.sum(1, keepdims=True)
        q_sum = q.sum(1, keepdims=True)
        q /= np.where(q_sum > 0, q_sum, 1.0)
        with np.errstate(divide="ignore", invalid="ignore"):
            terms = np.where(p > 0, p * np.log(p / q), 0.0)      # q == 0 where p > 0 → inf
        kls[c0:c0 + step] = np.where(q_sum[:, 0] > 0, terms.sum(1), np.inf)
    # the last minimum on ties, as pytorch-quantization
    best_i = int(cands[len(kls) - 1 - int(np.argmin(kls[::-1]))])
    return float(edges[best_i])


def _check_method(method: str, percentile: float, num_bins: int) -> None:
    if method not in CALIB_METHODS:
        raise UserError(f"unknown calibration method '{method}' (known: {', '.join(CALIB_METHODS)})")
    if method == "percentile" and not 0.0 < percentile <= 100.0:
        raise UserError(f"calibration percentile {percentile} must be in (0, 100]")
    if method != "max" and num_bins < 128:
        raise UserError(f"calibration needs at least 128 histogram bins (got {num_bins})")


@torch.no_grad()
def calibrate(module: nn.Module, batches: Iterable[torch.Tensor], method: str = "max", percentile: float = 99.99,
              num_bins: int = 2048) -> CalibResult:
    """Run a BN-folded eval copy of `module` (left untouched) on `batches` and record the range of the input
    of every Conv2d/Linear.

    module: the fp32 module whose layers will be quantized (BN folded or not: a conv's input is the
        same either way).
    batches: real input batches of that module (tensors or numpy arrays), e.g. teacher activations
        at the slot's input; at least one.
    method: "max" (default), "percentile" or "entropy".
    percentile: for "percentile", the share of |x| kept (default 99.99).
    num_bins: histogram bins for "percentile" and "entropy" (default 2048).
    Returns a CalibResult keyed by module path within `module`.
    """
    _check_method(method, percentile, num_bins)
    from ..latency.export import fold_batchnorm

    # outputs as exported: a conv's output range is the one after its BatchNorm is folded in
    module = fold_batchnorm(module)
    layers = {path: m for path, m in module.named_modules() if isinstance(m, QUANT_LAYERS)}
    if not layers:
        raise UserError(f"{type(module).__name__} has no Conv2d/Linear layer to calibrate")
    running_max = {p: 0.0 for p in layers}
    lo = {p: 0.0 for p in layers}
    hi = {p: 0.0 for p in layers}
    out_lo = {p: 0.0 for p in layers}
    out_hi = {p: 0.0 for p in layers}
    hists = {p: _Histogram(num_bins) for p in layers} if method != "max" else {}
    out_hists = {p: _Histogram(num_bins) for p in layers} if method != "max" else {}

    def hook_for(path: str) -> Callable:
        def hook(_layer, inputs):
            x = inputs[0].detach()
            running_max[path] = max(running_max[path], float(x.abs().max()))
            lo[path], hi[path] = min(lo[path], float(x.min())), max(hi[path], float(x.max()))
            if hists:
                hists[path].add(x)
        return hook

    def out_hook_for(path: str) -> Callable:
        def hook(_layer, _inputs, y):
            y = y.detach()
            out_lo[path], out_hi[path] = min(out_lo[path], float(y.min())), max(out_hi[path], float(y.max()))
            if out_hists:
                out_hists[path].add(y)
        return hook

    # hooks go on the folded eval copy, which is dropped afterwards: nothing to restore
    for p, m in layers.items():
        m.register_forward_pre_hook(hook_for(p))
        m.register_forward_hook(out_hook_for(p))
    n_batches = n_samples = 0
    for b in batches:
        x = torch.as_tensor(b)
        if not x.is_floating_point():
            x = x.float()
        module(x)
        n_batches += 1
        n_samples += int(x.shape[0]) if x.dim() else 1
    if n_batches == 0:
        raise UserError("calibration got no batches: give at least one batch of real inputs")

    def limit(h, top: float) -> float:
        if method == "max" or h is None or h.counts is None:
            return top
        if method == "percentile":
            return percentile_amax(h.counts, h.edges(), percentile)
        return entropy_amax(h.counts, h.edges())

    amax: dict[str, float] = {}
    for p in layers:
        amax[p] = limit(hists.get(p), running_max[p])
        lo[p], hi[p] = max(lo[p], -amax[p]), min(hi[p], amax[p])
        top = limit(out_hists.get(p), max(-out_lo[p], out_hi[p]))
        out_lo[p], out_hi[p] = max(out_lo[p], -top), min(out_hi[p], top)
    return CalibResult(amax=amax, lo=lo, hi=hi, out_lo=out_lo, out_hi=out_hi, method=method, percentile=float(percentile), num_bins=int(num_bins),
                       batches=n_batches, samples=n_samples)


def default_calib_dir() -> Path:
    """`calib/` at the repository root (next to pyproject.toml), else `./calib`."""
    root = Path(__file__).resolve().parents[2]
    return root / "calib" if (root / "pyproject.toml").is_file() else Path.cwd() / "calib"


def calib_key(key_parts: dict, method: str, percentile: float, num_bins: int) -> str:
    """SHA-256 (hex) of `key_parts` plus the method and those of its parameters that matter."""
    params: dict = {"method": method, "version": CACHE_VERSION}
    if method != "max":
        params["num_bins"] = int(num_bins)
    if method == "percentile":
        params["percentile"] = float(percentile)
    try:
        text = json.dumps({"key": key_parts, "params": params}, sort_keys=True, separators=(",", ":"))
    except TypeError as exc:
        raise UserError(f"calibration cache key must be JSON-serialisable ({exc})") from None
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def calibrate_cached(key_parts: dict, module: nn.Module, batches: Iterable[torch.Tensor] | Callable[[], Iterable],
                     method: str = "max", percentile: float = 99.99, num_bins: int = 2048,
                     cache_dir: str | Path | None = None) -> CalibResult:
    """`calibrate`, cached as JSON in `cache_dir` (default `default_calib_dir()`).

    key_parts: everything that produced the ranges, JSON-serialisable — e.g. {"signature": ...,
        "weights": <sha of the candidate's weights>, "images": <fingerprint of the calibration
        images>, "shape": [...]}. Any change gives another key, so a stale file is never used.
    batches: as for `calibrate`, or a zero-argument callable returning them (only called on a miss).
    The file is `<sha256>.json`; an unreadable or mismatching file is recomputed and rewritten.
    """
    _check_method(method, percentile, num_bins)
    key = calib_key(key_parts, method, percentile, num_bins)
    folder = Path(cache_dir) if cache_dir is not None else default_calib_dir()
    path = folder / f"{key}.json"
    if path.is_file():
        try:
            obj = json.loads(path.read_text())
            if obj.get("key") == key and obj.get("key_parts") == json.loads(json.dumps(key_parts)):
                return CalibResult.from_json(obj["result"])
        except (ValueError, KeyError, TypeError):
            pass                        # corrupt or foreign file: recompute below
    res = calibrate(module, batches() if callable(batches) else batches, method, percentile, num_bins)
    atomic.write_json(path, {"key": key, "key_parts": key_parts, "result": res.to_json()})
    return res
