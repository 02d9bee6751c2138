"""The peers benchmark's arithmetic (benchmarks/peers.py): the paired top-1 difference and its
bootstrap interval, and the headline read off the rows."""

import importlib.util
from pathlib import Path

import numpy as np

_spec = importlib.util.spec_from_file_location("peers", Path(__file__).resolve().parents[1] / "benchmarks/peers.py")
peers = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(peers)


def test_paired_delta_and_its_interval():
    rng = np.random.default_rng(1)
    teacher = rng.random(500) < 0.7
    same = peers.paired_delta(teacher.copy(), teacher)
    assert same == {"top1_delta": 0.0, "top1_delta_ci95": [0.0, 0.0]}   # same answers: no doubt at all
    better = teacher.copy()
    better[np.flatnonzero(~teacher)[:10]] = True                        # 10 more right of 500: +2 points
    d = peers.paired_delta(better, teacher)
    lo, hi = d["top1_delta_ci95"]
    assert d["top1_delta"] == 2.0 and 0 < lo < 2.0 < hi
    noisy = teacher.copy()                                              # 30 flips each way: 0 ± a point or more
    noisy[np.flatnonzero(teacher)[:30]] = False
    noisy[np.flatnonzero(~teacher)[:30]] = True
    lo, hi = peers.paired_delta(noisy, teacher)["top1_delta_ci95"]
    assert lo < -1.0 and hi > 1.0


def test_headline_reads_the_fastest_student_within_a_point_and_its_interval():
    rows = [{"model": "teacher fp32", "speedup": 1.0, "top1": 70.0},
            {"model": "int8 PTQ (hant-trt)", "speedup": 2.2, "top1": 68.0},
            {"model": "hant-trt int8x 1.20", "speedup": 2.5, "top1": 69.2, "top1_delta_ci95": [-2.4, 0.8]},
            {"model": "hant-trt int8x 1.40", "speedup": 2.9, "top1": 68.4, "top1_delta_ci95": [-3.4, 0.2]}]
    h = peers.headline(rows)
    assert h["hant_trt_best_within_1pt"] == 2.5 and h["factor_vs_plain_int8"] == round(2.5 / 2.2, 3)
    assert h["headline_delta_ci95"] == [-2.4, 0.8]
    assert h["factor"] == 2.5           # within a point without training: only the fp32 teacher itself (1.0x)


def test_headline_factor_range_pairs_the_rounds():
    rows = [{"model": "teacher fp32", "speedup": 1.0, "top1": 70.0},
            {"model": "int8 PTQ (hant-trt)", "speedup": 2.0, "top1": 68.0, "speedup_rounds": [2.0, 1.8, 2.2]},
            {"model": "int8 PTQ (ORT quantize_static)", "speedup": 1.9, "top1": 68.0, "speedup_rounds": [1.9, 1.9, 1.9]},
            {"model": "hant-trt int8x 1.30", "speedup": 2.6, "top1": 69.5, "speedup_rounds": [2.6, 2.7, 2.2]}]
    h = peers.headline(rows)
    assert h["factor_vs_plain_int8"] == 1.3
    # per round against the fastest int8 row (ours): 1.3, 1.5, 1.0 — quartiles 1.15 and 1.4
    assert h["factor_vs_plain_int8_quartiles"] == [1.15, 1.4]
    rows[1].pop("speedup_rounds")
    assert peers.headline(rows)["factor_vs_plain_int8_quartiles"] is None   # rounds of one run only


def test_time_rows_times_every_model_in_the_same_rounds(tmp_path, monkeypatch):
    """time_rows on a fake backend whose latencies are fixed: the speedups are the exact ratios and
    each round saw every model once, each right after the teacher."""
    seen = []

    class FakeBackend:
        def prepare(self, path):
            return path

        def time(self, prep, max_seconds=None):
            seen.append(Path(prep).name)
            return type("T", (), {"median_s": {"t.onnx": 4e-3, "a.onnx": 2e-3, "b.onnx": 1e-3}[Path(prep).name]})()

    import hant_trt.latency.backends as backends
    monkeypatch.setattr(backends, "get_backend", lambda name, threads=None: FakeBackend())
    rows = [{"model": "teacher fp32", "speedup": 1.0}, {"model": "A", "speedup": 9.0}, {"model": "B", "speedup": 9.0},
            {"model": "C", "speedup": 7.0}]
    peers.time_rows(rows, {"A": tmp_path / "a.onnx", "B": tmp_path / "b.onnx"}, tmp_path / "t.onnx", 3, 0.1, None)
    assert [r["speedup"] for r in rows] == [1.0, 2.0, 4.0, 7.0]
    assert rows[1]["speedup_rounds"] == [2.0, 2.0, 2.0] and "speedup_rounds" not in rows[3]
    assert seen == ["t.onnx", "a.onnx", "t.onnx", "b.onnx"] * 3


