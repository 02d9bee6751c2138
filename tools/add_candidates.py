"""A distilled run's candidate set changed, training only what is new: a copy of SRC_RUN whose
config changes `distill.align`, `spans`, `preset` or `slots`, with SRC_RUN's trained candidates
reused where the new set lists them (`hant_trt.distill.extend`). Then score, profile and search on
DST_RUN as usual:

    .venv/bin/python tools/add_candidates.py runs/lite1_dev_tiny runs/l1_align16 --set distill.align=16
    .venv/bin/hant-trt score runs/l1_align16 && .venv/bin/hant-trt profile runs/l1_align16

Resumable: a kill leaves a checkpoint under DST_RUN/extend_work; run the same command again.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from hant_trt.commands import apply_overrides
from hant_trt.config import from_dict
from hant_trt.distill.extend import extend_run
from hant_trt.errors import UserError
from hant_trt.runfiles import MANIFEST


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("src")
    ap.add_argument("dst")
    ap.add_argument("--set", action="append", default=[], metavar="distill.KEY=VALUE",
                    help="a setting of the candidate set (distill.align / spans / preset / slots), repeatable")
    a = ap.parse_args()
    try:
        manifest = Path(a.src) / MANIFEST
        if not manifest.is_file():
            raise UserError(f"{a.src} is not a run directory (no {MANIFEST})")
        cfg = from_dict(json.loads(manifest.read_text())["config"])
        apply_overrides(cfg, a.set)
        info = extend_run(Path(a.src), Path(a.dst), cfg)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(info))
    return 0


if __name__ == "__main__":
    sys.exit(main())
