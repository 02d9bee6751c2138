"""`profile` stage: every unique candidate signature of the run timed on the target backend.

Rows go to the shared latency table (measured once per signature × precision × backend × device);
the run gets `latency.csv` (one row per candidate it can use) and `latency_fixed.json` (stem, head,
whole teacher, and the additivity correction: measured teacher − (stem + head + Σ keep)).
"""

from __future__ import annotations

import csv
import io
import time

from .. import atomic
from ..config import RunConfig
from ..quant.layouts import layout_for
from ..rundir import RunDir, stage_fingerprint
from ..runfiles import LATENCY_COLUMNS, SCORES
from .backends import profile_backend


def profile_fingerprint(run: RunDir, cfg: RunConfig) -> str:
    prof = dict(vars(cfg.profile))
    if prof.get("context") == "alone":          # left out at their defaults: saved runs' fingerprints stay valid
        prof.pop("context", None)
        prof.pop("context_rounds", None)
    if not prof.get("compile"):
        prof.pop("compile", None)
    if not prof.get("islands"):
        prof.pop("islands", None)
    if "int8" in prof.get("precisions", []):
        prof["int8_layout"] = layout_for(cfg.profile).name
        prof["int8_model"] = "junctions-whole"  # stem/head at int8, junction savings fitted to the whole
    else:
        prof.pop("int8_layout", None)
    prof["timing"] = "beside-teacher-parts"     # host-timed rows are ratios to teacher parts × those parts
    return stage_fingerprint({"profile": prof, "teacher": cfg.teacher}, upstream={"score": run.stage("score").fingerprint})


def _candidate_rows(run: RunDir) -> list[tuple[int, int, str, str]]:
    """(first, last, op, signature) of every scored candidate (keep included)."""
    from ..scores import read_scores

    run.require("score")
    seen, out = set(), []
    for r in read_scores(run.path(SCORES)):
        key = (r.first, r.last, r.op)
        if key not in seen:
            seen.add(key)
            out.append((r.first, r.last, r.op, r.signature))
    return out


def _teacher_span(keep: dict, first: int, last: int) -> tuple[str | None, float | None]:
    """(signature, seconds) of the teacher's own parts first..last from their `keep` rows, or
    (None, None) when one is missing."""
    if any(i not in keep for i in range(first, last + 1)):
        return None, None
    return ("+".join(keep[i]["signature"] for i in range(first, last + 1)),
            sum(keep[i]["median_s"] for i in range(first, last + 1)))


def _in_context(out_rows: list[dict], fixed: dict, d, teacher, maker, backend, table, workdir, cfg) -> dict:
    """Replace each fp32 and int8 candidate row's latency (int8 only with `profile.context =
    "int8"`) by its in-context one (`latency.context`), in place; the standalone figure stays in
    `alone_s`, the measured saving in `saving_s`. fp32 swaps are timed in the fp32 teacher, int8
    swaps in the int8 teacher (`fixed` then holds its int8 model: teacher_int8_s,
    teacher_int8_sum_s, junction savings)."""
    from ..quant.layouts import layout_for
    from .context import Swap, in_context_latency, measure_in_context

    t0 = time.time()
    out = {"rounds": cfg.profile.context_rounds}
    for prec in ("fp32", "int8"):
        if prec not in cfg.profile.precisions or (cfg.profile.context == "int8" and prec != "int8"):
            continue
        if prec == "int8" and not (fixed.get("teacher_int8_s") and fixed.get("teacher_int8_sum_s")):
            out["int8"] = "no whole int8 teacher to time swaps in: standalone int8 rows kept"
            continue
        keep = {r["first"]: r for r in out_rows
                if r["op"] == "keep" and r["first"] == r["last"] and r["precision"] == prec}
        rows = [r for r in out_rows if r["precision"] == prec and r["op"] != "keep"]
        spans = {id(r): _teacher_span(keep, r["first"], r["last"]) for r in rows}
        swaps = [Swap(r["first"], r["last"], r["op"], r["signature"], spans[id(r)][0])
                 for r in rows if spans[id(r)][0] is not None]
        got = measure_in_context(d, teacher.name, teacher.resolution, swaps,
                                 lambda f, l, op: maker(f, l, op)(), backend, table, workdir,
                                 batch=cfg.profile.batch, rounds=cfg.profile.context_rounds,
                                 max_seconds=min(cfg.profile.max_seconds, 0.3), precision=prec,
                                 layout=layout_for(cfg.profile))
        if prec == "int8":
            whole, whole_sum = fixed["teacher_int8_s"], fixed["teacher_int8_sum_s"]
            junctions = [max(0.0, j or 0.0) for j in fixed.get("junction_saving_s") or []]
        else:
            whole, whole_sum, junctions = fixed["teacher_s"], fixed["teacher_sum_s"], []
        used = 0
        for r in rows:
            ksig, keep_s = spans[id(r)]
            row = got.get((ksig, r["signature"]))
            if row is None:
                continue        # failed or no teacher part to compare with: the standalone figure stays
            # a span's inner junctions are gone with the parts it replaces: the search's int8 model
            # (Σ parts − savings at int8 junctions) no longer subtracts them
            inner = sum(junctions[j] for j in range(r["first"] + 1, r["last"] + 1) if j < len(junctions))
            r["alone_s"], r["saving_s"] = r["median_s"], row.median_s
            r["median_s"] = max(0.0, in_context_latency(keep_s - inner, row.median_s, whole, whole_sum))
            used += 1
        out[prec] = {"swaps": len({(s.keep_signature, s.signature) for s in swaps}), "rows_in_context": used}
    out["seconds"] = round(time.time() - t0, 1)
    return out


