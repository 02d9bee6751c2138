"""`search` stage: scores.csv + latency.csv + latency_fixed.json → ILP → solution.json
(+ with a sweep: pareto.json, pareto.png)."""

from __future__ import annotations

import json
from dataclasses import dataclass

from .. import atomic
from ..errors import UserError
from ..rundir import RunDir, file_hash, stage_fingerprint, without_defaults
from ..runfiles import (FIXED_SCORES, INTERACTIONS, LATENCY, LATENCY_FIXED, PARETO_JSON, PARETO_PNG, SCORES,
                        SOLUTION, TEACHER)
from .budget import is_int8x
from .ilp import Problem, Solution, solve
from .limits import excluded, read_stages, skips_per_stage
from .sweep import pareto_sweep, plot_pareto
from .tables import Tables, build_problem, canonical_metric, load_tables, read_n_slots, select_devices

INPUTS = (SCORES, LATENCY, LATENCY_FIXED, TEACHER)
_OMITTED_AT_DEFAULT = {"calibrate_rounds": 0, "refine_sweeps": 0, "refine_moves": "both", "refine_judge": "kl",
                       "judge_steps": 150, "skip_weight": 1.0,
                       "interactions": "none",
                       "max_skips_per_stage": None, "exclude": None}


def search_fingerprint(run: RunDir, cfg) -> str:
    """Hash of the search settings and of the bytes of every input table."""
    search = without_defaults(dict(vars(cfg.search)), _OMITTED_AT_DEFAULT)
    if not _judges_by_finetune(cfg):
        search.pop("judge_confirm", None)               # read by the fine-tune judge only
    inputs = INPUTS
    if (run.root / FIXED_SCORES).is_file():            # runs without it keep their fingerprints
        inputs += (FIXED_SCORES,)
    settings = {"search": search}
    if _judges_by_finetune(cfg):                       # the pick then depends on how the build trains
        from .judge import training_settings

        settings["build"] = training_settings(cfg)
    return stage_fingerprint(settings, files={f: run.root / f for f in inputs})


def _judges_by_finetune(cfg) -> bool:
    return getattr(cfg.search, "refine_sweeps", 0) > 0 and getattr(cfg.search, "refine_judge", "kl") == "finetune"


def run_search(run: RunDir, cfg) -> Solution:
    """Solve the selection for `cfg.search` over the run's tables and write solution.json (and, with
    cfg.search.sweep = N > 0, pareto.json + pareto.png for N budgets). Skipped when run.json says
    the stage is done with the same settings and input files. Raises UserError on an infeasible
    budget (naming the smallest reachable latency), unreadable tables or unknown settings."""
    c = cfg.search
    fp = search_fingerprint(run, cfg)
    sol_path = run.root / SOLUTION
    if run.is_done("search", fp) and sol_path.is_file() and (not c.sweep or (run.root / PARETO_JSON).is_file()):
        return Solution.from_dict(json.loads(sol_path.read_text()))
    run.require("score")
    run.require("profile")
    sweep_n = int(c.sweep or 0)
    if sweep_n < 0:
        raise UserError(f"search sweep must be ≥ 0 budgets, got {sweep_n}")
    posed = pose(run, cfg)
    run.set_stage("search", "running", fp)
    try:
        sol, info = solve_posed(run, cfg, posed)
        problem, metric = posed.problem, posed.metric
        teacher = sol.teacher_s[sol.device]
        if sweep_n > 0:
            points, skipped = pareto_sweep(problem, sweep_n, sol.device, c.solver, c.time_limit)
            atomic.write_json(run.root / PARETO_JSON, [p.to_dict() for p in points])
            plot_pareto(points, run.root / PARETO_PNG, chosen=sol, teacher_s=teacher, metric=metric)
            info.update(sweep_points=len(points), sweep_infeasible=skipped)
        atomic.write_json(sol_path, sol.to_dict())
    except BaseException:
        # not done: the next call solves again (nothing else of the run is touched)
        run.set_stage("search", "pending", fp)
        raise
    run.set_stage("search", "done", fp, info)
    return sol


@dataclass
class Posed:
    """A run's selection problem as `cfg.search` poses it, ready to solve."""

    problem: Problem
    tables: Tables
    metric: str
    devices: list


