"""Limits on what a selection may hold: how many blocks it may drop (dropped blocks of one stage
compound), and which candidates it may not choose at all (`search.exclude`).

Two `skip`s in one stage of Lite0 cost ≈ 50 % more KL than their swap-one scores add up to, while
skips in different stages add (docs/RESULTS.md, "Why a tight budget hurts"); the ILP's objective is
additive, so at high speedups it stacks skips in one stage. `search.max_skips_per_stage = n`
turns that into a constraint: at most n skips among the slots of each stage of the teacher."""

from __future__ import annotations

import fnmatch
import json
import re
from pathlib import Path

from .ilp import Option


def stage_of(path: str) -> str:
    """A slot's stage: its module path without the block index ("blocks.3.1" → "blocks.3",
    "layer2.0" → "layer2")."""
    return path.rsplit(".", 1)[0] if "." in path else path


def read_stages(teacher_json: Path) -> list[str]:
    """Stage of every slot of teacher.json, in slot order."""
    return [stage_of(s.get("path", str(s.get("index", i)))) for i, s in
            enumerate(json.loads(Path(teacher_json).read_text())["slots"])]


def skips_per_stage(options: list[Option], stages: list[str], most: int) -> list[tuple[tuple, int]]:
    """`Problem.at_most` groups: for each stage, its slots' `skip` options, at most `most` chosen
    (stages whose skips cannot exceed `most` get no group)."""
    groups: dict[str, list[tuple]] = {}
    for o in options:
        if o.op == "skip" and o.first == o.last and 0 <= o.first < len(stages):
            groups.setdefault(stages[o.first], []).append(o.key)
    out = []
    for name in sorted(groups):
        keys = tuple(sorted(groups[name]))
        if len({k[0] for k in keys}) > most:
            out.append((keys, most))
    return out


_EXCLUDE = re.compile(r"^(\*|\d+)(?:-(\d+))?:(\S+)$")


def exclude_problem(pattern: str) -> str | None:
    """Why `pattern` is not a `search.exclude` entry, or None. An entry is SLOTS:OP — SLOTS a slot
    ("14"), a span ("14-15", exactly those slots) or "*" (any); OP a name or a glob ("skip",
    "ir_k5_*", "*")."""
    m = _EXCLUDE.match(pattern.strip())
    if not m:
        return f"'{pattern}' is not SLOTS:OP (e.g. '14-15:*', '12:skip', '*:ir_k3_e1_*')"
    if m.group(1) == "*" and m.group(2) is not None:
        return f"'{pattern}': '*' stands for any slot and takes no range"
    if m.group(2) is not None and int(m.group(2)) < int(m.group(1)):
        return f"'{pattern}': the span ends before it starts"
    return None


def excluded(options: list[Option], patterns: list[str]) -> list[Option]:
    """The options matching any of `patterns` (see exclude_problem). The teacher's own block (`keep`)
    is never excluded: every slot keeps a choice."""
    rules = []          # (first, last) or None for any slot, op glob
    for pat in patterns:
        first, last, op = _EXCLUDE.match(pat.strip()).groups()
        rules.append((None if first == "*" else (int(first), int(last or first)), op))
    return [o for o in options if o.op != "keep"
            and any(where in (None, (o.first, o.last)) and fnmatch.fnmatchcase(o.op, op) for where, op in rules)]
