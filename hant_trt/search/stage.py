"""`search` stage: tables → ILP → solution.json (+ Pareto sweep: pareto.json, pareto.png)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict

from .. import atomic
from ..rundir import RunDir, fingerprint
from .ilp import Problem, Solution, min_latency, solve
from .tables import load_options, parse_budget


def _file_hash(p) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()[:16] if p.exists() else ""


def solution_dict(sol: Solution, teacher_s: dict) -> dict:
    dev = sorted(sol.predicted_s)[0]
    return {
        "status": sol.status, "solver": sol.solver, "solve_seconds": round(sol.solve_seconds, 4),
        "score": sol.score, "budget_s": sol.budget_s, "predicted_s_by_device": sol.predicted_s,
        "predicted_s": sol.predicted_s[dev], "device": dev, "teacher_s": teacher_s.get(dev),
        "predicted_speedup": (teacher_s.get(dev) or 0) / sol.predicted_s[dev] if sol.predicted_s[dev] else None,
        "choices": [{"first": o.first, "last": o.last, "op": o.op, "precision": o.precision,
                     "signature": o.signature, "predicted_s": o.latency_s.get(dev), "score": o.score}
                    for o in sol.choices],
    }


def sweep(problem: Problem, n: int, hi_s: dict, solver: str, time_limit: float) -> list[dict]:
    """Solve for n budgets evenly spaced from the smallest reachable latency to `hi_s`."""
    dev = sorted(problem.budget_s)[0]
    lo = min_latency(problem, dev)
    hi = max(hi_s[dev], lo)
    points = []
    for i in range(n):
        b = lo + (hi - lo) * i / max(1, n - 1)
        p = Problem(problem.n_slots, problem.options, {dev: b * (1 + 1e-9)}, problem.fixed_s,
                    problem.max_params, problem.max_macs)
        s = solve(p, solver, time_limit)
        points.append({"budget_s": b, "predicted_s": s.predicted_s[dev], "score": s.score,
                       "choices": [[o.first, o.last, o.op, o.precision] for o in s.choices]})
    return points


def plot_pareto(points: list[dict], chosen: dict, teacher_s: float | None, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([p["predicted_s"] * 1e3 for p in points], [p["score"] for p in points], "o-", label="frontier")
    ax.plot([chosen["predicted_s"] * 1e3], [chosen["score"]], "r*", ms=14, label="chosen")
    if teacher_s:
        ax.plot([teacher_s * 1e3], [0.0], "ks", label="teacher")
    ax.set_xlabel("predicted latency (ms)")
    ax.set_ylabel("predicted score (sum over slots)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    atomic.write_with(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)


def run_search(run: RunDir, cfg) -> dict:
    c = cfg.search
    files = [run.root / f for f in ("scores.csv", "latency.csv", "latency_fixed.json")]
    fp = fingerprint({"search": c, "inputs": [_file_hash(f) for f in files]})
    if run.is_done("search", fp) and (run.root / "solution.json").exists():
        return json.loads((run.root / "solution.json").read_text())
    run.require("score")
    run.require("profile")
    options, fixed = load_options(run.root, c.metric)
    n = len(json.loads((run.root / "teacher.json").read_text())["slots"])
    teacher_s = {d: v["teacher_s"] for d, v in fixed.items()}
    budget = {d: parse_budget(c.budget, teacher_s[d]) for d in fixed}
    fixed_s = {d: v["stem_s"] + v["head_s"] + v["correction_s"] for d, v in fixed.items()}
    problem = Problem(n, options, budget, fixed_s)
    run.set_stage("search", "running", fp)
    sol = solve(problem, c.solver, c.time_limit)
    out = solution_dict(sol, teacher_s)
    out["budget"] = c.budget
    out["metric"] = c.metric
    if c.sweep and c.sweep > 1:
        pts = sweep(problem, c.sweep, teacher_s, c.solver, c.time_limit)
        atomic.write_json(run.path("pareto.json"), pts)
        plot_pareto(pts, out, out["teacher_s"], run.path("pareto.png"))
    atomic.write_json(run.path("solution.json"), out)
    run.set_stage("search", "done", fp, {"predicted_ms": out["predicted_s"] * 1e3,
                                         "predicted_speedup": out["predicted_speedup"], "score": out["score"]})
    return out


def format_table(sol: dict) -> str:
    total = sum(c["score"] for c in sol["choices"]) or 0.0
    rows = [("slot", "op", "precision", "pred ms", "score", "share")]
    for ch in sol["choices"]:
        slot = str(ch["first"]) if ch["first"] == ch["last"] else f"{ch['first']}-{ch['last']}"
        share = f"{100 * ch['score'] / total:.0f}%" if total else "-"
        rows.append((slot, ch["op"], ch["precision"], f"{(ch['predicted_s'] or 0) * 1e3:.4f}",
                     f"{ch['score']:.3f}", share))
    w = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(v.ljust(k) for v, k in zip(r, w)).rstrip() for r in rows]
    lines.append(f"predicted {sol['predicted_s'] * 1e3:.4f} ms (budget {sol['budget_s'][sol['device']] * 1e3:.4f} ms,"
                 f" teacher {(sol['teacher_s'] or 0) * 1e3:.4f} ms, speedup {sol['predicted_speedup'] or 0:.2f}x),"
                 f" score {sol['score']:.3f}, {sol['solver']} {sol['status']} in {sol['solve_seconds']:.2f}s")
    return "\n".join(lines)


__all__ = ["run_search", "format_table", "asdict"]