def pose(run: RunDir, cfg) -> Posed:
    """The ILP for `cfg.search` over the run's tables, with its interaction terms and limits; UserError
    for a budget slower than the teacher or unknown settings. Nothing is written but
    interactions.json (a cache)."""
    c = cfg.search
    metric = canonical_metric(c.metric)
    tables = load_tables(run.root, metric, getattr(c, "skip_weight", 1.0))
    n_slots = read_n_slots(run.root / TEACHER)
    devices = select_devices(tables.fixed, getattr(c, "devices", None))
    problem = build_problem(tables, n_slots, c.budget, devices, getattr(c, "max_params", None),
                            getattr(c, "max_macs", None), getattr(c, "latency_model", "scale"))
    for d in devices:
        teacher_s = tables.fixed[d].teacher_s
        if teacher_s and problem.budget_s[d] > teacher_s:
            raise UserError(f"budget '{c.budget}' is {problem.budget_s[d] * 1e3:.3f} ms, slower than the teacher's "
                            f"{teacher_s * 1e3:.3f} ms on {d}: the teacher itself meets it; ask for less")
    interactions = getattr(c, "interactions", "none")
    if interactions not in ("none", "skip"):
        raise UserError(f"search.interactions must be none or skip, not '{interactions}'")
    if interactions == "skip":
        if metric != "kl":
            raise UserError("search.interactions = \"skip\" measures pairs in KL: set search.metric = \"kl\"")
        problem.pairs = skip_pair_terms(run.root, cfg, tables, n_slots)
    if getattr(c, "exclude", None):
        out = {o.key for o in excluded(problem.options, c.exclude)}
        problem.options = [o for o in problem.options if o.key not in out]
    if getattr(c, "max_skips_per_stage", None) is not None:
        problem.at_most = skips_per_stage(problem.options, read_stages(run.root / TEACHER), c.max_skips_per_stage)
    return Posed(problem, tables, metric, devices)


def solve_posed(run: RunDir, cfg, posed: Posed) -> tuple[Solution, dict]:
    """The solution of `posed` as the search stage finds it (the solver, then engine calibration
    and composition refinement where `cfg.search` asks for them) and the stage's info about it."""
    c, problem, tables, devices = cfg.search, posed.problem, posed.tables, posed.devices
    calibration, refinements, beside_int8 = None, [], False
    solve_fn = lambda p: solve(p, c.solver, c.time_limit)  # noqa: E731
    if getattr(c, "refine_sweeps", 0) > 0:
        solve_fn = _refining(solve_fn, run, cfg, refinements)
    if getattr(c, "calibrate_rounds", 0) > 0:
        from ..latency.backends import profiled_threads
        from .calibrate import calibrated_solve, engine_measure

        fixed = tables.fixed[devices[0]]
        beside_int8 = is_int8x(str(c.budget)) and bool(fixed.teacher_int8_s)
        measure = engine_measure(cfg, fixed.teacher_int8_s if beside_int8 else fixed.teacher_s,
                                 threads=profiled_threads(run), beside_int8=beside_int8)
        sol, calibration = calibrated_solve(problem, devices[0], solve_fn, measure, c.calibrate_rounds)
    else:
        sol = solve_fn(problem)
    sol.device, sol.metric, sol.budget = devices[0], posed.metric, str(c.budget)
    sol.teacher_s = {d: tables.fixed[d].teacher_s for d in devices}
    info = {"predicted_ms": sol.predicted_s[sol.device] * 1e3, "score": sol.score, "status": sol.status,
            "solver": sol.solver, "solve_seconds": round(sol.solve_seconds, 4), "n_variables": sol.n_variables,
            "dropped_rows": tables.dropped}
    if calibration is not None:
        info["calibration"] = [r.to_dict() for r in calibration]
        info["calibrated_beside"] = "teacher int8" if beside_int8 else "teacher"
    if refinements:
        info["refine"] = refinements[-1] if len(refinements) == 1 else refinements
    if problem.junction_mixed_s:     # what the profile's float islands made of the int8 model
        info["mixed_junction_us"] = [round(c.get(sol.device, 0.0) * 1e6, 1) for c in problem.junction_mixed_s]
    teacher = sol.teacher_s[sol.device]
    info["predicted_speedup"] = teacher / sol.predicted_s[sol.device] if sol.predicted_s[sol.device] else None
    return sol, info


def skip_pair_terms(root, cfg, tables, n_slots: int) -> list:
    """Interaction terms for every pair of skips (`search/pairs.py`), measured once per set of
    inputs: interactions.json holds them with the fingerprint of the tables they came from."""
    import sys

    from .pairs import pair_terms, skip_pairs
    from .refine import composed_kl

    path = root / INTERACTIONS
    key = {f: file_hash(root / f) for f in INPUTS}
    if path.is_file():
        try:
            doc = json.loads(path.read_text())
            if doc.get("inputs") == key:
                return pair_terms(doc["pairs"], tables.options)
        except (json.JSONDecodeError, KeyError, TypeError):
            pass                                    # unreadable: measured again
    measured = skip_pairs(tables.options, composed_kl(root, cfg), n_slots,
                          progress=lambda line: print(line, file=sys.stderr, flush=True))
    atomic.write_json(path, {"inputs": key, "pairs": measured})
    return pair_terms(measured, tables.options)


