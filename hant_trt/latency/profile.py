"""Fill the latency table for a list of modules: export each unique (signature, precision) once,
prepare it on the backend, time it; failures are recorded with their error and skipped, never
fatal. Pairs already in the table for this backend, version and device are not measured again, so
a re-run over a full table measures nothing."""

from __future__ import annotations

import os
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..quant.layouts import DEFAULT, QdqLayout, quantize_int8
from .backends.base import Backend
from .lut import LatencyRow, LatencyTable, make_key


@dataclass
class ProfileItem:
    """One thing to time: its table signature, (N, C, H, W) input, a factory for the module (eval
    mode) and, for int8, a zero-argument callable yielding calibration batches (None: seeded random
    batches, good enough for timing only)."""

    signature: str
    input_shape: tuple[int, ...]                 # (N, C, H, W)
    make_module: Callable[[], object]            # builds the nn.Module (eval mode)
    calib: Callable | None = None                # int8: yields calibration batches


@dataclass
class ProfileResult:
    """Outcome per (signature, precision): figures in seconds, or `error`; `cached` = from the table."""

    signature: str
    precision: str
    median_s: float | None
    p90_s: float | None
    stdev_s: float | None
    count: int
    error: str | None = None
    cached: bool = False


@dataclass
class Reference:
    """What a candidate is timed beside: a teacher part (`item`, at the profile's base precision)
    whose latency `seconds` was measured together with the whole teacher, stem and head. The
    candidate's row is then (its time / the reference's time, medians over alternating rounds) ×
    `seconds`: a load that comes and goes on a shared machine slows both alike, so every row
    stays on the scale the budget and the `scale` model are computed on."""

    item: ProfileItem
    seconds: float


PAIRED = "+paired"      # rows measured beside a reference never mix with rows timed alone


def table_key(item: ProfileItem, precision: str, backend: Backend, device: str, layout: QdqLayout = DEFAULT,
              paired: bool = False) -> tuple:
    # each int8 layout is another graph: its rows never mix with another layout's
    return make_key(item.signature, item.input_shape, layout.table_precision(precision), backend.name,
                    backend.version() + (PAIRED if paired else ""), device)


def _make_onnx(item: ProfileItem, precision: str, workdir: Path, layout: QdqLayout = DEFAULT) -> Path:
    from .export import export_onnx

    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in item.signature)[:150]
    base = workdir / f"{safe}.fp32.onnx"
    if not base.exists():
        export_onnx(item.make_module(), item.input_shape, base)
    if precision == "fp32":
        return base
    from . import precision as prec

    tag = layout.file_precision(precision)
    out = workdir / f"{safe}.{tag}.onnx"
    if not out.exists():
        if precision == "fp16":
            prec.to_fp16(base, out)
        elif precision == "int8":
            quantize_int8(item.make_module(), item.input_shape, out, item.calib, layout=layout)
        else:
            raise ValueError(f"unknown precision {precision}")
    return out


def prepare_item(item: ProfileItem, precision: str, backend: Backend, workdir: Path, layout: QdqLayout = DEFAULT):
    """The item ready to time on `backend` (an ONNX export at `precision` for engines, the module
    itself for torch)."""
    if backend.name == "torch":
        return backend.prepare_module(item.make_module(), item.input_shape, precision)
    return backend.prepare(_make_onnx(item, precision, Path(workdir), layout), precision)


def _time_item(item, precision, backend, workdir, timing_kw, layout=DEFAULT):
    return backend.time(prepare_item(item, precision, backend, workdir, layout), **timing_kw)


