"""The latency table: persistent SQLite (WAL), shared by runs on the same machine.

Key: signature, input shape, batch, precision, backend, backend version, device fingerprint.
Rows from another device never match a lookup, so a table copied between machines is safe. Two
processes may write at once (WAL + busy timeout; each put is one transaction).
"""

from __future__ import annotations

import csv
import json
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


@dataclass
class LatencyRow:
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


def default_lut_path() -> Path:
    env = os.environ.get("HANT_TRT_LUT")
    return Path(env) if env else Path.home() / ".cache" / "hant-trt" / "latency.sqlite"


class LatencyTable:
    def __init__(self, path: str | Path):
        self.path = Path(path).expanduser()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.db = sqlite3.connect(str(self.path), timeout=60, isolation_level=None)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA busy_timeout=60000")
            self.db.execute(SCHEMA)
            self.db.execute("SELECT count(*) FROM latency").fetchone()
        except sqlite3.DatabaseError as exc:
            raise UserError(f"latency table {self.path} is corrupt or not a SQLite file ({exc}); "
                            "move it away or pass another --lut") from None

    def get(self, key: tuple) -> LatencyRow | None:
        cur = self.db.execute(
            f"SELECT {', '.join(COLUMNS)} FROM latency WHERE signature=? AND input_shape=? AND batch=? AND "
            "precision=? AND backend=? AND backend_version=? AND device=?", key)
        r = cur.fetchone()
        return LatencyRow(*r) if r else None

    def put(self, row: LatencyRow) -> None:
        row.created = row.created or time.time()
        vals = asdict(row)
        for attempt in range(20):
            try:
                self.db.execute(f"INSERT OR REPLACE INTO latency ({', '.join(COLUMNS)}) VALUES "
                                f"({', '.join('?' * len(COLUMNS))})", [vals[c] for c in COLUMNS])
                return
            except sqlite3.OperationalError as exc:  # "database is locked" past the busy timeout
                if "locked" not in str(exc) or attempt == 19:
                    raise
                time.sleep(0.05 * (attempt + 1))

    def rows(self, backend: str | None = None, device: str | None = None) -> list[LatencyRow]:
        q, args = f"SELECT {', '.join(COLUMNS)} FROM latency WHERE 1=1", []
        if backend:
            q += " AND backend=?"
            args.append(backend)
        if device:
            q += " AND device=?"
            args.append(device)
        return [LatencyRow(*r) for r in self.db.execute(q + " ORDER BY signature, precision", args)]

    def clear(self, backend: str | None = None, device: str | None = None) -> int:
        n = len(self.rows(backend, device))
        q, args = "DELETE FROM latency WHERE 1=1", []
        if backend:
            q += " AND backend=?"
            args.append(backend)
        if device:
            q += " AND device=?"
            args.append(device)
        self.db.execute(q, args)
        return n

    def export_csv(self, out: str | Path) -> Path:
        import io

        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(COLUMNS)
        for r in self.rows():
            w.writerow([getattr(r, c) for c in COLUMNS])
        return atomic.write_text(Path(out), buf.getvalue())

    def export_json(self, out: str | Path) -> Path:
        return atomic.write_json(Path(out), [asdict(r) for r in self.rows()])
