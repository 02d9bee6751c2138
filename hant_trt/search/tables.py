"""Read the run's score and latency tables into ILP options (plain csv/json; no torch, no onnx).

Contract (see docs/ARCHITECTURE.md):
- scores.csv: first,last,op,precision,signature,agreement,kl,top1,local_mse,params,macs
- latency.csv: first,last,op,precision,signature,median_s,p90_s,stdev_s,count,backend,device
- latency_fixed.json: {"device": {fingerprint: {stem_s, head_s, teacher_s, teacher_sum_s, correction_s}}}
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path

from ..errors import UserError
from ..runfiles import FIXED_SCORES, LATENCY, LATENCY_FIXED, LATENCY_NEEDED, SCORE_COLUMNS, SCORES
from .budget import parse_budget, parse_count
from .ilp import Option, Problem, predict
from .islands import mixed_costs

# metric name → (column, how a row's value becomes a score where higher is better)
METRICS = ("agreement", "kl", "local_mse", "top1")
_ALIASES = {"agreement_drop": "agreement", "accuracy": "top1", "accuracy_drop": "top1", "mse": "local_mse"}
FIXED_KEYS = ("stem_s", "head_s", "teacher_s", "correction_s")


@dataclass(frozen=True)
class FixedParts:
    """What every student pays on one device, from latency_fixed.json (seconds)."""

    stem_s: float
    head_s: float
    teacher_s: float                 # the whole teacher, measured in one piece
    correction_s: float              # teacher_s − (stem + head + Σ keep): the additivity correction
    teacher_sum_s: float | None = None
    stem_int8_s: float | None = None                 # int8 profiles: the stem / head alone at int8
    head_int8_s: float | None = None
    junction_saving_s: tuple = ()                    # j = 0..n_slots: saved between int8 neighbours
    teacher_int8_s: float | None = None              # the whole teacher at int8, and what the parts
    teacher_int8_sum_s: float | None = None          #   predict for it (stem + head + Σ keep − savings)
    precision: str = "fp32"                          # what the stem, head and teacher were timed at
    island_extra_s: tuple = ()                       # stem, slots, head: what each adds at base precision
                                                     #   inside the int8 teacher, measured (None: not)

    @property
    def fixed_s(self) -> float:
        """Added to Σ chosen latencies to predict a whole student."""
        return self.stem_s + self.head_s + self.correction_s


@dataclass
class Tables:
    """options: one per (first, last, op, precision) with a score and at least one latency.
    fixed: device → FixedParts. teacher_params / teacher_macs: Σ over slots of the keep rows.
    dropped: how many rows were left out for want of a score or a latency (reported, not fatal)."""

    options: list[Option]
    fixed: dict[str, FixedParts]
    teacher_params: float = 0.0
    teacher_macs: float = 0.0
    dropped: int = 0
    fixed_scores: dict = field(default_factory=dict)   # "stem"/"head" → precision → score (scores_fixed.json)


def canonical_metric(metric: str) -> str:
    m = _ALIASES.get(str(metric).lower(), str(metric).lower())
    if m not in METRICS:
        raise UserError(f"unknown metric '{metric}' (known: {', '.join(METRICS)}, or accuracy_drop)")
    return m


def _read_csv(path: Path, needed: tuple[str, ...]) -> list[dict]:
    if not path.is_file():
        raise UserError(f"{path} not found: run the stage that writes it first")
    try:
        with open(path, newline="") as fh:
            reader = csv.DictReader(fh)
            missing = [c for c in needed if c not in (reader.fieldnames or [])]
            if missing:
                raise UserError(f"{path} lacks column(s) {', '.join(missing)}: it is corrupt or from another version; "
                                "re-run the stage that writes it")
            return list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise UserError(f"{path} is unreadable ({exc}): re-run the stage that writes it") from None


def _num(row: dict, col: str, path: Path, line: int, kind=float):
    try:
        v = kind(float(row[col])) if kind is int else float(row[col])
    except (TypeError, ValueError):
        raise UserError(f"{path}:{line}: column '{col}' is '{row.get(col)}', not a number: "
                        "the table is corrupt") from None
    if not math.isfinite(v):
        raise UserError(f"{path}:{line}: column '{col}' is not finite: the table is corrupt")
    return v


def score_value(row: dict, metric: str, teacher_top1: float | None, where: str = "scores.csv") -> float:
    """A row's score under `metric`, higher is better and 0 for the teacher's own block:
    agreement − 100 (minus the agreement drop), −KL, −local MSE, or top1 − teacher top1."""
    metric = canonical_metric(metric)
    try:
        if metric == "agreement":
            return float(row["agreement"]) - 100.0
        if metric == "kl":
            return -float(row["kl"])
        if metric == "local_mse":
            return -float(row["local_mse"])
        if not row.get("top1") or teacher_top1 is None:
            raise UserError("metric 'top1' needs labelled evaluation data (scores.csv has no top1): "
                            "use metric 'agreement' or score with labels")
        return float(row["top1"]) - teacher_top1
    except ValueError:
        raise UserError(f"{where}: a '{metric}' value is not a number: the table is corrupt") from None


def read_fixed(path: Path) -> dict[str, FixedParts]:
    """device → FixedParts from latency_fixed.json."""
    if not path.is_file():
        raise UserError(f"{path} not found: run `hant-trt profile` first")
    try:
        devices = json.loads(path.read_text())["device"]
        out = {}
        for dev, v in devices.items():
            vals = {k: float(v[k]) for k in FIXED_KEYS}
            if not all(math.isfinite(x) for x in vals.values()):
                raise ValueError(f"non-finite value for {dev}")
            ts = v.get("teacher_sum_s")
            opt = {k: float(v[k]) for k in ("stem_int8_s", "head_int8_s", "teacher_int8_s", "teacher_int8_sum_s")
                   if v.get(k) is not None}
            sav = tuple(float(x) if x is not None else 0.0 for x in v.get("junction_saving_s") or ())
            if not all(math.isfinite(x) for x in (*opt.values(), *sav)):
                raise ValueError(f"non-finite int8 value for {dev}")
            isl = tuple(float(x) if x is not None else None for x in v.get("island_extra_s") or ())
            if not all(math.isfinite(x) for x in isl if x is not None):
                raise ValueError(f"non-finite island value for {dev}")
            out[dev] = FixedParts(**vals, teacher_sum_s=float(ts) if ts is not None else None, **opt,
                                  junction_saving_s=sav, precision=str(v.get("precision", "fp32")),
                                  island_extra_s=isl)
    except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
        raise UserError(f"{path} is corrupt ({exc!r}): re-run `hant-trt profile`") from None
    if not out:
        raise UserError(f"{path} lists no device: re-run `hant-trt profile`")
    return out


def load_tables(run_root: str | Path, metric: str = "agreement", skip_weight: float = 1.0) -> Tables:
    """Join scores.csv and latency.csv of a run directory into options.

    run_root: the run directory. metric: agreement (default), kl, local_mse or top1.
    skip_weight: a `skip` option's score (≤ 0: a loss) is multiplied by this; > 1 tells the search
    that the build's fine-tune can recover a trainable part's loss but has nothing to train in a
    skip (a dropped block).
    An fp16 latency row without an fp16 score takes the fp32 score of the same (first, last, op):
    half precision barely moves the logits, and the score stage scores float candidates once (as
    fp32). int8 rows need their own score (the score stage simulates int8) and are dropped without.
    Rows with a score but no latency, or a latency but no score, are dropped (counted in `dropped`).
    """
    root = Path(run_root)
    metric = canonical_metric(metric)
    if not (isinstance(skip_weight, (int, float)) and math.isfinite(skip_weight) and skip_weight > 0):
        raise UserError(f"search.skip_weight must be a positive number, not {skip_weight!r}")
    sp, lp = root / SCORES, root / LATENCY
    scores = _read_csv(sp, SCORE_COLUMNS)
    lat = _read_csv(lp, LATENCY_NEEDED)
    fixed = read_fixed(root / LATENCY_FIXED)

    keep_top1 = [float(r["top1"]) for r in scores if r["op"] == "keep" and r.get("top1")]
    teacher_top1 = sum(keep_top1) / len(keep_top1) if keep_top1 else None
    sc: dict[tuple, dict] = {}
    teacher_params = teacher_macs = 0.0
    for i, r in enumerate(scores, start=2):
        key = (_num(r, "first", sp, i, int), _num(r, "last", sp, i, int), r["op"], r["precision"])
        r["_line"] = i
        sc[key] = r
        if r["op"] == "keep" and key[0] == key[1] and key[3] == "fp32":
            teacher_params += _num(r, "params", sp, i)
            teacher_macs += _num(r, "macs", sp, i)
    lat_by: dict[tuple, dict[str, float]] = {}
    for i, r in enumerate(lat, start=2):
        key = (_num(r, "first", lp, i, int), _num(r, "last", lp, i, int), r["op"], r["precision"])
        lat_by.setdefault(key, {})[r["device"]] = _num(r, "median_s", lp, i)

    options, used, dropped = [], set(), 0
    for key, devs in sorted(lat_by.items()):
        row = sc.get(key)
        if row is None and key[3] in ("fp16", "bf16"):
            row = sc.get(key[:3] + ("fp32",))
        if row is None:
            dropped += 1
            continue
        used.add((int(row["first"]), int(row["last"]), row["op"], row["precision"]))
        line = row["_line"]
        score = score_value(row, metric, teacher_top1, f"{sp}:{line}")
        if key[2] == "skip":
            score *= skip_weight
        options.append(Option(first=key[0], last=key[1], op=key[2], precision=key[3],
                              score=score, latency_s=devs,
                              params=int(_num(row, "params", sp, line)), macs=int(_num(row, "macs", sp, line)),
                              signature=row["signature"]))
    dropped += sum(1 for k in sc if k not in used)
    return Tables(options, fixed, teacher_params, teacher_macs, dropped,
                  read_fixed_scores(root / FIXED_SCORES, metric, teacher_top1))



def read_fixed_scores(path: Path, metric: str, teacher_top1: float | None) -> dict:
    """"stem"/"head" → precision → score from scores_fixed.json ({} when the run has none)."""
    if not path.is_file():
        return {}
    try:
        doc = json.loads(path.read_text())
        return {part: {prec: score_value(m, metric, teacher_top1, str(path)) for prec, m in by_prec.items()}
                for part, by_prec in doc.items() if part in ("stem", "head")}
    except (OSError, json.JSONDecodeError, AttributeError, TypeError, KeyError) as exc:
        raise UserError(f"{path} is corrupt ({exc!r}): re-run `hant-trt score`") from None


def read_n_slots(path: Path) -> int:
    """Number of slots in teacher.json."""
    if not path.is_file():
        raise UserError(f"{path} not found: run `hant-trt teacher` first")
    try:
        return len(json.loads(path.read_text())["slots"])
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise UserError(f"{path} is corrupt ({exc!r}): re-run `hant-trt teacher`") from None


def select_devices(fixed: dict[str, FixedParts], wanted: list[str] | None) -> list[str]:
    """The target devices: every device in latency_fixed.json (sorted) when `wanted` is None, else
    each entry of `wanted` matched to exactly one fingerprint (exactly, or as a unique substring).
    The first returned device is the primary one (top-level figures of solution.json, the sweep)."""
    if not wanted:
        return sorted(fixed)
    out = []
    for w in wanted:
        hits = [w] if w in fixed else sorted(d for d in fixed if w in d)
        if len(hits) != 1:
            known = ", ".join(sorted(fixed))
            raise UserError(f"search device '{w}' matches {'no' if not hits else len(hits)} profiled device(s) "
                            f"(profiled: {known})")
        if hits[0] not in out:
            out.append(hits[0])
    return out


LATENCY_MODELS = ("scale", "offset")


def _scale(f: FixedParts) -> float:
    if not f.teacher_sum_s or f.teacher_sum_s <= 0:
        raise UserError("latency_fixed.json has no teacher_sum_s for the 'scale' latency model: "
                        "re-run `hant-trt profile` or use search.latency_model = 'offset'")
    return f.teacher_s / f.teacher_sum_s


def build_problem(tables: Tables, n_slots: int, budget: str, devices: list[str],
                  max_params: str | float | None = None, max_macs: str | float | None = None,
                  latency_model: str = "scale") -> Problem:
    """The ILP for `devices`: the same budget text applies on each device (so "0.7x" means 0.7 × that
    device's own teacher latency).

    latency_model: how the parts' standalone latencies become a whole model's. "scale" (default):
    whole = (stem + head + Σ parts) × teacher_s / teacher_sum_s, i.e. the gap between the whole
    teacher and its parts is taken as proportional; "offset": whole = stem + head + Σ parts +
    (teacher_s − teacher_sum_s), a constant. On ORT CPU the whole teacher ran 32 % slower than its
    parts, and students measured far closer to the scaled prediction (docs/RESULTS.md).
    max_params / max_macs: limits on Σ over the slots ("0.5x" of the teacher's, "3.5M", a number)."""
    if latency_model not in LATENCY_MODELS:
        raise UserError(f"search.latency_model must be one of {', '.join(LATENCY_MODELS)}, not '{latency_model}'")
    k = ({d: _scale(tables.fixed[d]) for d in devices} if latency_model == "scale" else {d: 1.0 for d in devices})
    # int8 parts get their own scale: the whole int8 teacher over what its int8 parts predict
    k8 = {d: _scale8(tables.fixed[d], k[d]) if latency_model == "scale" else 1.0 for d in devices}
    options = [replace(o, latency_s={d: v * (k8 if o.precision == "int8" else k)[d] if d in k else v
                                     for d, v in o.latency_s.items()}) for o in tables.options]
    if latency_model == "scale":
        fixed = {d: (tables.fixed[d].stem_s + tables.fixed[d].head_s) * k[d] for d in devices}
    else:
        fixed = {d: tables.fixed[d].fixed_s for d in devices}
    fixed_options, junctions, mixed = int8_model(tables, options, n_slots, devices, k, k8)
    base = tables.fixed[devices[0]].precision     # `base_precision` of the profile: fp16 on GPU targets
    for o in fixed_options:
        if o.precision == base:            # the part is a choice now: not paid in `fixed_s`
            for d in devices:
                fixed[d] -= o.latency_s[d]
    return Problem(
        n_slots=n_slots, options=options,
        budget_s={d: parse_budget(budget, tables.fixed[d].teacher_s, tables.fixed[d].teacher_int8_s) for d in devices},
        fixed_s=fixed,
        max_params=parse_count(max_params, tables.teacher_params, "params"),
        max_macs=parse_count(max_macs, tables.teacher_macs, "MACs"),
        fixed_options=fixed_options, junction_saving_s=junctions, junction_mixed_s=mixed)


def _scale8(f: FixedParts, fallback: float) -> float:
    if f.teacher_int8_s and f.teacher_int8_sum_s and f.teacher_int8_sum_s > 0:
        return f.teacher_int8_s / f.teacher_int8_sum_s
    return fallback


def int8_model(tables: Tables, options: list[Option], n_slots: int, devices: list[str], k: dict,
               k8: dict) -> tuple[list[Option], list[dict], list[dict]]:
    """(stem/head precision options, junction savings, mixed-junction costs) of an int8 profile,
    latencies × k[device] (int8 ones × k8[device]; `options`: the candidates so scaled, for the
    mixed costs' fit); ([], [], []) unless every device has them and
    the stem's and head's int8 scores exist (otherwise the stem and head stay fixed at their base
    precision, with no saving). Mixed costs only where the profile timed float islands
    (`profile.islands`) on every device."""
    fx = [tables.fixed[d] for d in devices]
    if (not all(f.stem_int8_s is not None and f.head_int8_s is not None and len(f.junction_saving_s) == n_slots + 1
                for f in fx) or not all("int8" in tables.fixed_scores.get(p, {}) for p in ("stem", "head"))):
        return [], [], []
    base = tables.fixed[devices[0]].precision
    opts = []
    for part, pos in (("stem", -1), ("head", n_slots)):
        alone = {d: getattr(tables.fixed[d], f"{part}_s") * k[d] for d in devices}
        int8 = {d: getattr(tables.fixed[d], f"{part}_int8_s") * k8[d] for d in devices}
        opts.append(Option(pos, pos, part, base, 0.0, alone, signature=part))
        opts.append(Option(pos, pos, part, "int8", tables.fixed_scores[part]["int8"], int8, signature=part))
    junctions = [{d: tables.fixed[d].junction_saving_s[j] * k8[d] for d in devices} for j in range(n_slots + 1)]
    mixed = []
    if all(len(f.island_extra_s) == n_slots + 2 for f in fx):
        costs = {d: mixed_costs(list(tables.fixed[d].island_extra_s),
                                _island_model(options, opts, junctions, n_slots, d, base), n_slots)
                 for d in devices}
        mixed = [{d: costs[d][j] for d in devices} for j in range(n_slots + 1)]
    return opts, junctions, mixed


def _island_model(options: list[Option], fixed_opts: list[Option], junctions: list[dict], n_slots: int,
                  dev: str, base: str) -> list[float | None]:
    """What the int8 model (`ilp.predict`, before mixed costs) says each one-part island adds to
    the int8 teacher on `dev`: stem, slots, head; None where a keep row it needs is missing."""
    part = {(o.first, o.precision): o for o in fixed_opts}
    part.update({(o.first, o.precision): o for o in options
                 if o.op == "keep" and o.first == o.last and dev in o.latency_s})
    model = Problem(n_slots, [], {}, {}, junction_saving_s=junctions)

    def teacher(at_base: int | None) -> float | None:
        sel = [part.get((i, base if i == at_base else "int8")) for i in range(-1, n_slots + 1)]
        return None if None in sel else predict(model, sel[1:-1], [sel[0], sel[-1]], dev)

    int8 = teacher(None)
    islands = [teacher(i) if int8 is not None else None for i in range(-1, n_slots + 1)]
    return [None if t is None else t - int8 for t in islands]


__all__ = ["METRICS", "FixedParts", "Tables", "load_tables", "read_fixed", "read_n_slots", "select_devices",
           "build_problem", "score_value", "canonical_metric", "parse_budget"]
