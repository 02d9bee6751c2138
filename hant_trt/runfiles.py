"""The run directory's files and table columns: what stages hand to each other (no torch, no onnx).

A writer and its readers take the names from here, so a rename cannot leave one of them behind.
Saved runs are read by these names: changing one orphans every earlier run.
"""

from __future__ import annotations

from pathlib import Path

MANIFEST = "run.json"                    # configuration, versions, each stage's status and fingerprint
TEACHER = "teacher.json"                 # teacher: the slots
CANDIDATES = "candidates"                # distill: one folder of trained candidates
SCORES = "scores.csv"                    # score: swap-one scores, SCORE_COLUMNS
FIXED_SCORES = "scores_fixed.json"       # score → search: the stem's and head's swap-one scores at int8
SCORE_PARTIAL = "score.partial.json"     # score: its sums so far, for a killed score to resume from
PROFILE = "profile"                      # profile: its working folder (exported parts)
LATENCY = "latency.csv"                  # profile: per-candidate latencies, LATENCY_COLUMNS
LATENCY_FIXED = "latency_fixed.json"     # profile: {"device": {fingerprint: stem, head, teacher...}}
SOLUTION = "solution.json"               # search: the chosen student
PARETO_JSON, PARETO_PNG = "pareto.json", "pareto.png"    # search with a sweep
INTERACTIONS = "interactions.json"       # search: measured pair terms, keyed by its input tables
JUDGE, JUDGE_DIR = "judge.json", "judge"  # search: fine-tune judgements by selection; their checkpoints
STUDENT = "student"                      # build: the saved student folder
INT8_CALIB = "int8_calib.json"           # beside a saved student: the ranges of its int8 parts
BUILD = "build.json"                     # build: what was built and measured

# lists, not tuples: writers extend them (latency.csv with in-context columns)
SCORE_COLUMNS = ["first", "last", "op", "precision", "signature", "agreement", "kl", "top1", "local_mse",
                 "params", "macs"]
LATENCY_COLUMNS = ["first", "last", "op", "precision", "signature", "median_s", "p90_s", "stdev_s",
                   "count", "backend", "device"]
# what the search needs of latency.csv: tables without the spread columns still load
LATENCY_NEEDED = ["first", "last", "op", "precision", "signature", "median_s", "device"]


REPO_ROOT = Path(__file__).resolve().parents[1]


def default_engines_dir() -> Path:
    """Shared outside any run directory: final engines + metadata JSON, the TensorRT timing cache —
    `engines/` of the source checkout when running from one, else ./engines."""
    cand = REPO_ROOT / "engines"
    return cand if (REPO_ROOT / "pyproject.toml").exists() else Path("engines").resolve()
