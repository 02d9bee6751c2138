"""A judge for composition refinement that fine-tunes (`search.refine_judge = "finetune"`): each
selection the exclusion moves propose is assembled from phase 1's candidates, fine-tuned briefly
exactly as the build would (its settings, `search.judge_steps` steps, the deploy-resolution share of
them scaled alike), BatchNorm-recalibrated, run with its int8 parts simulated from ranges calibrated
on it, and scored by the build's own eval objective: KL to the teacher + `build.ce_weight` × CE on
the eval split (`student.finetune.eval_objective`; the build's `keep_best` decision mirrored).

Why: the untrained composed KL (`refine.composed_kl`) predicts the untrained student within 3 %, but
not what the fine-tune makes of it — Lite0 at int8x=1.6 composed 0.531 vs 0.564 and ended 2.6 points
*below* the ILP's pick after the build (docs/RESULTS.md, session 18). Judging by a short fine-tune
asks the question the build answers. It costs a short build per selection (≈ 1 minute for Lite0 on
2 cores at 150 steps), which is why it judges the exclusion moves (one per replaced part) only.

Results are kept in judge.json by selection and settings, and each fine-tune checkpoints under
judge/: a killed search resumes where it stopped, and a second budget reuses what it shares.

One short fine-tune is a noisy measurement: the same Lite1 selection scored 3.62 / 3.69 / 3.97
with three seeds (`distill.seed`: eval split and fine-tune redrawn), and the paired difference of two selections changed sign between seeds
(docs/RESULTS.md, session 20) — while the best of the alternatives a sweep judges is the one the
noise favoured most. So a move the sweep picks is confirmed first (`confirmer`): the current and
the proposed selection are fine-tuned again with `search.judge_confirm` fresh seeds, and the move is
taken only when their mean relative gain on those seeds alone clears `min_gain`."""

from __future__ import annotations

import copy
import dataclasses
import json
import shutil
import statistics
import sys
from typing import Callable

from .. import atomic
from ..config import BUILD_OPT_INS
from ..rundir import file_hash, fingerprint, without_defaults
from ..runfiles import CANDIDATES, JUDGE, JUDGE_DIR, SCORES
from .ilp import Option


def judge_config(cfg, steps: int):
    """`cfg` with the build's fine-tune shortened to `steps`: its deploy-resolution and polish steps
    scaled by the same factor, so a short fine-tune ends at the deploy resolution as the build's does;
    one fine-tune, never a soup."""
    out = copy.deepcopy(cfg)
    b = out.build
    b.finetune_images = "train"     # a judgement is read on the eval split, which it must not train on
    b.soup = 0                      # one fine-tune a judgement: a soup multiplies its cost and lifts every
                                    #   selection alike (docs/RESULTS.md, session 32)
    b.full_res_steps = min(steps, round(b.full_res_steps * steps / b.finetune_steps)) if b.finetune_steps else 0
    b.polish_steps = round(b.polish_steps * steps / b.finetune_steps) if b.finetune_steps else 0
    b.finetune_steps = steps
    return out


def training_settings(cfg) -> dict:
    """The build settings a judgement depends on (all but where the engine goes; `finetune_images`
    is always "train" there, and left out so earlier judgements stay valid; so are
    the later opt-ins, `config.BUILD_OPT_INS`, while unset)."""
    out = {k: v for k, v in dataclasses.asdict(cfg.build).items() if k not in ("engine_name", "finetune_images")}
    return without_defaults(out, BUILD_OPT_INS)


def selection_key(choices: list[Option], fixed: dict, settings: dict) -> str:
    """What one judgement depends on: the selection (slots and the stem's / head's precision) and
    the settings it was fine-tuned with."""
    return fingerprint({"choices": [[o.first, o.last, o.op, o.precision] for o in choices],
                        "fixed": sorted(fixed.items()), **settings})


