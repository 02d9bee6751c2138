"""The one progress bar: tqdm on stderr with an ETA, hidden by HANT_TRT_NO_PROGRESS=1 (tests, logs)."""

from __future__ import annotations

import os


def progress(total: int | None = None, initial: int = 0, desc: str = "", unit: str = "step", items=None,
             show: bool = True):
    """A tqdm bar over `items` (iterate it) or, without items, one to `update()` up to `total`;
    show=False hides it like the environment variable does."""
    from tqdm import tqdm

    return tqdm(items, total=total, initial=initial, desc=desc, unit=unit, dynamic_ncols=True,
                disable=not show or os.environ.get("HANT_TRT_NO_PROGRESS") == "1")