def test_students_are_read_at_their_own_side(tmp_path):
    """A student exported at 208 beside a teacher at 224: side_of reads each ONNX's input side and
    holdout_at gives the same photos (same labels, same order) at each side, read once per side."""
    import torch
    from PIL import Image

    from hant_trt.latency.export import export_onnx

    for c in range(3):
        (tmp_path / "photos" / f"n0{c}").mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (90, 70), (60 * c, 20 * i, 10)).save(tmp_path / "photos" / f"n0{c}" / f"{i}.jpg")
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, stride=2), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    assert peers.side_of(export_onnx(net, (1, 3, 48, 48), tmp_path / "a.onnx")) == 48
    assert peers.side_of(export_onnx(net, (1, 3, 40, 40), tmp_path / "b.onnx")) == 40
    cfg = {"input_size": [3, 48, 48], "interpolation": "bicubic", "mean": [0.5] * 3, "std": [0.5] * 3, "crop_pct": 0.875}
    at = peers.holdout_at(str(tmp_path / "photos"), cfg)
    big, small = at(48), at(40)
    assert at(40) is small and big[0][0].shape[-1] == 48 and small[0][0].shape[-1] == 40
    assert np.array_equal(np.concatenate([y for _, y in big]), np.concatenate([y for _, y in small]))


def test_every_student_gets_its_factor_and_the_stretch_reads_the_most_accurate_fast_one():
    rows = [{"model": "teacher fp32", "speedup": 1.0, "top1": 70.0},
            {"model": "int8 PTQ (hant-trt)", "speedup": 2.0, "top1": 68.0, "speedup_rounds": [2.0, 2.0, 2.0]},
            {"model": "int8 PTQ (ORT quantize_static)", "speedup": 1.8, "top1": 68.4},
            {"model": "hant-trt int8x 1.30", "speedup": 2.6, "top1": 69.5, "speedup_rounds": [2.6, 2.6, 2.8]},
            {"model": "hant-trt int8x 1.50", "speedup": 3.1, "top1": 67.0, "top1_delta_ci95": [-5.0, -1.0],
             "speedup_rounds": [3.0, 3.1, 3.2]},
            {"model": "hant-trt int8x 1.70", "speedup": 3.4, "top1": 64.0}]
    peers.over_int8(rows)
    assert "over_int8" not in rows[0] and "over_int8" not in rows[2]
    assert [r["over_int8"] for r in rows[3:]] == [1.3, 1.55, 1.7]
    assert rows[3]["over_int8_quartiles"] == [1.3, 1.35] and rows[5]["over_int8_quartiles"] is None
    s = peers.stretch(rows)
    assert s["model"] == "hant-trt int8x 1.50" and s["below_teacher"] == 3.0 and s["delta_ci95"] == [-5.0, -1.0]
    assert peers.stretch(rows, factor=1.8) is None
    assert peers.headline(rows)["at_stretch"] == s
    # paired rounds: the median of the per-round ratios, inside their quartiles (a ratio of the
    # medians, 2.7 / 2.0 = 1.35, would sit above their middle half, 1.27–1.31)
    rows[3]["speedup"], rows[3]["speedup_rounds"] = 2.7, [2.6, 2.6, 2.7, 2.8]
    rows[1]["speedup_rounds"] = [2.0, 2.0, 2.0, 2.4]
    peers.over_int8(rows)
    lo, hi = rows[3]["over_int8_quartiles"]
    assert rows[3]["over_int8"] == 1.3 and lo <= 1.3 <= hi


def test_report_writes_the_factors_into_peers_json(tmp_path):
    import json

    rows = [{"model": "teacher fp32", "speedup": 1.0, "top1": 70.0},
            {"model": "int8 PTQ (hant-trt)", "speedup": 2.0, "top1": 68.0},
            {"model": "hant-trt int8x 1.50", "speedup": 3.0, "top1": 68.5}]
    peers.report(rows, tmp_path, "test CPU", 500)
    doc = json.loads((tmp_path / "peers.json").read_text())
    assert doc["rows"][2]["over_int8"] == 1.5
    assert doc["headline"]["at_stretch"]["below_teacher"] == 1.5 and (tmp_path / "peers.png").stat().st_size > 0