def _int8_junctions(d, teacher, out_rows, backend, table, workdir, cfg, references: dict | None = None,
                    base: str = "fp32") -> dict:
    """The int8 side of the latency model (`latency.junction`): the stem and head at int8, what
    each junction saves between int8 neighbours, and the whole teacher at int8 beside the sum the
    model predicts for it (reported, so a user sees how far the model is from the engine).
    references: the stem's, head's and whole teacher's `Reference`s (timed beside their float
    selves, as candidates are; None: alone)."""
    from .junction import measure_junctions, teacher_parts
    from .profile import ProfileItem, measure_module, profile_items

    layout = layout_for(cfg.profile)
    keep = {int(r["first"]): r for r in out_rows if r["op"] == "keep" and r["first"] == r["last"]}
    parts = teacher_parts(d, teacher.name, teacher.resolution, cfg.profile.batch,
                          {i: keep[i]["signature"] for i in keep})
    got = measure_junctions(parts, backend, table, workdir, layout, max_seconds=cfg.profile.max_seconds,
                            cv_target=cfg.profile.cv_target, references=references, reference_precision=base)
    out = {k: got[k] for k in ("stem_int8_s", "head_int8_s", "junction_saving_s")}
    keep8 = [r["median_s"] for r in out_rows if r["op"] == "keep" and r["first"] == r["last"]
             and r["precision"] == "int8"]
    if None not in (out["stem_int8_s"], out["head_int8_s"]) and len(keep8) == len(d.slots):
        shape = (cfg.profile.batch, 3, teacher.resolution, teacher.resolution)
        sig = f"{teacher.name}:teacher|{teacher.resolution}"
        if references and sig in references:
            r = profile_items([ProfileItem(sig, shape, lambda: teacher.model)], backend, table, ["int8"], workdir,
                              progress=False, max_seconds=max(cfg.profile.max_seconds, 1.0),
                              cv_target=cfg.profile.cv_target, layout=layout, references=references,
                              reference_precision=base)[0]
            whole = None if r.error else r.median_s
        else:
            try:
                whole = measure_module(teacher.model, shape, backend, table, workdir, signature=sig,
                                       precision="int8", max_seconds=max(cfg.profile.max_seconds, 1.0),
                                       cv_target=cfg.profile.cv_target, layout=layout).median_s
            except RuntimeError:
                whole = None
        out["teacher_int8_s"] = whole
        raw = [max(0.0, s) if s is not None else 0.0 for s in out["junction_saving_s"]]
        alone = out["stem_int8_s"] + out["head_int8_s"] + sum(keep8)
        out["junction_saving_raw_s"] = out["junction_saving_s"]
        if whole is not None and sum(raw) > 0:
            # a saving is a difference of sub-millisecond timings and comes out ±50 % from run to run
            # (docs/RESULTS.md, "The int8 latency model"); their total is known better, from the whole int8 teacher
            # timed in one piece: the junctions keep their measured shares of it
            f = max(0.0, alone - whole) / sum(raw)
            out["junction_saving_s"] = [s * f for s in raw]
            out["junction_saving_scale"] = f
        out["teacher_int8_sum_s"] = alone - sum(max(0.0, s) for s in out["junction_saving_s"] if s is not None)
    return out


