"""The SQLite latency table: keys, concurrent writers, filters, export/clear, bad files; profile's
use of it (measures once, a full table measures nothing, another device's rows are never used)."""

import csv
import json
import multiprocessing as mp
import sqlite3

import pytest
import torch

from hant_trt.errors import UserError
from hant_trt.latency.lut import LatencyRow, LatencyTable, default_lut_path, format_rows, make_key


def row(sig="a", device="cpu:x", precision="fp32", backend="ort", median=1e-3, **kw):
    return LatencyRow(sig, "3x8x8", 1, precision, backend, "1.0", device, median_s=median, p90_s=median,
                      stdev_s=0.0, count=10, **kw)


def test_key_is_every_column_that_identifies_a_measurement(tmp_path):
    t = LatencyTable(tmp_path / "l.sqlite")
    base = row()
    t.put(base)
    for variant in (row(device="cpu:other"), row(precision="fp16"), row(backend="torch"),
                    LatencyRow("a", "3x8x8", 2, "fp32", "ort", "1.0", "cpu:x", median_s=5.0),
                    LatencyRow("a", "3x8x8", 1, "fp32", "ort", "1.1", "cpu:x", median_s=5.0),
                    LatencyRow("a", "3x9x8", 1, "fp32", "ort", "1.0", "cpu:x", median_s=5.0)):
        t.put(variant)
    assert len(t.rows()) == 7
    assert t.get(base.key).median_s == 1e-3
    assert make_key("a", (1, 3, 8, 8), "fp32", "ort", "1.0", "cpu:x") == base.key
    t.put(row(median=2e-3))                 # same key → replaced, not duplicated
    assert len(t.rows()) == 7 and t.get(base.key).median_s == 2e-3
    assert t.get(make_key("a", (1, 3, 8, 8), "fp32", "ort", "1.0", "cpu:nope")) is None


def _writer(path, who, n):
    t = LatencyTable(path)
    for i in range(n):
        t.put(row(f"w{who}-{i}", median=i * 1e-6))
        if i % 25 == 0:
            t.rows()  # readers interleaved with the other writer


def test_two_concurrent_writer_processes_lose_nothing(tmp_path):
    path = tmp_path / "lut.sqlite"
    LatencyTable(path).close()
    ctx = mp.get_context("spawn")
    ps = [ctx.Process(target=_writer, args=(path, w, 200)) for w in range(2)]
    for p in ps:
        p.start()
    for p in ps:
        p.join(120)
        assert p.exitcode == 0
    rows = LatencyTable(path).rows()
    assert len(rows) == 400 and {r.signature for r in rows} == {f"w{w}-{i}" for w in range(2) for i in range(200)}
    assert sqlite3.connect(str(path)).execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_filters_export_and_clear(tmp_path):
    t = LatencyTable(tmp_path / "l.sqlite")
    t.put(row("a"))
    t.put(row("b", precision="fp16"))
    t.put(row("c", device="cpu:other", median=None, error="RuntimeError: boom"))
    assert [r.signature for r in t.rows(device="cpu:x")] == ["a", "b"]
    assert [r.signature for r in t.rows(precision="fp16")] == ["b"]
    with pytest.raises(ValueError):
        t.rows(colour="red")
    csv_rows = list(csv.DictReader(t.export_csv(tmp_path / "o.csv").open()))
    assert [r["signature"] for r in csv_rows] == ["a", "b", "c"] and csv_rows[2]["error"] == "RuntimeError: boom"
    assert csv_rows[2]["median_s"] == "" and float(csv_rows[0]["median_s"]) == 1e-3
    js = json.loads(t.export_json(tmp_path / "o.json", device="cpu:x").read_text())
    assert [r["signature"] for r in js] == ["a", "b"] and js[0]["count"] == 10
    listing = format_rows(t.rows())
    assert "1.0000" in listing and "error" in listing and "boom" in listing
    assert t.clear(device="cpu:other") == 1 and len(t.rows()) == 2
    assert t.clear() == 2 and t.rows() == []