def _time_paired(item, precision, backend, workdir, timing_kw, layout, ref: Reference, ref_prepared,
                 rounds: int) -> tuple[float, float, float, int]:
    """(median, p90, stdev, rounds) of `item` from `rounds` alternating (reference, item) timings,
    each round's ratio × the reference's seconds."""
    from .paired import time_beside
    from .timing import Stats

    prepared = prepare_item(item, precision, backend, workdir, layout)
    kw = dict(timing_kw, max_seconds=max(0.05, timing_kw.get("max_seconds", 2.0) / rounds))
    pairs = time_beside(backend, ref_prepared, [prepared], rounds, **kw)[0]
    st = Stats.of([t / r * ref.seconds for r, t in pairs])
    return st.median, st.p90, st.stdev, len(pairs)


def profile_items(items: list[ProfileItem], backend: Backend, table: LatencyTable, precisions: list[str],
                  workdir: Path, progress: bool = True, max_seconds: float = 2.0, cv_target: float = 0.02,
                  warmup_ms: float = 100.0, layout: QdqLayout = DEFAULT, references: dict | None = None,
                  reference_precision: str = "fp32", rounds: int = 3) -> list[ProfileResult]:
    """Measure every (item, precision) not yet in `table`; returns one result per unique pair.

    items: what to time (deduplicated by (signature, precision)).
    backend: a Backend from get_backend; torch times the module directly, the others an ONNX
        export (fp16 / int8 Q/DQ conversions for those precisions) written under `workdir`.
    table: the LatencyTable read and filled (failures stored as rows with `error`).
    precisions: e.g. ["fp32", "fp16"]; a precision that cannot be made is recorded as an error.
    progress: tqdm bar with ETA on stderr (default True; HANT_TRT_NO_PROGRESS=1 hides it).
    max_seconds / cv_target / warmup_ms: measurement settings (see timing.measure; defaults 2.0,
        0.02, 100).
    layout: the Q/DQ layout of int8 exports (`quant.layouts`; its own table rows).
    references: signature → Reference: those items are timed beside it in `rounds` alternating
        rounds (`Reference`; rows keyed apart from rows timed alone); None: every item alone.
    reference_precision: the precision references are timed at (the profile's base precision).
    """
    from ..progress import progress as bar_of

    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    device = backend.device().fingerprint
    seen, todo, results = set(), [], []
    for it in items:
        for p in precisions:
            if (it.signature, p) in seen:
                continue
            seen.add((it.signature, p))
            row = table.get(table_key(it, p, backend, device, layout, _paired(references, it)))
            if row is not None:
                results.append(ProfileResult(it.signature, p, row.median_s, row.p90_s, row.stdev_s, row.count,
                                             row.error, cached=True))
            else:
                todo.append((it, p))
    bar = bar_of(len(todo), desc=f"profile on {backend.name}", unit="op", items=todo, show=progress)
    kw = dict(warmup_ms=warmup_ms, max_seconds=max_seconds, cv_target=cv_target)
    ref_prepared: dict[str, object] = {}
    for it, p in bar:
        ref = (references or {}).get(it.signature)
        key = table_key(it, p, backend, device, layout, ref is not None)
        try:
            if ref is None:
                t = _time_item(it, p, backend, workdir, kw, layout)
                row = LatencyRow(*key, median_s=t.median_s, p90_s=t.p90_s, stdev_s=t.stdev_s, count=t.count)
            else:
                if ref.item.signature not in ref_prepared:
                    ref_prepared[ref.item.signature] = prepare_item(ref.item, reference_precision, backend,
                                                                    workdir, layout)
                med, p90, sd, n = _time_paired(it, p, backend, workdir, kw, layout, ref,
                                               ref_prepared[ref.item.signature], rounds)
                row = LatencyRow(*key, median_s=med, p90_s=p90, stdev_s=sd, count=n)
        except Exception as exc:  # recorded and skipped, never fatal to the run
            msg = f"{type(exc).__name__}: {exc}"
            if os.environ.get("HANT_TRT_DEBUG"):
                traceback.print_exc()
            row = LatencyRow(*key, error=msg[:500])
        table.put(row)
        results.append(ProfileResult(it.signature, p, row.median_s, row.p90_s, row.stdev_s, row.count, row.error))
    return results


