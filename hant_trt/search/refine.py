"""Composition refinement: start from the ILP's selection and improve it by local search, judging
each step by the *composed* student's KL to the teacher on the eval split, not by Σ swap-one scores.

Why: swap-one scores add up well across budgets (Spearman 0.9 with measured agreement) but rank
students of one budget poorly (0.26–0.83, docs/RESULTS.md): errors of neighbouring replacements
compound (several `skip`s in a row cost far more than their sum). The ILP finds the best selection
for the additive proxy; this finds, near it, one that is better as a whole.

A move replaces the choice at one slot by another option of that slot; when that breaks the
budget, a cheaper swap at another slot that frees enough latency is made with it ("repair"; the
`repairs` swaps of least proxy-score loss, at different slots, are each tried). Per sweep, every movable slot is visited once and its best move
is taken when it lowers the composed KL by more than `min_gain` (relative). Slots covered by a
fused span stay as they are; a slot's precision is a move like its op (the evaluator composes int8
parts in simulated int8, as the build deploys them). Everything here is plain Python over
`Option`s; the torch evaluator (`composed_kl`) is imported lazily by the search stage.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Callable

from ..runfiles import CANDIDATES
from .ilp import Option, Problem, Solution, pair_score, predict, within_limits

MIN_GAIN = 0.005        # a move is taken when it lowers the judge's measure by more than this (relative)


@dataclass
class Move:
    sweep: int
    slot: int
    old: str
    new: str
    repair: tuple | None     # (slot, old op, new op) of the budget repair, if one was needed
    kl_before: float
    kl_after: float
    kind: str = "swap"       # swap: one slot's option | exclude: the ILP solved again without `old`

    def to_dict(self) -> dict:
        return {"kind": self.kind, "sweep": self.sweep, "slot": self.slot, "old": self.old, "new": self.new,
                "repair": list(self.repair) if self.repair else None,
                "kl_before": round(self.kl_before, 5), "kl_after": round(self.kl_after, 5)}


def _name(o: Option) -> str:
    where = str(o.first) if o.first == o.last else f"{o.first}-{o.last}"
    return f"{where} {o.op}" + (f" {o.precision}" if o.precision != "fp32" else "")


def _changes(old: list[Option], new: list[Option]) -> str:
    by_key = {o.key: o for o in old}
    gone = sorted(set(by_key) - {o.key for o in new})
    came = [o for o in sorted(new, key=lambda o: o.first) if o.key not in by_key]
    return ", ".join([f"−{_name(by_key[k])}" for k in gone] + [f"+{_name(o)}" for o in came])


def exclusions(problem: Problem, solution: Solution, evaluate: Callable[[list[Option]], float],
               resolve: Callable[[Problem], Solution], sweeps: int = 2, min_gain: float = MIN_GAIN,
               progress: Callable[[str], None] | None = None,
               excludable: Callable[[Option], bool] | None = None,
               measure: str = "KL", confirm: Callable | None = None) -> tuple[Problem, Solution, float, float, list, int,
                                                                               list]:
    """Exclusion moves: for every replaced part of the selection (a fused span too), the ILP solved
    again without that option — the best proxy selection that does without it — and composed; the
    best is taken when it lowers the composed KL by more than `min_gain`, up to `sweeps` times.
    Why: a part whose swap-one score is fine can compose badly with the rest (Lite0's 192-channel
    7x7 blocks at int8x=1.5: −6.4 points with, −1.8 without, at the same measured speed — found by
    hand with `search.exclude`, docs/RESULTS.md, session 17); single-slot moves cannot reach the
    alternative when it breaks a span or changes several slots at once.
    excludable(option): which parts are tried (default: every part but the teacher's own block in
    fp32 — an int8 `keep` too). measure: what `evaluate` returns, as progress lines name it.
    confirm(current options, proposed options) → (accepted, detail): asked before a move is taken,
    with evaluations `evaluate` never made (the best of several noisy judgements is biased towards
    luck: it is confirmed on fresh ones); a rejected move ends the sweeps.
    Returns (the problem without the excluded options, solution, KL at the start, KL now, moves,
    evaluations, confirmations: [{"without", "accepted", **detail}])."""
    from ..errors import UserError

    chosen = sorted(solution.choices, key=lambda o: o.first)
    start = cur = evaluate(chosen + list(solution.fixed_choices))
    moves, tried, checks = [], 1, []
    for sweep in range(max(0, sweeps)):
        best = None
        parts = [o for o in chosen if (excludable(o) if excludable else not (o.op == "keep" and o.precision == "fp32"))]
        s0 = time.perf_counter()
        for i, o in enumerate(parts):
            if progress:
                eta = f", ETA {(time.perf_counter() - s0) / i * (len(parts) - i):.0f}s" if i else ""
                progress(f"refine exclusions {sweep + 1}: without {_name(o)} ({i + 1}/{len(parts)}{eta})")
            p = replace(problem, options=[x for x in problem.options if x.key != o.key])
            try:
                sol = resolve(p)
            except UserError:
                continue                            # nothing else meets the budget without it
            kl = evaluate(sorted(sol.choices, key=lambda x: x.first) + list(sol.fixed_choices))
            tried += 1
            if best is None or kl < best[0]:
                best = (kl, o, p, sol)
        if best is None or best[0] >= cur * (1 - min_gain):
            break
        kl, o, p, sol = best
        if confirm is not None:
            ok, detail = confirm(chosen + list(solution.fixed_choices),
                                 sorted(sol.choices, key=lambda x: x.first) + list(sol.fixed_choices))
            checks.append({"without": _name(o), "accepted": bool(ok), **{k: v for k, v in detail.items() if k != "say"}})
            if progress:
                progress(f"refine: without {_name(o)} {'confirmed' if ok else 'not confirmed'}: {detail.get('say', '')}")
            if not ok:
                break
        problem = p
        moves.append(Move(sweep, o.first, _name(o), _changes(chosen, sol.choices), None, cur, kl, kind="exclude"))
        if progress:
            progress(f"refine: without {_name(o)}: {moves[-1].new}: {measure} {cur:.4f} → {kl:.4f}")
        solution, chosen, cur = sol, sorted(sol.choices, key=lambda x: x.first), kl
    return problem, solution, start, cur, moves, tried, checks


def _fits(p: Problem, chosen: list[Option], fixed: list[Option] = ()) -> bool:
    for dev, budget in p.budget_s.items():
        if any(dev not in o.latency_s for o in chosen) or predict(p, chosen, list(fixed), dev) > budget * (1 + 1e-9):
            return False
    for limit, attr in ((p.max_params, "params"), (p.max_macs, "macs")):
        if limit is not None and sum(getattr(o, attr) for o in chosen) > limit * (1 + 1e-9):
            return False
    return within_limits(p, chosen)




def refine(problem: Problem, solution: Solution, evaluate: Callable[[list[Option]], float], sweeps: int = 2,
           min_gain: float = MIN_GAIN, repairs: int = 3, movable: Callable[[Option], bool] | None = None,
           progress: Callable[[str], None] | None = None,
           resolve: Callable[[Problem], Solution] | None = None,
           excludable: Callable[[Option], bool] | None = None, measure: str = "KL",
           confirm: Callable | None = None) -> tuple[Solution, dict]:
    """(refined solution, info). evaluate(choices) → the composed student's KL (lower is better);
    it is called once per tried selection. repairs: how many budget repairs (at different slots)
    are tried for a move that breaks the budget. movable(option) → whether a slot may change
    (default: single-slot, any precision). The stem's and head's chosen precisions stay; evaluate
    gets them with the slots' choices. resolve(problem) → the ILP's solution: when given,
    `exclusions` runs first (up to `sweeps` moves, each solving once per replaced part), then the
    single-slot moves on what it left. The refined selection meets every constraint of `problem`.
    measure: what `evaluate` returns, as progress lines name it. confirm: see `exclusions`."""
    ex_moves, ex_tried, start, checks = [], 0, None, []
    t0 = time.perf_counter()
    if resolve is not None:
        problem, solution, start, _, ex_moves, ex_tried, checks = exclusions(
            problem, solution, evaluate, resolve, sweeps, min_gain, progress, excludable, measure, confirm)
    movable = movable or (lambda o: o.first == o.last)
    by_slot: dict[int, list[Option]] = {}
    for o in problem.options:
        if o.first == o.last:
            by_slot.setdefault(o.first, []).append(o)
    chosen = sorted(solution.choices, key=lambda o: o.first)
    fixed = list(solution.fixed_choices)       # the stem's and head's precision stay as chosen
    composed = evaluate
    evaluate = lambda ch: composed(ch + fixed)  # noqa: E731
    cur = evaluate(chosen)
    start = cur if start is None else start
    moves: list[Move] = list(ex_moves)
    tried = 1 + ex_tried
    per_sweep = sum(len(by_slot.get(o.first, ())) - 1 for o in chosen if movable(o))   # at least
    for sweep in range(max(0, sweeps)):
        changed = False
        s0, n0 = time.perf_counter(), tried
        for pos in range(len(chosen)):
            here = chosen[pos]
            if not movable(here):
                continue
            if progress and tried > n0:
                done = tried - n0
                eta = (time.perf_counter() - s0) / done * max(0, per_sweep - done)
                progress(f"refine sweep {sweep + 1}: slot {here.first}, {done}/{per_sweep} tried, ETA {eta:.0f}s")
            best = None
            for o in by_slot.get(here.first, ()):
                if o.key == here.key:
                    continue
                trial = chosen[:pos] + [o] + chosen[pos + 1:]
                tries = [(trial, None)] if _fits(problem, trial, fixed) else _repairs(problem, trial, pos, by_slot,
                                                                                       movable, repairs, fixed)
                for cand, fix in tries:
                    kl = evaluate(cand)
                    tried += 1
                    if best is None or kl < best[0]:
                        best = (kl, cand, o, fix)
            if best is not None and best[0] < cur * (1 - min_gain):
                kl, trial, o, fix = best
                moves.append(Move(sweep, here.first, here.op, o.op, fix, cur, kl))
                if progress:
                    progress(f"refine: slot {here.first} {here.op} → {o.op}"
                             + (f" (slot {fix[0]} {fix[1]} → {fix[2]})" if fix else "") + f": KL {cur:.4f} → {kl:.4f}")
                chosen, cur, changed = trial, kl, True
        if not changed:
            break
    devs = list(problem.budget_s)
    pred = {d: predict(problem, chosen, fixed, d) for d in devs}
    out = replace(solution, choices=chosen, predicted_s=pred,
                  score=sum(o.score for o in chosen + fixed) + pair_score(problem.pairs, chosen))
    info = {"kl_start": start, "kl_end": cur, "moves": [m.to_dict() for m in moves], "evaluated": tried,
            "seconds": round(time.perf_counter() - t0, 1)}
    if confirm is not None:
        info["confirmations"] = checks
    return out, info


def _repairs(p: Problem, trial: list[Option], pos: int, by_slot: dict, movable, k: int,
             fixed: list[Option] = ()) -> list[tuple]:
    """Up to k single swaps elsewhere (at k different slots) that bring `trial` back within every
    constraint, least proxy-score loss first: [(repaired, (slot, old op, new op))]. Several are
    tried because the proxy cannot tell which neighbourhood a cut hurts least."""
    best: dict[int, tuple] = {}
    for j, here in enumerate(trial):
        if j == pos or not movable(here):
            continue
        for o in by_slot.get(here.first, ()):
            if o.key == here.key:
                continue
            cand = trial[:j] + [o] + trial[j + 1:]
            if not _fits(p, cand, fixed):
                continue
            rank = (here.score - o.score, sum(o.latency_s.values()))
            if j not in best or rank < best[j][0]:
                best[j] = (rank, cand, (here.first, here.op, o.op))
    return [(c, fix) for _, c, fix in sorted(best.values(), key=lambda t: t[0])[:k]]


def composed_kl(run_root, cfg, max_images: int | None = None, cache_bytes: float = 1.5e9) -> Callable:
    """evaluate(choices) for `refine`: mean KL(teacher ‖ student) over the run's eval split, the
    student assembled from the distilled candidates at the options' precisions. An int8 option (and
    the stem or head, when `choices` holds their int8 `Option`, first = -1 / n_slots) runs in the
    profile layout's simulated int8, its ranges calibrated on the teacher's inputs of its slot
    exactly as its swap-one score was (`profile.calib_images` un-augmented training images); the
    build calibrates again on the assembled student, so this is the choices' composed effect with
    the scores' ranges. Other precisions (fp16) run in fp32. Boundary activations of recent
    selections are cached by prefix, so trying a change at slot i runs only slots i.. and the head."""
    from collections import OrderedDict

    import torch
    import torch.nn.functional as F
    from torch.utils.data import DataLoader, Subset

    from ..data import data_splits
    from ..distill.pool import keep_entries, load_trained   # the search reads phase 1's weights
    from ..quant.calibrate import QUANT_LAYERS
    from ..quant.layouts import layout_for, simulated_int8
    from ..teacher.capture import capture
    from ..teacher.decompose import span_teacher
    from ..teacher.stage import load_from_config
    from ..training import eval_batches

    teacher, d = load_from_config(cfg)
    modules = {p.where: p.module for p in keep_entries(d) + load_trained(run_root / CANDIDATES, d)}
    ev = data_splits(cfg, teacher.data_config).eval
    if max_images and len(ev) > max_images:
        ev = Subset(ev, range(max_images))
    x = torch.cat([b for b, _ in DataLoader(ev, batch_size=64)])
    with torch.no_grad():
        t_logp = F.log_softmax(teacher.model.eval()(x), 1)
    n_slots, layout = len(d.slots), layout_for(cfg.profile)
    stems: dict = {}                 # stem at int8? → its output
    cache: OrderedDict = OrderedDict()
    size: dict = {}
    int8_parts: dict = {}
    calib: list = []                 # [images, [slot inputs per batch]] once an int8 part asks

    def calib_inputs(first: int) -> list:
        if not calib:
            images = eval_batches(data_splits(cfg, teacher.data_config, train_augment=False).train,
                                  cfg.profile.calib_images, cfg.score.batch_size)
            with torch.no_grad():
                calib[:] = [images, [capture(d, b)[0] for b in images]]
        return calib[0] if first < 0 else [a[first] for a in calib[1]]

    def int8(key, module, first: int):
        if key not in int8_parts:
            quantizable = any(isinstance(m, QUANT_LAYERS) for m in module.modules())
            int8_parts[key] = (simulated_int8(module, calib_inputs(first), cfg.profile.calib_method, layout)
                               if quantizable else module).eval()
        return int8_parts[key]

    def module_of(o: Option):
        m = modules.get((o.first, o.last, o.op))
        if m is None and o.op == "keep":
            m = span_teacher(d, o.first, o.last)
        if m is None:
            raise KeyError(f"no distilled weights for {o.first}-{o.last} {o.op}")
        return int8((o.first, o.last, o.op), m, o.first) if o.precision == "int8" else m.eval()

    def stem_out(at_int8: bool):
        if at_int8 not in stems:
            with torch.no_grad():
                stems[at_int8] = (int8("stem", d.stem, -1) if at_int8 else d.stem.eval())(x)
        return stems[at_int8]

    def evaluate(choices: list[Option]) -> float:
        fixed = {o.op: o.precision == "int8" for o in choices if o.op in ("stem", "head") and
                 (o.first < 0 or o.first >= n_slots)}
        blocks = sorted((o for o in choices if 0 <= o.first < n_slots), key=lambda o: o.first)
        root = fixed.get("stem", False)
        keys = tuple((o.first, o.last, o.op, o.precision) for o in blocks)
        k = len(keys)
        while k and (root, keys[:k]) not in cache:
            k -= 1
        h = cache[(root, keys[:k])] if k else stem_out(root)
        for j in range(k, 0, -1):              # the whole chain stays warm, not just its tip
            cache.move_to_end((root, keys[:j]))
        with torch.no_grad():
            for i in range(k, len(keys)):
                h = module_of(blocks[i])(h)
                cache[(root, keys[:i + 1])] = h
                size[(root, keys[:i + 1])] = h.numel() * 4
            head = int8("head", d.head, n_slots) if fixed.get("head") else d.head.eval()
            logp = F.log_softmax(head(h), 1)
        while cache and sum(size.values()) > cache_bytes:
            old, _ = cache.popitem(last=False)
            size.pop(old)
        return float(F.kl_div(logp, t_logp, log_target=True, reduction="sum")) / x.shape[0]

    return evaluate


__all__ = ["Move", "refine", "exclusions", "composed_kl"]