def _refining(solve_fn, run: RunDir, cfg, log: list):
    """solve_fn followed by composition refinement (`search.refine_sweeps`); each refinement's
    info is appended to `log`. The evaluator (torch, the distilled weights) is made once: the
    composed KL, or with `search.refine_judge = "finetune"` the build's eval objective after a short
    fine-tune (`judge.py`), which judges exclusion moves only (swaps would be hundreds of fine-tunes)."""
    import sys

    from .refine import MIN_GAIN, composed_kl, refine

    moves = getattr(cfg.search, "refine_moves", "both")
    if _judges_by_finetune(cfg):
        from .judge import confirmation_seeds, confirmer, finetuned_objective

        if moves == "swap":
            raise UserError('search.refine_judge = "finetune" judges exclusion moves only: set search.refine_moves '
                            'to "exclude" (or "both")')
        evaluate, moves = finetuned_objective(run.root, cfg, cfg.search.judge_steps), "exclude"
        # only parts that change an operation: excluding an int8 `keep` puts one block back at the
        # base precision, rarely better and one fine-tune each (Lite1: 18 parts, 8 of them ops)
        excludable, measure = (lambda o: o.op != "keep"), "judge objective"  # noqa: E731
        n = cfg.search.judge_confirm
        confirm = confirmer(evaluate, confirmation_seeds(cfg, n), MIN_GAIN) if n > 0 else None
    else:
        evaluate, excludable, measure, confirm = composed_kl(run.root, cfg), None, "KL", None

    def solve_and_refine(p):
        sol, info = refine(p, solve_fn(p), evaluate, cfg.search.refine_sweeps,
                           progress=lambda line: print(line, file=sys.stderr, flush=True),
                           resolve=solve_fn if moves in ("both", "exclude") else None,
                           movable=(lambda o: False) if moves == "exclude" else None, excludable=excludable,
                           measure=measure, confirm=confirm)
        info["judge"] = getattr(cfg.search, "refine_judge", "kl")
        log.append(info)
        return sol

    return solve_and_refine


def format_table(solution: Solution | dict) -> str:
    """The selection as text for the CLI: slot, chosen op, precision, predicted ms, score and its
    share of the total score, then one summary line. Accepts a Solution or solution.json's dict."""
    sol = solution if isinstance(solution, Solution) else Solution.from_dict(solution)
    dev = sol.primary
    total = sol.score
    rows = [("slot", "op", "precision", "pred ms", "score", "share")]
    fixed = sorted(sol.fixed_choices, key=lambda o: o.first)
    for o in fixed[:1] + list(sol.choices) + fixed[1:]:
        slot = ("-" if o.op in ("stem", "head") else str(o.first) if o.first == o.last
                else f"{o.first}-{o.last}")
        share = f"{100 * o.score / total + 0.0:.0f}%" if total else "-"  # + 0.0: no "-0%"
        lat = o.latency_s.get(dev)
        rows.append((slot, o.op, o.precision, f"{lat * 1e3:.4f}" if lat is not None else "-", f"{o.score:.3f}", share))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in rows]
    for d in sorted(sol.predicted_s, key=lambda d: d != dev):
        pred, budget, teacher = sol.predicted_s[d], sol.budget_s.get(d), sol.teacher_s.get(d)
        text = f"{d}: predicted {pred * 1e3:.4f} ms"
        if budget is not None:
            text += f" (budget {budget * 1e3:.4f} ms"
            text += f", teacher {teacher * 1e3:.4f} ms, speedup {teacher / pred:.2f}x)" if teacher and pred else ")"
        lines.append(text)
    lines.append(f"score {sol.score:.3f}{' (' + sol.metric + ')' if sol.metric else ''}, params {sol.params:,}, "
                 f"MACs {sol.macs:,}; {sol.solver} {sol.status} in {sol.solve_seconds:.2f}s "
                 f"({sol.n_variables} of {sol.n_options} options after pruning)")
    return "\n".join(lines)


__all__ = ["run_search", "pose", "solve_posed", "Posed", "format_table", "search_fingerprint", "SOLUTION", "PARETO_JSON", "PARETO_PNG", "INTERACTIONS"]
