"""report.html + PNGs: Pareto frontier with the chosen point and the teacher, per-slot choices,
predicted vs measured latency, accuracy table."""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from pathlib import Path

from .. import atomic


@dataclass
class ReportData:
    teacher_name: str
    teacher_latency_s: float
    student_latency_s: float
    accuracy: dict
    solution: dict
    pareto: list = field(default_factory=list)
    slot_latency_s: dict = field(default_factory=dict)   # first -> teacher keep latency (s)


def _plots(out: Path, d: ReportData) -> list[tuple[str, str]]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made = []

    def save(fig, name, caption):
        atomic.write_with(out / name, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
        plt.close(fig)
        made.append((name, caption))

    if d.pareto:
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot([p["predicted_s"] * 1e3 for p in d.pareto], [p["score"] for p in d.pareto], "o-", label="frontier")
        ax.plot([d.solution["predicted_s"] * 1e3], [d.solution["score"]], "r*", ms=14, label="chosen")
        ax.plot([d.teacher_latency_s * 1e3], [0], "ks", label="teacher (measured)")
        ax.set_xlabel("latency (ms)")
        ax.set_ylabel("predicted score")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        save(fig, "report_pareto.png", "Pareto frontier of the search, the chosen student and the teacher")
    ch = d.solution.get("choices", [])
    if ch:
        fig, ax = plt.subplots(figsize=(max(6, 0.5 * len(ch)), 4))
        xs = list(range(len(ch)))
        pred = [(c.get("predicted_s") or 0) * 1e3 for c in ch]
        teach = [d.slot_latency_s.get(c["first"], 0) * 1e3 for c in ch]
        ax.bar([x - 0.2 for x in xs], teach, 0.4, label="teacher block")
        ax.bar([x + 0.2 for x in xs], pred, 0.4, label="chosen op")
        ax.set_xticks(xs)
        ax.set_xticklabels([f"{c['first']}" + (f"-{c['last']}" if c["last"] != c["first"] else "") + f"\n{c['op']}"
                            for c in ch], rotation=60, fontsize=6, ha="right")
        ax.set_ylabel("latency (ms)")
        ax.legend()
        fig.tight_layout()
        save(fig, "report_choices.png", "Per-slot choice: latency of the teacher's block vs the chosen op")
    fig, ax = plt.subplots(figsize=(5, 3.5))
    labels = ["teacher (measured)", "student predicted", "student measured"]
    vals = [d.teacher_latency_s * 1e3, d.solution.get("predicted_s", 0) * 1e3, d.student_latency_s * 1e3]
    ax.bar(labels, vals, color=["gray", "tab:blue", "tab:orange"])
    ax.set_ylabel("latency (ms)")
    fig.tight_layout()
    save(fig, "report_latency.png", "Predicted vs measured latency")
    return made


def _table(rows: list[tuple]) -> str:
    head, *body = rows
    h = "".join(f"<th>{html.escape(str(c))}</th>" for c in head)
    b = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in body)
    return f"<table><tr>{h}</tr>{b}</table>"


def write_report(out_dir: str | Path, d: ReportData) -> Path:
    out = Path(out_dir)
    plots = _plots(out, d)
    acc = d.accuracy
    speed = d.teacher_latency_s / d.student_latency_s if d.student_latency_s else float("nan")
    summary = [("", "teacher", "student"),
               ("latency (ms, measured)", f"{d.teacher_latency_s * 1e3:.3f}", f"{d.student_latency_s * 1e3:.3f}"),
               ("speedup", "1.00x", f"{speed:.2f}x"),
               ("top-1 agreement with teacher", "100%", f"{acc.get('agreement', float('nan')):.1f}%")]
    if acc.get("student_top1") is not None:
        summary.append(("top-1 accuracy", f"{acc['teacher_top1']:.1f}%", f"{acc['student_top1']:.1f}%"))
    choices = [("slot", "op", "precision", "predicted ms", "score")] + [
        (f"{c['first']}" + (f"-{c['last']}" if c["last"] != c["first"] else ""), c["op"], c["precision"],
         f"{(c.get('predicted_s') or 0) * 1e3:.4f}", f"{c['score']:.3f}") for c in d.solution.get("choices", [])]
    imgs = "".join(f'<figure><img src="{html.escape(n)}" alt="{html.escape(c)}"><figcaption>{html.escape(c)}'
                   f"</figcaption></figure>" for n, c in plots)
    doc = f"""<!doctype html><html><head><meta charset="utf-8"><title>hant-trt report: {html.escape(d.teacher_name)}</title>
<style>body{{font-family:sans-serif;max-width:1000px;margin:2em auto}}table{{border-collapse:collapse;margin:1em 0}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}img{{max-width:100%}}</style></head><body>
<h1>hant-trt: {html.escape(d.teacher_name)} → student</h1>
<h2>Teacher vs student</h2>{_table(summary)}
<p>Search: budget {html.escape(str(d.solution.get('budget', '')))}, metric {html.escape(str(d.solution.get('metric', '')))},
predicted {d.solution.get('predicted_s', 0) * 1e3:.3f} ms on {html.escape(str(d.solution.get('device', '')))}.</p>
{imgs}<h2>Choices</h2>{_table(choices)}</body></html>
"""
    return atomic.write_text(out / "report.html", doc)