def _islands(d, teacher, anchors: dict, keep_sig: dict, backend, table, workdir, cfg: RunConfig, base: str) -> dict:
    """{"island_extra_s": per part (stem, slots, head), what it adds at `base` inside the int8
    teacher (`latency.islands`)}; {} when a slot has no keep row to name it by."""
    from .islands import measure_islands

    if len(keep_sig) != len(d.slots):
        return {}
    sigs = [anchors["stem"].signature] + [keep_sig[i] for i in range(len(d.slots))] + [anchors["head"].signature]
    extras = measure_islands(d, teacher.name, teacher.resolution, sigs, backend, table, workdir, layout_for(cfg.profile),
                             batch=cfg.profile.batch, rounds=cfg.profile.islands,
                             max_seconds=min(cfg.profile.max_seconds, 0.5), base=base)
    return {"island_extra_s": extras}


# alone: every row standalone | model: fp32 and int8 swaps timed inside the teacher at their
# precision | int8: only int8 ones (fp32 savings inside the teacher do not add up: RESULTS, session 7)
CONTEXTS = ("alone", "model", "int8")

DRIFT_WARN = 0.25
BUSY_RATIO = 1.3


def busy_warning(teacher_s: float, parts_s: float) -> str | None:
    """A line saying the CPU looks shared, or None. On a quiet machine the whole teacher runs within
    ~10 % of its parts' sum; with one busy process beside a 2-thread ONNX Runtime it ran 1.9x its
    parts (docs/RESULTS.md, "Latencies on a busy machine"): every operator's parallel section then
    waits for a descheduled thread, a per-operator cost that parts timed apart do not add up to, and
    students measured 26 % slower than asked."""
    if parts_s <= 0 or teacher_s / parts_s < BUSY_RATIO:
        return None
    return (f"the whole teacher ran {teacher_s / parts_s:.1f}x the sum of its parts ({teacher_s * 1e3:.3f} vs "
            f"{parts_s * 1e3:.3f} ms): other processes seem to share these cores, and the student may miss its "
            "budget; profile on a quiet machine or with profile.threads at the free cores")


def _teacher_drift(item, teacher_s: float, backend, base: str, workdir, cfg: RunConfig) -> dict:
    """The teacher timed again after everything else: how far the machine's speed moved during the
    profile (`teacher_end_s`, `teacher_drift`). Rows are timed beside teacher parts, so a drift does
    not bias them; a large one is said on stderr, since absolute figures of this profile then
    describe a machine in another state than a later build may find."""
    import sys

    from .profile import prepare_item

    try:
        t = backend.time(prepare_item(item, base, backend, workdir), warmup_ms=50.0,
                         max_seconds=max(cfg.profile.max_seconds, 0.5), cv_target=cfg.profile.cv_target).median_s
    except Exception:           # the start figure stands; the check is a report, not a measurement
        return {}
    drift = t / teacher_s - 1.0
    if abs(drift) > DRIFT_WARN:
        print(f"hant-trt: profile: the teacher ran {teacher_s * 1e3:.3f} ms beside its parts and "
              f"{t * 1e3:.3f} ms at the end ({100 * drift:+.0f} %): the machine is busy or its speed changes; "
              "candidates were timed beside teacher parts, so their ratios hold", file=sys.stderr)
    return {"teacher_end_s": t, "teacher_drift": drift}


def _backend_at_free_cores(cfg: RunConfig):
    """The profile's backend and what to record of its threads. On a CPU with `profile.threads`
    unset, a thread count above the cores other processes leave free makes every operator's
    parallel section wait for a descheduled thread: with one busy process beside a 2-thread ONNX
    Runtime the whole teacher ran 1.9x its parts and students 26 % slower than asked
    (docs/RESULTS.md, "Latencies on a busy machine"), while at the free core count whole and parts
    time as on a quiet machine. So the profile times with the free cores, says so, and records the
    count for the build and the search's engine calibration."""
    import sys

    from .device import free_cores

    backend = profile_backend(cfg.profile)
    default = getattr(backend, "threads", None)
    if default is None or backend.device().kind != "cpu":
        return backend, {}
    if cfg.profile.threads is not None:
        return backend, {"threads": default}
    free = free_cores()
    if free is None or free >= default:
        return backend, {"threads": default, "free_cores": free}
    print(f"hant-trt: profile: other processes keep {default - free} of {default} cores busy; timing with "
          f"{free} thread{'s' * (free > 1)} (the build times the same way; set profile.threads to choose)",
          file=sys.stderr)
    return profile_backend(cfg.profile, free), {"threads": free, "free_cores": free}