def test_bad_files_are_user_errors(tmp_path):
    bad = tmp_path / "bad.sqlite"
    bad.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(UserError, match="corrupt or not a SQLite file") as e:
        LatencyTable(bad)
    assert "\n" not in str(e.value)
    other = tmp_path / "other.sqlite"
    db = sqlite3.connect(str(other))
    db.execute("CREATE TABLE latency (x INTEGER)")
    db.commit()
    db.close()
    with pytest.raises(UserError, match="another layout"):
        LatencyTable(other)
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="latency table"):
        LatencyTable(tmp_path / "file" / "l.sqlite")   # parent is a file


def test_default_path_and_env_override(monkeypatch, tmp_path):
    monkeypatch.delenv("HANT_TRT_LUT", raising=False)
    assert default_lut_path().parts[-3:] == (".cache", "hant-trt", "latency.sqlite")
    monkeypatch.setenv("HANT_TRT_LUT", str(tmp_path / "x.sqlite"))
    assert default_lut_path() == tmp_path / "x.sqlite"


# -- profile over the table ----------------------------------------------------------------------------------
def net():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU()).eval()


def test_profile_dedupes_records_failures_and_a_full_table_measures_nothing(tmp_path, monkeypatch):
    from hant_trt.latency import profile as prof
    from hant_trt.latency.backends import get_backend
    from hant_trt.latency.profile import ProfileItem, profile_items

    table = LatencyTable(tmp_path / "l.sqlite")
    be = get_backend("ort", threads=1)

    def boom():
        raise RuntimeError("cannot build this op")

    items = [ProfileItem("conv|3x8x8", (1, 3, 8, 8), net), ProfileItem("conv|3x8x8", (1, 3, 8, 8), net),
             ProfileItem("bad|3x8x8", (1, 3, 8, 8), boom)]
    res = profile_items(items, be, table, ["fp32", "fp9"], tmp_path / "w", progress=False, max_seconds=0.1,
                        warmup_ms=5)
    got = {(r.signature, r.precision): r for r in res}
    assert len(res) == 4                                        # deduped by (signature, precision)
    assert got[("conv|3x8x8", "fp32")].median_s > 0 and got[("conv|3x8x8", "fp32")].error is None
    assert "cannot build this op" in got[("bad|3x8x8", "fp32")].error
    assert "fp9" in got[("conv|3x8x8", "fp9")].error            # a precision it cannot make: recorded
    assert len(table.rows()) == 4 and len(table.rows(device=be.device().fingerprint)) == 4

    measured = []
    monkeypatch.setattr(prof, "_time_item", lambda *a, **k: measured.append(a) or pytest.fail("measured"))
    again = profile_items(items, be, table, ["fp32", "fp9"], tmp_path / "w", progress=False)
    assert not measured and all(r.cached for r in again) and len(again) == 4
    assert {(r.signature, r.precision, r.median_s) for r in again} == {(r.signature, r.precision, r.median_s)
                                                                         for r in res}


def test_rows_of_another_device_are_never_used(tmp_path):
    from hant_trt.latency.backends import get_backend
    from hant_trt.latency.profile import ProfileItem, profile_items

    table = LatencyTable(tmp_path / "l.sqlite")
    be = get_backend("ort", threads=1)
    item = ProfileItem("conv|3x8x8", (1, 3, 8, 8), net)
    # a row copied from another machine (same everything but the device fingerprint)
    table.put(LatencyRow("conv|3x8x8", "3x8x8", 1, "fp32", "ort", be.version(), "cpu:elsewhere:0123456789",
                         median_s=42.0, count=10))
    r = profile_items([item], be, table, ["fp32"], tmp_path / "w", progress=False, max_seconds=0.1, warmup_ms=5)[0]
    assert not r.cached and r.median_s < 1.0
    assert len(table.rows()) == 2
