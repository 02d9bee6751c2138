"""Does the search's score predict the composed student? Predicted vs measured KL per budget.

    .venv/bin/python benchmarks/composition.py RUN [RUN ...] [--speedups 1.8,2.2,2.6,3.0]
        [--samples 12] [--variants plain,stage1] [--out DIR]

For each finished phase 1 (score + profile done) and each asked speedup, students are drawn at that
budget: the ILP's own pick, then `--samples` more, each the ILP's pick under scores perturbed by
log-normal noise (σ = `--sigma`) — different students of about the same latency, the population the
search chooses from. Each is assembled from the distilled candidates at the chosen precisions
(int8 parts, an int8 stem and head included, in the layout's simulated int8, calibrated as their
swap-one scores were: `search.refine.composed_kl`; `--fp32` composes every part in fp32, which
measures composition without quantization) and its KL to the teacher is measured on the run's
eval split — the composed score — beside the additive prediction the ILP maximises (Σ swap-one
KL). `--int8x 1.3,1.5` asks budgets in units of plain int8's speed, as the search's `int8x=`. Per budget: Spearman of predicted vs measured over the samples, the
ratio measured / predicted, the ILP pick's measured KL and rank, and the best sample's.

Variants are search settings compared at each budget: `plain` (the default ILP), `stage1` (at
most one skip per stage of the teacher, `search.max_skips_per_stage = 1`), `noskip` (no block
dropped). Writes composition.json and composition.png to --out (default RUN/composition).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def variant_problem(problem, variant: str, stages: list[str]):
    from hant_trt.search.limits import skips_per_stage

    if variant == "plain":
        return problem
    if variant == "stage1":
        return replace(problem, at_most=skips_per_stage(problem.options, stages, 1))
    if variant == "noskip":
        return replace(problem, options=[o for o in problem.options if o.op != "skip"])
    raise SystemExit(f"error: unknown variant {variant!r} (plain, stage1, noskip)")


def describe(choices) -> str:
    out = []
    for o in sorted(choices, key=lambda o: o.first):
        if o.op == "keep":
            continue
        where = f"{o.first}" if o.first == o.last else f"{o.first}-{o.last}"
        out.append(f"{where}:{o.op}")
    return " ".join(out) or "(nothing replaced)"


def draw(problem, n: int, sigma: float, seed: int):
    """The ILP's pick, then up to n distinct picks under perturbed scores (same budget)."""
    from hant_trt.errors import UserError
    from hant_trt.search.ilp import solve

    rng = random.Random(seed)
    seen, out = set(), []
    for i in range(n + 1):
        p = problem if i == 0 else replace(problem, options=[
            replace(o, score=o.score * math.exp(rng.gauss(0.0, sigma))) for o in problem.options])
        try:
            sol = solve(p, "cbc", 30.0)
        except UserError as exc:
            if i == 0:
                raise
            print(f"  sample {i}: {exc}", flush=True)
            continue
        key = tuple(sorted(o.key for o in sol.choices))
        if key in seen:
            continue
        seen.add(key)
        # predicted as the unperturbed objective scores it
        by_key = {o.key: o for o in problem.options}
        pred = -sum(by_key[o.key].score for o in sol.choices)
        out.append((sol, pred, i == 0))
    return out


