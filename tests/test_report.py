"""report.html + PNGs from synthetic data, with and without the optional parts."""

import json
import re

import pytest

from hant_trt.deploy.report import (CHOICES_PNG, LATENCY_PNG, PARETO_PNG, PartLatency, ReportData, SlotChoice,
                                   report_data_from_run, write_report)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _imgs(html):
    return re.findall(r'<img src="([^"]+)"', html)


def test_full_report(tmp_path):
    d = ReportData(
        teacher_name="lite0 <script>alert(1)</script>", teacher_latency_s=0.008, student_latency_s=0.0042,
        accuracy={"agreement": 97.25},
        pareto=[(0.008, 0.0), (0.003, -9.0), (0.004, -3.0)], chosen=(0.004, -3.0),
        choices=[SlotChoice("0", "ds_k3_relu6", "keep", "fp32", 0.001, 0.001, 0.0),
                 SlotChoice("1-2", "ir_k3_e6+ir_k5_e6", "er_k3_e2", "int8", 0.0007, 0.0031, -3.0)],
        parts=[PartLatency("teacher", 0.0082, 0.008), PartLatency("student", 0.004, 0.0042),
               PartLatency("stem", 0.0004, None)],
        accuracy_rows=[("top-1 agreement (%)", 100.0, 97.25), ("top-1 accuracy (%)", 75.1, 73.4)])
    assert d.pareto[0] == (0.003, -9.0)   # sorted by latency for the line plot
    html_path = write_report(tmp_path, d)
    assert html_path == tmp_path / "report.html"
    html = html_path.read_text()
    assert _imgs(html) == [PARETO_PNG, CHOICES_PNG, LATENCY_PNG]
    for name in _imgs(html):
        data = (tmp_path / name).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 5000
    assert html.count("<table>") == 4
    assert "<script>" not in html and "lite0 &lt;script&gt;" in html
    assert "<td>1-2</td><td>ir_k3_e6+ir_k5_e6</td><td>er_k3_e2</td><td>int8</td><td>3.1000</td><td>0.7000</td>" \
           "<td>2.4000</td>" in html
    assert "<td>top-1 accuracy (%)</td><td>75.10</td><td>73.40</td>" in html
    assert "<td>student</td><td>4.000</td><td>4.200</td><td>-4.8%</td>" in html
    assert "<td>speedup, measured</td><td>1.00x</td><td>1.90x</td>" in html
    assert not list(tmp_path.glob("*.tmp"))


def test_missing_parts_are_skipped_with_a_note(tmp_path):
    (tmp_path / PARETO_PNG).write_bytes(b"stale")   # from an earlier run: must not be linked
    html = write_report(tmp_path, ReportData("resnet18", 0.01, None)).read_text()
    assert _imgs(html) == [LATENCY_PNG]   # only the teacher's measured bar
    assert "No Pareto sweep" in html and "--sweep" in html and "No per-slot choices" in html
    assert "No accuracy figures" in html and html.count("<table>") == 3
    html = write_report(tmp_path / "empty", ReportData("resnet18", None, None)).read_text()
    assert _imgs(html) == [] and "No latency figures" in html and "No accuracy figures" in html


def test_derived_from_solution_like_build_passes_it(tmp_path):
    sol = {"predicted_s": 0.004, "score": -3.0, "budget_s": {"cpu:x": 0.0045}, "device": "cpu:x",
           "teacher_s": 0.008, "solver": "cbc", "status": "Optimal",
           "choices": [{"first": 0, "last": 0, "op": "keep", "precision": "fp32", "predicted_s": 0.001, "score": 0},
                       {"first": 1, "last": 2, "op": "er_k3_e2", "precision": "int8", "predicted_s": 0.002,
                        "score": -3.0}]}
    pareto = [{"predicted_s": 0.003, "score": -9}, {"predicted_s": 0.004, "score": -3}]
    d = ReportData("lite0", 0.008, 0.0042, {"agreement": 97.0, "student_top1": 70.0, "teacher_top1": 72.5},
                   sol, pareto, {0: 0.001, "1": 0.0015})
    assert d.chosen == (0.004, -3.0) and d.teacher_point == (0.008, 0.0)
    assert [(c.slot, c.op, c.precision, c.teacher_s) for c in d.choices] == \
        [("0", "keep", "fp32", 0.001), ("1-2", "er_k3_e2", "int8", 0.0015)]
    assert [p.part for p in d.parts] == ["teacher", "student"] and d.parts[1].predicted_s == 0.004
    assert d.accuracy_rows[1] == ("top-1 accuracy (%)", 72.5, 70.0)
    html = write_report(tmp_path, d).read_text()
    assert len(_imgs(html)) == 3 and "budget 4.500 ms on cpu:x" in html


