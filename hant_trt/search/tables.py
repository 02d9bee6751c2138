"""Read the run's score and latency tables into ILP options (plain csv/json, no torch)."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

from ..errors import UserError
from .ilp import Option

METRICS = ("agreement", "kl", "local_mse", "top1")


def _rows(path: Path) -> list[dict]:
    if not path.is_file():
        raise UserError(f"{path} not found: run the stage that writes it first")
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def score_value(row: dict, metric: str, keep_top1: float | None) -> float:
    """Higher is better; 0 for the teacher's own block."""
    if metric == "agreement":
        return float(row["agreement"]) - 100.0
    if metric == "kl":
        return -float(row["kl"])
    if metric == "local_mse":
        return -float(row["local_mse"])
    if metric == "top1":
        if not row.get("top1") or keep_top1 is None:
            raise UserError("metric 'top1' needs labelled evaluation data")
        return float(row["top1"]) - keep_top1
    raise UserError(f"unknown metric '{metric}' (known: {', '.join(METRICS)})")


def load_options(run_root: Path, metric: str = "agreement") -> tuple[list[Option], dict]:
    """(options, fixed): one option per (first, last, op, precision) with a score and a latency.

    fp16 rows without their own score use the fp32 score of the same op (fp16 barely moves logits);
    int8 rows need their own score (simulated quantization).
    """
    run_root = Path(run_root)
    scores = _rows(run_root / "scores.csv")
    lat = _rows(run_root / "latency.csv")
    fixed_path = run_root / "latency_fixed.json"
    if not fixed_path.is_file():
        raise UserError(f"{fixed_path} not found: run `hant-trt profile` first")
    fixed = json.loads(fixed_path.read_text())["device"]
    keep_top1 = {}
    for r in scores:
        if r["op"] == "keep" and r.get("top1"):
            keep_top1[int(r["first"])] = float(r["top1"])
    kt = sum(keep_top1.values()) / len(keep_top1) if keep_top1 else None
    sc = {(int(r["first"]), int(r["last"]), r["op"], r["precision"]): r for r in scores}
    lat_by: dict[tuple, dict] = {}
    for r in lat:
        key = (int(r["first"]), int(r["last"]), r["op"], r["precision"])
        lat_by.setdefault(key, {})[r["device"]] = float(r["median_s"])
    options = []
    for key, devs in sorted(lat_by.items()):
        row = sc.get(key) or (sc.get(key[:3] + ("fp32",)) if key[3] == "fp16" else None)
        if row is None:
            continue
        options.append(Option(first=key[0], last=key[1], op=key[2], precision=key[3],
                              score=score_value(row, metric, kt), latency_s=devs,
                              params=int(row["params"]), macs=int(row["macs"]), signature=row["signature"]))
    return options, fixed


_BUDGET = re.compile(r"^\s*(?:(?P<x>[0-9.]+)\s*x|(?P<ms>[0-9.]+)\s*ms|(?P<s>[0-9.]+)\s*s|speedup\s*=\s*(?P<sp>[0-9.]+))\s*$")


def parse_budget(text: str, teacher_s: float) -> float:
    """Seconds from "0.7x" (fraction of the teacher), "2ms", "0.002s" or "speedup=1.5"."""
    m = _BUDGET.match(str(text))
    if not m:
        raise UserError(f"cannot read budget '{text}' (use 0.7x, 2ms, 0.002s or speedup=1.5)")
    try:
        if m["x"]:
            v = teacher_s * float(m["x"])
        elif m["ms"]:
            v = float(m["ms"]) / 1e3
        elif m["s"]:
            v = float(m["s"])
        else:
            v = teacher_s / float(m["sp"])
    except (ValueError, ZeroDivisionError):
        raise UserError(f"cannot read budget '{text}'") from None
    if v <= 0:
        raise UserError(f"budget '{text}' must be positive")
    return v