def _paired(references: dict | None, item: ProfileItem) -> bool:
    return bool(references) and item.signature in references


def measure_together(items: list[ProfileItem], backend: Backend, table: LatencyTable, workdir: Path,
                     precision: str = "fp32", rounds: int = 3, max_seconds: float = 1.0, cv_target: float = 0.02,
                     paired: set[str] = frozenset()) -> dict[str, float]:
    """Seconds per signature of `items` timed in `rounds` alternating rounds (each the median of
    its rounds): the whole teacher and its parts under the same machine state, so the budget
    (a fraction of the teacher) and the additivity correction do not mix a slow spell with a fast
    one. Read from `table` when every one is there already (they were measured together then);
    else all measured again and stored — `paired` signatures under the paired key (they are the
    references candidates are timed beside: ratio 1). RuntimeError when one cannot be measured."""
    from .paired import time_in_rounds
    from .timing import Stats

    device = backend.device().fingerprint
    keys = {it.signature: table_key(it, precision, backend, device, paired=it.signature in paired) for it in items}
    got = {sig: table.get(k) for sig, k in keys.items()}
    if all(r is not None and r.error is None and r.median_s for r in got.values()):
        return {sig: r.median_s for sig, r in got.items()}
    Path(workdir).mkdir(parents=True, exist_ok=True)
    try:
        prepared = [prepare_item(it, precision, backend, Path(workdir)) for it in items]
        times = time_in_rounds(backend, prepared, rounds, warmup_ms=50.0, max_seconds=max_seconds,
                               cv_target=cv_target)
    except Exception as exc:
        raise RuntimeError(f"could not measure the teacher's parts: {type(exc).__name__}: {exc}") from None
    out = {}
    for it, ts in zip(items, times):
        st = Stats.of(ts)
        table.put(LatencyRow(*keys[it.signature], median_s=st.median, p90_s=st.p90, stdev_s=st.stdev, count=len(ts)))
        out[it.signature] = st.median
    return out


def measure_module(module, input_shape, backend: Backend, table: LatencyTable, workdir: Path, signature: str,
                   precision: str = "fp32", max_seconds: float = 2.0, cv_target: float = 0.02,
                   layout: QdqLayout = DEFAULT, rounds: int = 3) -> ProfileResult:
    """One module (the whole teacher, a fixed part) through the same path as candidates, cached in
    the table under `signature`; RuntimeError when it cannot be measured (the run needs it).

    rounds: separate timings whose median is stored — the teacher's figure sets every relative
    budget, and one timing caught in a slow spell of a shared host was 1.9x off (RESULTS, demo)."""
    import statistics

    item = ProfileItem(signature, tuple(input_shape), lambda: module)
    device = backend.device().fingerprint
    key = table_key(item, precision, backend, device, layout)
    if rounds > 1 and table.get(key) is None:
        try:
            Path(workdir).mkdir(parents=True, exist_ok=True)
            prepared = prepare_item(item, precision, backend, Path(workdir), layout)
            runs = sorted((backend.time(prepared, warmup_ms=100.0, max_seconds=max_seconds, cv_target=cv_target)
                           for _ in range(rounds)), key=lambda t: t.median_s)
            mid = runs[len(runs) // 2]
            table.put(LatencyRow(*key, median_s=mid.median_s, p90_s=mid.p90_s,
                                 stdev_s=statistics.pstdev(t.median_s for t in runs), count=sum(t.count for t in runs)))
        except Exception as exc:
            raise RuntimeError(f"could not measure {signature}: {type(exc).__name__}: {exc}") from None
    res = profile_items([item], backend, table, [precision], workdir, progress=False, max_seconds=max_seconds,
                        cv_target=cv_target, layout=layout)[0]
    if res.error:
        raise RuntimeError(f"could not measure {signature}: {res.error}")
    return res
