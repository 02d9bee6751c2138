"""The swap-one score table, scores.csv: its row, writer and reader (no torch).

The score stage writes it; the profile reads which candidates to time from it.
"""

from __future__ import annotations

import csv
import io
from dataclasses import asdict, dataclass
from pathlib import Path

from . import atomic
from .runfiles import SCORE_COLUMNS


@dataclass
class ScoreRow:
    """A row of scores.csv: the fields are SCORE_COLUMNS, in order."""

    first: int
    last: int
    op: str
    precision: str
    signature: str
    agreement: float        # % of eval images whose top-1 equals the teacher's
    kl: float               # mean KL(teacher || student) in nats
    top1: float | None      # % correct, when labels exist
    local_mse: float        # normalised MSE at the slot's output
    params: int
    macs: int


def rows_to_csv(rows: list[ScoreRow]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=SCORE_COLUMNS, lineterminator="\n")
    w.writeheader()
    for r in rows:
        d = asdict(r)
        for k in ("agreement", "kl", "local_mse", "top1"):
            if d[k] is not None:
                d[k] = f"{d[k]:.6g}"
        w.writerow({k: ("" if v is None else v) for k, v in d.items()})
    return buf.getvalue()


def write_scores(path: Path, rows: list[ScoreRow]) -> Path:
    return atomic.write_text(path, rows_to_csv(rows))


def read_scores(path: Path) -> list[ScoreRow]:
    rows = []
    with open(path, newline="") as fh:
        for r in csv.DictReader(fh):
            rows.append(ScoreRow(first=int(r["first"]), last=int(r["last"]), op=r["op"],
                                 precision=r["precision"], signature=r["signature"],
                                 agreement=float(r["agreement"]), kl=float(r["kl"]),
                                 top1=float(r["top1"]) if r["top1"] else None,
                                 local_mse=float(r["local_mse"]), params=int(r["params"]),
                                 macs=int(r["macs"])))
    return rows