def main() -> None:
    from quality_lite0 import spearman

    from hant_trt.config import from_dict
    from hant_trt.runfiles import TEACHER
    from hant_trt.search.limits import read_stages
    from hant_trt.search.refine import composed_kl
    from hant_trt.search.tables import build_problem, load_tables, read_n_slots, select_devices

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="*")
    ap.add_argument("--speedups", default="1.8,2.2,2.6,3.0")
    ap.add_argument("--int8x", default="", help="budgets as multiples of plain int8's speed (int8x=N)")
    ap.add_argument("--fp32", action="store_true", help="compose int8 picks as their fp32 modules (the old measure)")
    ap.add_argument("--samples", type=int, default=12)
    ap.add_argument("--sigma", type=float, default=0.5)
    ap.add_argument("--variants", default="plain,stage1")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None)
    ap.add_argument("--analyse", metavar="JSON", default=None,
                    help="re-read a composition.json (no evaluation): fit and plot only")
    a = ap.parse_args()
    if a.analyse:
        results = json.loads(Path(a.analyse).read_text())
        out = Path(a.out) if a.out else Path(a.analyse).parent
        out.mkdir(parents=True, exist_ok=True)
        summarise(results)
        plot(results, out / "composition.png")
        return
    if not a.runs:
        ap.error("give at least one run directory (or --analyse JSON)")
    out = Path(a.out) if a.out else Path(a.runs[0]) / "composition"
    out.mkdir(parents=True, exist_ok=True)
    budgets = ([(f"speedup={s}", float(s)) for s in a.speedups.split(",") if s]
               + [(f"int8x={s}", float(s)) for s in a.int8x.split(",") if s])
    variants = [v for v in a.variants.split(",") if v]
    results = []
    t0 = time.time()
    for run_dir in a.runs:
        root = Path(run_dir)
        cfg = from_dict(json.loads((root / "run.json").read_text())["config"])
        tables = load_tables(root, "kl")
        n_slots = read_n_slots(root / TEACHER)
        stages = read_stages(root / TEACHER)
        device = select_devices(tables.fixed, None)[0]
        evaluate = composed_kl(root, cfg)
        for ask, s in budgets:
            base = build_problem(tables, n_slots, ask, [device])
            for v in variants:
                p = variant_problem(base, v, stages)
                try:
                    drawn = draw(p, a.samples, a.sigma, a.seed)
                except Exception as exc:        # an unreachable budget is a finding
                    print(f"{root.name} {ask} {v}: {str(exc).splitlines()[0]}", flush=True)
                    continue
                rows = []
                for sol, pred, is_ilp in drawn:
                    kl = (evaluate([replace(o, precision="fp32") for o in sol.choices]) if a.fp32
                          else evaluate(sol.choices + sol.fixed_choices))
                    if not a.fp32:
                        pred -= sum(o.score for o in sol.fixed_choices)    # the int8 stem / head's swap-one KL
                    rows.append({"ilp": is_ilp, "predicted_kl": round(pred, 5), "measured_kl": round(kl, 5),
                                 "predicted_speedup": round(tables.fixed[device].teacher_s / sol.predicted_s[device], 3),
                                 "skips": sum(o.op == "skip" for o in sol.choices),
                                 "spans": sum(o.last > o.first for o in sol.choices),
                                 "replaced": sum(o.op != "keep" for o in sol.choices),
                                 "choices": describe(sol.choices)})
                pr = [r["predicted_kl"] for r in rows]
                me = [r["measured_kl"] for r in rows]
                ilp = rows[0]
                rank = sorted(me).index(ilp["measured_kl"]) + 1
                rho = spearman(pr, me) if len(rows) >= 3 else float("nan")
                res = {"run": root.name, "speedup": s, "budget": ask, "fp32": a.fp32, "variant": v, "n": len(rows),
                       "spearman": None if math.isnan(rho) else rho,
                       "ratio_median": sorted(m / p_ for m, p_ in zip(me, pr) if p_ > 0)[len(rows) // 2]
                       if any(p_ > 0 for p_ in pr) else None,
                       "ilp_predicted": ilp["predicted_kl"], "ilp_measured": ilp["measured_kl"], "ilp_rank": rank,
                       "best_measured": min(me), "best_choices": rows[me.index(min(me))]["choices"],
                       "ilp_choices": ilp["choices"], "rows": rows}
                results.append(res)
                sp = f"{res['spearman']:+.2f}" if res["spearman"] is not None else "  n/a"
                print(f"{root.name:>10} {ask} {v:<7} n={len(rows):2d} spearman {sp} "
                      f"measured/predicted {res['ratio_median'] or float('nan'):5.2f}  ILP pred {ilp['predicted_kl']:.3f} "
                      f"→ meas {ilp['measured_kl']:.3f} (rank {rank}/{len(rows)}), best {min(me):.3f}  "
                      f"[{ilp['skips']} skips, {ilp['spans']} spans, {ilp['replaced']} replaced]  "
                      f"{time.time() - t0:.0f} s", flush=True)
                print(f"{'':>17} ILP: {ilp['choices']}", flush=True)
    (out / "composition.json").write_text(json.dumps(results, indent=1))
    summarise(results)
    plot(results, out / "composition.png")
    print(f"wrote {out / 'composition.json'} and {out / 'composition.png'}")


def fit_compounding(points: list[tuple[float, float]]) -> tuple[float, float]:
    """(a, c) of measured ≈ a × predicted + c × predicted², least squares in relative error: the
    extra KL that replacements cost together grows with how much is replaced."""
    import numpy as np

    p = np.array([x for x, _ in points])
    m = np.array([y for _, y in points])
    A = np.stack([p, p * p], 1) / m[:, None]
    a, c = np.linalg.lstsq(A, np.ones_like(m), rcond=None)[0]
    return float(a), float(c)


def compounded(p: float, fit: tuple[float, float]) -> float:
    return fit[0] * p + fit[1] * p * p


def summarise(results: list[dict]) -> None:
    """Per budget: relative error of the additive prediction and of the compounding fit, the fit
    made without that budget's students (leave-one-budget-out)."""
    budgets = sorted({r.get("budget", r["speedup"]) for r in results}, key=str)
    every = [(x["predicted_kl"], x["measured_kl"]) for r in results for x in r["rows"] if x["predicted_kl"] > 0]
    a, c = fit_compounding(every)
    print(f"\ncompounding fit over all {len(every)} students: measured ≈ {a:.2f} × predicted + {c:.2f} × predicted²")
    for b in budgets:
        here = [(x["predicted_kl"], x["measured_kl"]) for r in results if r.get("budget", r["speedup"]) == b
                for x in r["rows"] if x["predicted_kl"] > 0]
        rest = [(x["predicted_kl"], x["measured_kl"]) for r in results if r.get("budget", r["speedup"]) != b
                for x in r["rows"] if x["predicted_kl"] > 0]
        if not here:
            continue
        if not rest:        # one budget: nothing to fit the compounding on
            add = sum(abs(p - m) / m for p, m in here) / len(here)
            print(f"  {b}: {len(here):2d} students, additive error {100 * add:5.1f} %")
            continue
        f = fit_compounding(rest)
        add = sum(abs(p - m) / m for p, m in here) / len(here)
        fit = sum(abs(compounded(p, f) - m) / m for p, m in here) / len(here)
        print(f"  {b}: {len(here):2d} students, additive error {100 * add:5.1f} %, compounding fit "
              f"({f[0]:.2f}·p + {f[1]:.2f}·p², fitted on the other budgets) {100 * fit:5.1f} %")


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    keys = sorted({(r["run"], r["variant"]) for r in results})
    markers = "os^vD<>p"
    for i, key in enumerate(keys):
        rs = [r for r in results if (r["run"], r["variant"]) == key]
        for r in rs:
            pr = [x["predicted_kl"] for x in r["rows"]]
            me = [x["measured_kl"] for x in r["rows"]]
            ax.scatter(pr, me, s=14, marker=markers[i % len(markers)], alpha=0.6, color=f"C{i}",
                       label=f"{key[0]} {key[1]}" if r is rs[0] else None)
    lim = max([x["measured_kl"] for r in results for x in r["rows"]] + [1e-3])
    ax.plot([0, lim], [0, lim], color="gray", lw=0.8, ls="--")
    ax.set_xlabel("predicted KL (Σ swap-one, what the ILP minimises)")
    ax.set_ylabel("measured KL of the composed student (eval split)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
