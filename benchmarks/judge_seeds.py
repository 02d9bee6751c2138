"""How much the fine-tune judge's verdict depends on the fine-tune's seed: selections already in a
run's judge.json judged again with other seeds (`distill.seed`, which draws the build's batches and
mixup), on a scratch copy of the run so judge.json is left as it is.

    .venv/bin/python benchmarks/judge_seeds.py RUN KEY[,KEY...] SEED[,SEED...]

KEY: judge.json keys (each holds its selection). Printed per seed and key: the objective, beside
the one judge.json holds.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

from hant_trt.config import from_dict
from hant_trt.runfiles import CANDIDATES, JUDGE, SCORES, TEACHER
from hant_trt.search.ilp import Option
from hant_trt.search.judge import finetuned_objective
from hant_trt.teacher.stage import load_from_config


def main() -> None:
    src, keys, seeds = Path(sys.argv[1]).resolve(), sys.argv[2].split(","), [int(s) for s in sys.argv[3].split(",")]
    judged = json.loads((src / JUDGE).read_text())
    scratch = Path(tempfile.mkdtemp(prefix="judge_seeds_"))
    for name in (CANDIDATES, SCORES, "run.json", TEACHER):
        os.symlink(src / name, scratch / name)
    cfg = from_dict(json.loads((src / "run.json").read_text())["config"])
    n_slots = len(load_from_config(cfg)[1].slots)
    evaluate = finetuned_objective(scratch, cfg, cfg.search.judge_steps, log=lambda line: None)
    for seed in seeds:
        for k in keys:
            e = judged[k]
            opts = [Option(f, l, op, p, 0.0, {}) for f, l, op, p in e["choices"]]
            opts += [Option(-1, -1, "stem", e["fixed"]["stem"], 0.0, {}),
                     Option(n_slots, n_slots, "head", e["fixed"]["head"], 0.0, {})]
            print(f"seed {seed} {k}: objective {evaluate(opts, seed=seed):.4f} (judge.json: {e['objective']:.4f})",
                  flush=True)


if __name__ == "__main__":
    main()
