import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = (ROOT.parent / "shared" / "data" / "imagenet-sample").resolve()

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


# folders of the checkout that the package writes by default; tests give their own paths instead
CHECKOUT_OUTPUTS = ("engines", "calib", "runs")


def _checkout_outputs() -> set[str]:
    # top level only: a developer's runs/ holds thousands of files, and every test would walk them
    found = set()
    for name in CHECKOUT_OUTPUTS:
        folder = ROOT / name
        if folder.is_dir():
            found |= {f"{name}/{entry}" for entry in os.listdir(folder)}
    return found


@pytest.fixture(autouse=True)
def writes_only_under_tmp():
    """Fail a test that leaves new files in the checkout's engines/, calib/ or runs/ (a missing
    engines_dir / cache_dir / run_dir argument); everything it writes belongs under tmp_path."""
    before = _checkout_outputs()
    yield
    new = _checkout_outputs() - before
    assert not new, f"the test wrote into the checkout: {sorted(new)[:5]}"


def shared_data_or_skip() -> Path:
    if not (SHARED_DATA / "holdout" / "labels.tsv").is_file():
        pytest.skip(f"shared ImageNet sample not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def lite0():
    """The offline EfficientNet-Lite0 teacher (real ImageNet weights), loaded once."""
    from hant_trt.teacher.load import load_teacher

    return load_teacher("efficientnet_lite0", "offline-lite0")


@pytest.fixture(scope="session")
def lite0_decomposition(lite0):
    from hant_trt.teacher.decompose import decompose

    return decompose(lite0.model, lite0.resolution)


class Flaky(list):
    """A dataset that dies after `limit` reads, like a killed process."""

    def __init__(self, items, limit):
        super().__init__(items)
        self.limit = limit

    def __getitem__(self, i):
        self.limit -= 1
        if self.limit < 0:
            raise KeyboardInterrupt
        return list.__getitem__(self, i)


def run_cli(*args: str, cwd=None, env=None, timeout=600) -> subprocess.CompletedProcess:
    """Run `python -m hant_trt.cli ARGS` in a subprocess (real exit codes and stderr)."""
    e = dict(os.environ)
    e.update(env or {})
    return subprocess.run([sys.executable, "-m", "hant_trt.cli", *args], capture_output=True,
                          text=True, cwd=cwd or ROOT, env=e, timeout=timeout)


class CountingBackend:
    """The real ORT backend, counting what it prepares."""

    def __init__(self):
        from hant_trt.latency.backends import get_backend

        self.inner, self.prepared = get_backend("ort", threads=1), 0
        self.name = self.inner.name

    def __getattr__(self, k):
        return getattr(self.inner, k)

    def prepare(self, *a, **kw):
        self.prepared += 1
        return self.inner.prepare(*a, **kw)