def test_report_data_from_run_files(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "solution.json").write_text(json.dumps({
        "predicted_s": 0.003, "score": -2.0, "device": "cpu:x", "teacher_s": 0.006,
        "choices": [{"first": 0, "last": 0, "op": "keep", "precision": "fp32", "predicted_s": 0.002, "score": 0.0},
                    {"first": 1, "last": 2, "op": "skip", "precision": "fp32", "predicted_s": 0.0001, "score": -2.0}]}))
    (run / "teacher.json").write_text(json.dumps({"model": "mobilenetv2_100", "slots": [
        {"index": 0, "teacher_op": "ds_k3"}, {"index": 1, "teacher_op": "ir_k3_e6"}, {"index": 2, "teacher_op": "ir_k5_e6"}]}))
    (run / "latency.csv").write_text(
        "first,last,op,precision,signature,median_s,p90_s,stdev_s,count,backend,device\n"
        "0,0,keep,fp32,a,0.002,0,0,1,ort,cpu:x\n1,1,keep,fp32,b,0.0015,0,0,1,ort,cpu:x\n"
        "2,2,keep,fp32,c,0.001,0,0,1,ort,cpu:x\n1,1,keep,fp16,b,0.0009,0,0,1,ort,cpu:x\n")
    (run / "latency_fixed.json").write_text(json.dumps({"device": {"cpu:x": {
        "stem_s": 0.0003, "head_s": 0.0004, "teacher_s": 0.006, "teacher_sum_s": 0.0052, "correction_s": 0.0008}}}))
    d = report_data_from_run(run, 0.0061, 0.0033, {"agreement": 91.0})
    assert d.teacher_name == "mobilenetv2_100" and d.pareto == [] and d.chosen == (0.003, -2.0)
    c = d.choices[1]
    assert (c.slot, c.teacher_op, c.op) == ("1-2", "ir_k3_e6+ir_k5_e6", "skip") and abs(c.teacher_s - 0.0025) < 1e-12
    assert [(p.part, p.predicted_s, p.measured_s) for p in d.parts] == [
        ("stem", 0.0003, None), ("head", 0.0004, None), ("teacher", 0.0052, 0.0061), ("student", 0.003, 0.0033)]
    html = write_report(run, d).read_text()
    assert _imgs(html) == [CHOICES_PNG, LATENCY_PNG] and "No Pareto sweep" in html and "additivity correction" in html
    # an empty run directory still gives a report
    d = report_data_from_run(tmp_path / "nothing", 0.01, 0.005, {})
    assert d.teacher_name == "teacher" and d.choices == []
    assert write_report(tmp_path / "nothing", d).is_file()


def test_report_teacher_latency_at_the_profiles_base_precision(tmp_path):
    """An fp16 profile (a GPU target) has no fp32 rows: the teacher's per-slot latency is its fp16 keep."""
    (tmp_path / "solution.json").write_text(json.dumps({
        "predicted_s": 0.001, "device": "gpu:x",
        "choices": [{"first": 0, "last": 0, "op": "skip", "precision": "fp16", "predicted_s": 0.0}]}))
    (tmp_path / "latency.csv").write_text(
        "first,last,op,precision,signature,median_s,p90_s,stdev_s,count,backend,device\n"
        "0,0,keep,fp16,a,0.0007,0,0,1,tensorrt,gpu:x\n0,0,keep,int8,a,0.0005,0,0,1,tensorrt,gpu:x\n")
    (tmp_path / "latency_fixed.json").write_text(json.dumps({"device": {"gpu:x": {
        "stem_s": 0.0003, "head_s": 0.0004, "teacher_s": 0.002, "correction_s": 0.0, "precision": "fp16"}}}))
    d = report_data_from_run(tmp_path, 0.002, 0.001, {})
    assert d.choices[0].teacher_s == pytest.approx(0.0007)


def test_measured_points_share_the_search_scale():
    from hant_trt.deploy.report import ReportData

    d = ReportData(teacher_name="m", teacher_latency_s=0.004, student_latency_s=0.002, accuracy={},
                   solution={"teacher_s": 0.008, "predicted_s": 0.004, "choices": []})
    assert d.measured_scale == 2.0        # profile saw the teacher at 8 ms, the build at 4 ms
    assert ReportData(teacher_name="m", teacher_latency_s=0.004, student_latency_s=0.002,
                      accuracy={}).measured_scale == 1.0
