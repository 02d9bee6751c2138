"""In-context latencies (`profile.context = "model"`): a candidate timed swapped into the teacher."""

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from hant_trt.config import RunConfig
from hant_trt.errors import UserError
from hant_trt.latency.backends import get_backend
from hant_trt.latency.context import Swap, in_context_latency, measure_in_context, swapped_model
from hant_trt.latency.lut import LatencyTable
from hant_trt.rundir import RunDir

from conftest import CountingBackend


def conv(c_in, c_out, hidden=None):
    hidden = hidden or c_out
    return nn.Sequential(nn.Conv2d(c_in, hidden, 3, padding=1), nn.ReLU(), nn.Conv2d(hidden, c_out, 3, padding=1))


def toy():
    torch.manual_seed(0)
    return SimpleNamespace(stem=nn.Conv2d(3, 16, 3, padding=1), blocks=[conv(16, 16), conv(16, 16, 96), conv(16, 16)],
                           head=nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10)))


def test_swapped_model_replaces_the_span_only():
    d = toy()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        ref = d.head(d.blocks[2](d.blocks[1](d.blocks[0](d.stem(x)))))
        assert torch.equal(swapped_model(d, 0, 0, None)(x), ref)
        got = swapped_model(d, 1, 1, nn.Identity())(x)
        assert torch.equal(got, d.head(d.blocks[2](d.blocks[0](d.stem(x)))))
        assert torch.equal(swapped_model(d, 0, 1, nn.Identity())(x), d.head(d.blocks[2](d.stem(x))))


def test_savings_measured_once_signed_and_failures_recorded(tmp_path):
    d = toy()
    table = LatencyTable(tmp_path / "lut.sqlite")
    be = CountingBackend()
    modules = {"skip": nn.Identity, "heavy": lambda: conv(16, 16, 256)}

    def make(first, last, op):
        if op == "boom":
            raise RuntimeError("boom")
        return modules[op]()

    swaps = [Swap(1, 1, "skip", "skip|16", "conv96|16"), Swap(1, 1, "heavy", "heavy|16", "conv96|16"),
             Swap(1, 1, "skip", "skip|16", "conv96|16"),        # the same swap again: measured once
             Swap(2, 2, "boom", "boom|16", "conv16|16"), Swap(0, 0, "keep", "conv16|16", "conv16|16")]
    got = measure_in_context(d, "toy", 32, swaps, make, be, table, tmp_path / "w", rounds=3, max_seconds=0.05,
                             progress=False)
    assert set(got) == {("conv96|16", "skip|16"), ("conv96|16", "heavy|16")}
    assert got[("conv96|16", "skip|16")].median_s > 0        # dropping the 96-wide block saves time
    assert got[("conv96|16", "heavy|16")].median_s < 0       # a 256-wide one in its place costs time
    assert got[("conv96|16", "skip|16")].count == 3
    assert be.prepared == 1 + 2          # the teacher, then each distinct swap that built (not the failed one)
    failed = [r for r in table.rows() if r.error]
    assert len(failed) == 1 and "boom" in failed[0].error and failed[0].signature == "ctx:toy@32:conv16|16->boom|16"
    be.prepared = 0
    again = measure_in_context(d, "toy", 32, swaps[:3], make, be, table, tmp_path / "w", progress=False)
    assert be.prepared == 0 and {k: r.median_s for k, r in again.items()} == {k: r.median_s for k, r in got.items()}


def test_in_context_latency_makes_the_scale_model_predict_teacher_minus_saving():
    stem, head, keeps, teacher = 0.5, 0.3, [1.0, 2.0, 1.5], 6.0
    total = stem + head + sum(keeps)
    lat = in_context_latency(keeps[1], 0.7, teacher, total)
    predicted = (stem + head + keeps[0] + lat + keeps[2]) * teacher / total
    assert predicted == pytest.approx(teacher - 0.7)


def test_context_setting_is_checked(tmp_path):
    from hant_trt.latency.stage import run_profile

    cfg = RunConfig()
    cfg.profile.context = "inside"
    with pytest.raises(UserError, match="alone, model, int8"):
        run_profile(RunDir(tmp_path / "run"), cfg)
    cfg.profile.context, cfg.profile.precisions = "int8", ["fp32"]
    with pytest.raises(UserError, match="needs int8"):
        run_profile(RunDir(tmp_path / "run"), cfg)
    cfg.profile.context, cfg.profile.precisions = "model", ["fp32", "fp16"]
    with pytest.raises(UserError, match="fp32 and int8 swaps only"):
        run_profile(RunDir(tmp_path / "run"), cfg)


