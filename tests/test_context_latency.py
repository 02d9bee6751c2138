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


def conv(c_in, c_out, hidden=None):
    hidden = hidden or c_out
    return nn.Sequential(nn.Conv2d(c_in, hidden, 3, padding=1), nn.ReLU(), nn.Conv2d(hidden, c_out, 3, padding=1))


def toy():
    torch.manual_seed(0)
    return SimpleNamespace(stem=nn.Conv2d(3, 16, 3, padding=1), blocks=[conv(16, 16), conv(16, 16, 96), conv(16, 16)],
                           head=nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10)))


class CountingBackend:
    """The real ORT backend, counting what it prepares."""

    def __init__(self):
        self.inner, self.prepared = get_backend("ort", threads=1), 0
        self.name = self.inner.name

    def __getattr__(self, k):
        return getattr(self.inner, k)

    def prepare(self, *a, **kw):
        self.prepared += 1
        return self.inner.prepare(*a, **kw)


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
    with pytest.raises(UserError, match="alone or model"):
        run_profile(RunDir(tmp_path / "run"), cfg)
    cfg.profile.context, cfg.profile.precisions = "model", ["fp32", "int8"]
    with pytest.raises(UserError, match="fp32 swaps only"):
        run_profile(RunDir(tmp_path / "run"), cfg)
