"""The latency table: persistent SQLite (WAL), shared by runs on the same machine.

Key: signature, input shape, batch, precision, backend, backend version, device fingerprint.
Rows from another device never match a lookup, so a table copied between machines is safe. Two
processes may write at once: WAL lets readers and one writer proceed together, the busy timeout
makes a second writer wait, and each `put` is one transaction, so nothing is lost.
"""

from __future__ import annotations

import csv
import io
import os
import sqlite3
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from .. import atomic
from ..errors import UserError

SCHEMA = """
CREATE TABLE IF NOT EXISTS latency (
    signature TEXT NOT NULL, input_shape TEXT NOT NULL, batch INTEGER NOT NULL, precision TEXT NOT NULL,
    backend TEXT NOT NULL, backend_version TEXT NOT NULL, device TEXT NOT NULL,
    median_s REAL, p90_s REAL, stdev_s REAL, count INTEGER, error TEXT, created REAL,
    PRIMARY KEY (signature, input_shape, batch, precision, backend, backend_version, device)
)"""
BUSY_TIMEOUT_S = 60.0


@dataclass
class LatencyRow:
    """One measurement (or one recorded failure: `error` set, figures None).

    input_shape: "CxHxW" without the batch; batch separately. device: DeviceInfo.fingerprint.
    median_s / p90_s / stdev_s: seconds; count: timed iterations; created: UNIX time (set by put).
    """

    signature: str
    input_shape: str
    batch: int
    precision: str
    backend: str
    backend_version: str
    device: str
    median_s: float | None = None
    p90_s: float | None = None
    stdev_s: float | None = None
    count: int = 0
    error: str | None = None
    created: float = 0.0

    @property
    def key(self) -> tuple:
        return (self.signature, self.input_shape, self.batch, self.precision, self.backend,
                self.backend_version, self.device)


COLUMNS = [f.name for f in fields(LatencyRow)]
KEY_COLUMNS = COLUMNS[:7]
FILTERS = ("signature", "precision", "backend", "backend_version", "device")


def make_key(signature: str, input_shape: tuple[int, ...], precision: str, backend: str, backend_version: str,
             device: str) -> tuple:
    """Table key from an (N, C, H, W) input shape (N becomes the batch column)."""
    return (signature, "x".join(map(str, input_shape[1:])), int(input_shape[0]), precision, backend,
            backend_version, device)


def default_lut_path() -> Path:
    """~/.cache/hant-trt/latency.sqlite, or $HANT_TRT_LUT when set."""
    env = os.environ.get("HANT_TRT_LUT")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "hant-trt" / "latency.sqlite"


class LatencyTable:
    """The table at `path` (created when missing). Not-a-database files, unreadable paths and
    tables with another layout are UserErrors naming the file."""

    def __init__(self, path: str | Path):
        self.path = Path(path).expanduser()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.db = sqlite3.connect(str(self.path), timeout=BUSY_TIMEOUT_S, isolation_level=None)
            self.db.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT_S * 1000)}")
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute(SCHEMA)
            cols = [r[1] for r in self.db.execute("PRAGMA table_info(latency)")]
            self.db.execute("SELECT count(*) FROM latency").fetchone()
        except sqlite3.DatabaseError as exc:  # OperationalError (unopenable) is a DatabaseError too
            raise UserError(f"latency table {self.path} is corrupt or not a SQLite file ({exc}); "
                            "move it away or pass another --lut") from None
        except OSError as exc:
            raise UserError(f"cannot create the latency table at {self.path} ({exc.strerror}); pass another --lut") \
                from None
        if cols != COLUMNS:
            raise UserError(f"latency table {self.path} has another layout (columns {', '.join(cols)}); "
                            "move it away or pass another --lut")

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> "LatencyTable":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def get(self, key: tuple) -> LatencyRow | None:
        """The row with exactly this key (see LatencyRow.key / make_key), or None."""
        where = " AND ".join(f"{c}=?" for c in KEY_COLUMNS)
        r = self.db.execute(f"SELECT {', '.join(COLUMNS)} FROM latency WHERE {where}", tuple(key)).fetchone()
        return LatencyRow(*r) if r else None

    def put(self, row: LatencyRow) -> None:
        """Insert or replace one row (one transaction); `created` defaults to now."""
        row.created = row.created or time.time()
        vals = asdict(row)
        sql = f"INSERT OR REPLACE INTO latency ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"
        for attempt in range(20):
            try:
                self.db.execute(sql, [vals[c] for c in COLUMNS])
                return
            except sqlite3.OperationalError as exc:  # "database is locked" past the busy timeout
                if "locked" not in str(exc) or attempt == 19:
                    raise
                time.sleep(0.05 * (attempt + 1))

    def _where(self, filters: dict) -> tuple[str, list]:
        bad = set(filters) - set(FILTERS)
        if bad:
            raise ValueError(f"unknown latency-table filter(s) {sorted(bad)}; known: {FILTERS}")
        used = {k: v for k, v in filters.items() if v is not None}
        clause = " AND ".join(f"{k}=?" for k in used) or "1=1"
        return clause, list(used.values())

    def rows(self, **filters) -> list[LatencyRow]:
        """Rows matching every given filter (signature, precision, backend, backend_version, device;
        None = any), ordered by signature then precision."""
        clause, args = self._where(filters)
        q = f"SELECT {', '.join(COLUMNS)} FROM latency WHERE {clause} ORDER BY signature, precision, backend, device"
        return [LatencyRow(*r) for r in self.db.execute(q, args)]

    def clear(self, **filters) -> int:
        """Delete the rows matching the filters (all rows without any); returns how many."""
        clause, args = self._where(filters)
        return self.db.execute(f"DELETE FROM latency WHERE {clause}", args).rowcount

    def export_csv(self, out: str | Path, **filters) -> Path:
        """Write the (filtered) rows as CSV with a header, atomically."""
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(COLUMNS)
        for r in self.rows(**filters):
            w.writerow(["" if getattr(r, c) is None else getattr(r, c) for c in COLUMNS])
        return atomic.write_text(Path(out), buf.getvalue())

    def export_json(self, out: str | Path, **filters) -> Path:
        """Write the (filtered) rows as a JSON list of objects, atomically."""
        return atomic.write_json(Path(out), [asdict(r) for r in self.rows(**filters)])


def format_rows(rows: list[LatencyRow]) -> str:
    """A plain-text table for `hant-trt lut list` (milliseconds, errors shortened)."""
    head = f"{'signature':<48} {'shape':<12} {'b':>2} {'prec':<5} {'backend':<9} {'median ms':>10} {'p90 ms':>9} " \
           f"{'n':>5}  device"
    out = [head]
    for r in rows:
        p90 = f"{r.p90_s * 1e3:>9.4f}" if r.p90_s is not None else f"{'-':>9}"
        fig = f"{r.median_s * 1e3:>10.4f} {p90}" if r.median_s is not None else f"{'error':>10} {'':>9}"
        line = f"{r.signature[:48]:<48} {r.input_shape:<12} {r.batch:>2} {r.precision:<5} {r.backend:<9} {fig} " \
               f"{r.count:>5}  {r.device}"
        if r.error:
            line += f"  ({r.error[:60]})"
        out.append(line)
    return "\n".join(out)