def test_int8_savings_are_timed_in_the_int8_teacher_and_keyed_apart(tmp_path):
    from hant_trt.quant.layouts import layout_for

    d = toy()
    table = LatencyTable(tmp_path / "lut.sqlite")
    layout = layout_for(SimpleNamespace(int8_layout="ort", backend="ort", precisions=["fp32", "int8"]))
    swaps = [Swap(1, 1, "skip", "skip|16", "conv96|16")]
    kw = dict(rounds=3, max_seconds=0.05, progress=False)
    got8 = measure_in_context(d, "toy", 32, swaps, lambda f, l, op: nn.Identity(), get_backend("ort", threads=1),
                              table, tmp_path / "w", precision="int8", layout=layout, **kw)
    assert got8[("conv96|16", "skip|16")].median_s > 0       # dropping the widest block saves at int8 too
    assert list((tmp_path / "w").glob("ctx_swapped*.onnx"))
    precisions = {r.precision for r in table.rows()}
    assert precisions == {layout.table_precision("int8")} and "int8" in precisions.pop()
    got32 = measure_in_context(d, "toy", 32, swaps, lambda f, l, op: nn.Identity(), get_backend("ort", threads=1),
                               table, tmp_path / "w", **kw)
    assert len(table.rows()) == 2 and got32[("conv96|16", "skip|16")] != got8[("conv96|16", "skip|16")]
    with pytest.raises(ValueError, match="fp32 or int8"):
        measure_in_context(d, "toy", 32, swaps, lambda f, l, op: nn.Identity(), get_backend("ort", threads=1),
                           table, tmp_path / "w", precision="fp16", **kw)


def test_int8_rows_in_context_make_the_search_predict_the_int8_teacher_minus_saving(monkeypatch):
    """A span swapped into the int8 teacher: the row the profile writes for it makes the search's
    int8 model (k8 × (stem + head + Σ parts − savings at int8 junctions)) predict exactly the
    measured int8 teacher − the measured saving, with the span's inner junction gone."""
    from hant_trt.latency import context, stage
    from hant_trt.latency.lut import LatencyRow
    from hant_trt.search.ilp import Option, Problem, predict

    dev, keeps8, stem8, head8 = "cpu", [1.0, 2.0, 1.5], 0.4, 0.2
    junctions = [0.05, 0.1, 0.2, 0.08]                     # j = 0..3: inputs of slots 0..2 and the head
    sum8 = stem8 + head8 + sum(keeps8) - sum(junctions)
    fixed = {"teacher_s": 9.0, "teacher_sum_s": 8.0, "teacher_int8_s": 4.5, "teacher_int8_sum_s": sum8,
             "junction_saving_s": junctions}
    rows = [{"first": i, "last": i, "op": "keep", "precision": "int8", "signature": f"k{i}", "median_s": v}
            for i, v in enumerate(keeps8)]
    rows.append({"first": 1, "last": 2, "op": "span", "precision": "int8", "signature": "span", "median_s": 9.9})

    def fake_measure(d, model, res, swaps, make, backend, table, workdir, **kw):
        assert kw["precision"] == "int8" and [(s.keep_signature, s.signature) for s in swaps] == [("k1+k2", "span")]
        return {("k1+k2", "span"): LatencyRow("x", "3x32x32", 1, "int8", "ort", "v", dev, median_s=0.9)}

    monkeypatch.setattr(context, "measure_in_context", fake_measure)
    cfg = RunConfig()
    cfg.profile.context, cfg.profile.precisions = "int8", ["fp32", "int8"]     # fp32 rows stay standalone
    info = stage._in_context(rows, fixed, None, SimpleNamespace(name="toy", resolution=32), None, None, None, None,
                             cfg)
    assert info["int8"] == {"swaps": 1, "rows_in_context": 1} and "fp32" not in info and rows[-1]["alone_s"] == 9.9
    k8 = fixed["teacher_int8_s"] / sum8
    opt = lambda r: Option(r["first"], r["last"], r["op"], "int8", 0.0, {dev: r["median_s"] * k8})
    fixed_opts = [Option(-1, -1, "stem", "int8", 0.0, {dev: stem8 * k8}), Option(3, 3, "head", "int8", 0.0, {dev: head8 * k8})]
    p = Problem(3, [], {dev: 1.0}, {dev: 0.0}, fixed_options=fixed_opts,
                junction_saving_s=[{dev: j * k8} for j in junctions])
    teacher = predict(p, [opt(r) for r in rows[:3]], fixed_opts, dev)
    swapped = predict(p, [opt(rows[0]), opt(rows[-1])], fixed_opts, dev)
    assert teacher == pytest.approx(fixed["teacher_int8_s"])
    assert swapped == pytest.approx(fixed["teacher_int8_s"] - 0.9)