def finetuned_objective(run_root, cfg, steps: int, log: Callable[[str], None] | None = None) -> Callable:
    """evaluate(choices) for `refine.exclusions`: the eval objective (lower is better) of the
    student the build would make of `choices` with a `steps`-step fine-tune. Option lists as
    `composed_kl` takes them (the stem's / head's int8 Option included when chosen)."""
    from ..student.assemble import Choice, assemble
    from ..student.finetune import eval_objective
    from ..student.stage import build_data, train_student, trained_modules
    from ..teacher.stage import load_from_config
    from ..training import resolve_device

    jcfg = judge_config(cfg, steps)
    teacher, d = load_from_config(jcfg)
    n_slots = len(d.slots)
    data = build_data(jcfg, teacher.data_config)
    settings = {"build": training_settings(jcfg), "phase1": file_hash(run_root / SCORES)}
    cache_path = run_root / JUDGE
    cache = {}
    if cache_path.is_file():
        try:
            cache = json.loads(cache_path.read_text())
        except json.JSONDecodeError:
            cache = {}                              # unreadable: judged again
    say = log or (lambda line: print(line, file=sys.stderr, flush=True))

    def evaluate(options: list[Option], seed: int | None = None) -> float:
        """seed: the fine-tune's seed (batches, mixup; `build.seed`) instead of the build's own."""
        fixed = {o.op: o.precision for o in options if o.op in ("stem", "head") and (o.first < 0 or o.first >= n_slots)}
        blocks = sorted((o for o in options if 0 <= o.first < n_slots), key=lambda o: o.first)
        key = selection_key(blocks, fixed, settings if seed is None else {**settings, "seed": seed})
        if key in cache:
            return cache[key]["objective"]
        scfg = jcfg
        if seed is not None:
            scfg = copy.deepcopy(jcfg)
            scfg.build.seed = seed
        choices = [Choice(o.first, o.last, o.op, o.precision) for o in blocks]
        student = assemble(d, choices, trained_modules(run_root / CANDIDATES, d, choices))
        ckpt = run_root / JUDGE_DIR / key
        t = train_student(student, teacher.model, d, choices, fixed, data, scfg, ckpt, key,
                          device=resolve_device(jcfg.distill.device), calib_cache=run_root / "calib")
        res = t.after
        objective = eval_objective(res, jcfg.build.ce_weight)
        cache[key] = {"objective": objective, "kl": res["kl"], "ce": res.get("ce"),
                      "top1": res.get("student_top1"), "kept_assembled": t.finetune.get("kept") == "assembled",
                      "choices": [[o.first, o.last, o.op, o.precision] for o in blocks], "fixed": fixed,
                      **({"seed": seed} if seed is not None else {})}
        atomic.write_json(cache_path, cache)
        shutil.rmtree(ckpt, ignore_errors=True)
        say(f"judge: objective {objective:.4f} (KL {res['kl']:.4f}" + (f", seed {seed}" if seed is not None else "")
            + (f", eval top-1 {res['student_top1']:.1f}" if "student_top1" in res else "") + ")")
        return objective

    return evaluate


def confirmation_seeds(cfg, n: int) -> list[int]:
    """`n` fine-tune seeds the sweep's own fine-tunes (the build's seed) did not use."""
    from ..student.stage import finetune_seed

    return [finetune_seed(cfg) + 1 + k for k in range(n)]


def confirmer(evaluate: Callable, seeds: list[int], min_gain: float) -> Callable:
    """confirm(current, proposed) for `refine.exclusions`: both selections judged again with each of
    `seeds` (fine-tune seeds the sweep did not use), accepted when the mean relative gain
    (current − proposed) / current over those seeds is at least `min_gain`."""
    def confirm(current: list[Option], proposed: list[Option]) -> tuple[bool, dict]:
        gains = []
        for s in seeds:
            a, b = evaluate(current, seed=s), evaluate(proposed, seed=s)
            gains.append((a - b) / a)
        mean = statistics.mean(gains)
        say = (f"mean gain {100 * mean:+.1f} % on seeds {', '.join(map(str, seeds))} "
               f"({', '.join(f'{100 * g:+.1f}' for g in gains)} %; needed {100 * min_gain:.1f} %)")
        return mean >= min_gain, {"seeds": list(seeds), "gains": [round(g, 5) for g in gains], "say": say}

    return confirm


__all__ = ["confirmer", "finetuned_objective", "judge_config", "selection_key", "training_settings"]