def run_profile(run: RunDir, cfg: RunConfig) -> dict:
    from ..teacher.decompose import module_slot_of, span_teacher
    from ..ops import build
    from ..teacher.stage import load_from_config
    from .lut import LatencyTable, default_lut_path
    from ..errors import UserError
    from .precision import base_precision
    from .profile import ProfileItem, Reference, measure_together, profile_items

    if not {"fp32", "fp16", "bf16"} & set(cfg.profile.precisions):
        raise UserError(f"profile.precisions {cfg.profile.precisions} needs fp32, fp16 or bf16: the teacher, "
                        "stem and head run at one of them, and every int8 part is measured against it")
    if "bf16" in cfg.profile.precisions and cfg.profile.backend != "torch":
        raise UserError("profile.precisions bf16 is timed on the torch backend only (set profile.backend = "
                        "\"torch\")")
    if cfg.profile.context not in CONTEXTS:
        raise UserError(f"profile.context must be {', '.join(CONTEXTS)}, not '{cfg.profile.context}'")
    if cfg.profile.context == "model" and not set(cfg.profile.precisions) <= {"fp32", "int8"}:
        raise UserError("profile.context = \"model\" times fp32 and int8 swaps only for now: set "
                        "profile.precisions to fp32 and/or int8")
    if cfg.profile.context == "int8" and "int8" not in cfg.profile.precisions:
        raise UserError("profile.context = \"int8\" times int8 swaps in the int8 teacher: profile.precisions "
                        "needs int8")
    fp = profile_fingerprint(run, cfg)
    if run.is_done("profile", fp):
        return run.stage("profile").info or {}
    rows = _candidate_rows(run)
    run.set_stage("profile", "running", fp)
    t0 = time.time()
    teacher, d = load_from_config(cfg)
    batch = cfg.profile.batch
    backend, threads_info = _backend_at_free_cores(cfg)
    table = LatencyTable(cfg.profile.lut or default_lut_path())
    workdir = run.root / "profile"

    def maker(first, last, op):
        slot = module_slot_of(d.slots, first, last)
        teacher_block = span_teacher(d, first, last)
        return lambda: build(op, slot, teacher_block).eval()

    items, by_sig = [], {}
    for first, last, op, sig in rows:
        if sig not in by_sig:
            slot = module_slot_of(d.slots, first, last)
            by_sig[sig] = ProfileItem(signature=sig, input_shape=(batch, *slot.in_shape),
                                      make_module=maker(first, last, op), calib=None)
            items.append(by_sig[sig])
    res_shape = (batch, 3, teacher.resolution, teacher.resolution)
    base = base_precision(cfg.profile.precisions)   # the teacher and fixed parts as they deploy
    keep_sig = {first: sig for first, last, op, sig in rows if op == "keep" and first == last}
    anchors = {name: ProfileItem(f"{teacher.name}:{name}|{teacher.resolution}", shape, lambda m=module: m)
               for name, module, shape in (("teacher", teacher.model, res_shape), ("stem", d.stem, res_shape),
                                           ("head", d.head, (batch, *d.fixed["head"]["in_shape"])))}
    # host-timed backends share the machine with whatever else runs: every candidate is timed beside
    # a teacher part; device-timed ones (CUDA events) are not slowed by it and are timed alone
    paired = backend.device().kind == "cpu" and len(keep_sig) == len(d.slots)
    keeps = [by_sig[keep_sig[i]] for i in sorted(keep_sig)]
    try:
        together = measure_together(list(anchors.values()) + keeps, backend, table, workdir, base,
                                    max_seconds=max(cfg.profile.max_seconds, 0.5), cv_target=cfg.profile.cv_target,
                                    paired={k.signature for k in keeps} if paired else set())
    except RuntimeError as exc:
        raise UserError(f"profile: {exc}") from None
    references = None
    if paired:
        references = {sig: Reference(by_sig[keep_sig[first]], together[keep_sig[first]])
                      for first, last, op, sig in rows}
    results = profile_items(items, backend, table, cfg.profile.precisions, workdir,
                            max_seconds=cfg.profile.max_seconds, cv_target=cfg.profile.cv_target,
                            layout=layout_for(cfg.profile), references=references, reference_precision=base)
    res = {(r.signature, r.precision): r for r in results}
    device = backend.device().fingerprint
    out_rows, failed = [], 0
    for first, last, op, sig in rows:
        for prec in cfg.profile.precisions:
            r = res.get((sig, prec))
            if r is None or r.error:
                failed += 1
                continue
            out_rows.append({"first": first, "last": last, "op": op, "precision": prec, "signature": sig,
                             "median_s": r.median_s, "p90_s": r.p90_s, "stdev_s": r.stdev_s,
                             "count": r.count, "backend": backend.name, "device": device})
    fixed = {f"{name}_s": together[item.signature] for name, item in anchors.items()}
    keep = {r["first"]: r["median_s"] for r in out_rows
            if r["op"] == "keep" and r["precision"] == base and r["first"] == r["last"]}
    fixed["teacher_sum_s"] = fixed["stem_s"] + fixed["head_s"] + sum(keep.values())
    fixed["correction_s"] = fixed["teacher_s"] - fixed["teacher_sum_s"]
    fixed["additivity_error"] = (fixed["teacher_sum_s"] - fixed["teacher_s"]) / fixed["teacher_s"]
    busy = busy_warning(fixed["teacher_s"], fixed["teacher_sum_s"]) if backend.device().kind == "cpu" else None
    if busy:
        import sys

        print(f"hant-trt: profile: {busy}", file=sys.stderr)
    if "int8" in cfg.profile.precisions:
        anchor_refs = ({a.signature: Reference(a, together[a.signature]) for a in anchors.values()}
                       if paired else None)
        fixed.update(_int8_junctions(d, teacher, out_rows, backend, table, workdir, cfg, anchor_refs, base))
        if cfg.profile.islands:
            fixed.update(_islands(d, teacher, anchors, keep_sig, backend, table, workdir, cfg, base))
    fixed.update(_teacher_drift(anchors["teacher"], fixed["teacher_s"], backend, base, workdir, cfg))
    fixed_doc = {"device": {device: {**fixed, "precision": base, "backend": backend.name,
                                     "version": backend.version(), "context": cfg.profile.context}}}
    columns = LATENCY_COLUMNS
    ctx_info = None
    if cfg.profile.context != "alone":
        ctx_info = _in_context(out_rows, fixed, d, teacher, maker, backend, table, workdir, cfg)
        columns = LATENCY_COLUMNS + ["alone_s", "saving_s"]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    w.writeheader()
    w.writerows(out_rows)
    atomic.write_text(run.path("latency.csv"), buf.getvalue())
    atomic.write_json(run.path("latency_fixed.json"), fixed_doc)
    info = {"unique_signatures": len(items), "rows": len(out_rows), "failed": failed,
            "teacher_ms": round(fixed["teacher_s"] * 1e3, 4),
            "additivity_error_pct": round(100 * fixed["additivity_error"], 2),
            "timing": "beside teacher parts" if paired else "alone", "busy": bool(busy),
            "teacher_drift_pct": round(100 * fixed["teacher_drift"], 1) if "teacher_drift" in fixed else None,
            "backend": backend.name, "device": device, "seconds": round(time.time() - t0, 1), **threads_info}
    if ctx_info is not None:
        info["context"] = ctx_info
    if fixed.get("teacher_int8_s") and fixed.get("teacher_int8_sum_s"):
        # after the fit the model meets the whole int8 teacher (0 % unless the savings cannot); the
        # scale says how far the junctions' own timings were from it
        info["int8_teacher_ms"] = round(fixed["teacher_int8_s"] * 1e3, 4)
        info["int8_additivity_error_pct"] = round(
            100 * (fixed["teacher_int8_sum_s"] - fixed["teacher_int8_s"]) / fixed["teacher_int8_s"], 2)
        if "junction_saving_scale" in fixed:
            info["junction_saving_scale"] = round(fixed["junction_saving_scale"], 3)
    if fixed.get("island_extra_s"):
        got = [x for x in fixed["island_extra_s"] if x is not None]
        info["islands"] = {"measured": len(got), "of": len(fixed["island_extra_s"]),
                           "extra_ms": [round(x * 1e3, 3) if x is not None else None for x in fixed["island_extra_s"]]}
    run.set_stage("profile", "done", fp, info)
    return info
