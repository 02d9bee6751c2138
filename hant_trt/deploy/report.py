"""report.html + PNGs for people: the Pareto frontier with the chosen point and the teacher, the
per-slot choices, predicted vs measured latency, the accuracy table.

PNG names carry a `report_` prefix (report_pareto.png, report_choices.png, report_latency.png):
the search stage already owns `pareto.png` in the run directory. Every part is optional: what is
missing (no Pareto sweep, no per-slot teacher latency...) is skipped with a note in the page.
"""

from __future__ import annotations

import csv
import html
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

from .. import __version__, atomic
from ..runfiles import LATENCY, LATENCY_FIXED, PARETO_JSON, SOLUTION, TEACHER

PARETO_PNG, CHOICES_PNG, LATENCY_PNG = "report_pareto.png", "report_choices.png", "report_latency.png"


@dataclass
class SlotChoice:
    """One row of the per-slot chart: slot "3" (or span "3-4"), the teacher's op there, the chosen
    op and precision, predicted latency of the chosen op and measured latency of the teacher's
    block (seconds; None when unknown), and the predicted score change (0 for keep)."""

    slot: str
    teacher_op: str
    op: str
    precision: str = "fp32"
    predicted_s: float | None = None
    teacher_s: float | None = None
    score: float | None = None


@dataclass
class PartLatency:
    """Predicted vs measured latency (seconds) of one part, e.g. "teacher", "student", "stem"."""

    part: str
    predicted_s: float | None
    measured_s: float | None


@dataclass
class ReportData:
    """Everything the report shows. The first seven fields are what `build` has at hand; the rest
    are derived from `solution` / `accuracy` in __post_init__ when left empty.

    teacher_name: timm model name. teacher_latency_s, student_latency_s: measured side by side.
    accuracy: {"agreement": %, "student_top1": %, "teacher_top1": %, ...} (percent, optional keys).
    solution: solution.json as a dict (predicted_s, score, budget_s, device, choices...), or {}.
    pareto: the sweep's points, as (latency_s, score) pairs or dicts with predicted_s and score.
    slot_latency_s: first slot -> measured latency of the teacher's block there (seconds).
    chosen: the chosen (predicted latency_s, score); default from `solution`.
    teacher_point: the teacher on the Pareto plot (latency_s, score); default (teacher latency, 0),
        the score being a sum of per-slot changes relative to the teacher.
    choices: per-slot rows; default from solution["choices"] (teacher_op from a "teacher_op" key).
    parts: predicted vs measured rows; default teacher and student.
    accuracy_rows: (metric, teacher, student) rows; default from `accuracy`.
    notes: extra lines shown at the top.
    """

    teacher_name: str
    teacher_latency_s: float | None
    student_latency_s: float | None
    accuracy: dict = field(default_factory=dict)
    solution: dict = field(default_factory=dict)
    pareto: list = field(default_factory=list)
    slot_latency_s: dict = field(default_factory=dict)
    chosen: tuple[float, float] | None = None
    teacher_point: tuple[float, float] | None = None
    choices: list[SlotChoice] = field(default_factory=list)
    parts: list[PartLatency] = field(default_factory=list)
    accuracy_rows: list[tuple] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def measured_scale(self) -> float:
        """Measured figures × this puts them on the search's scale: the profile's teacher over the
        build's teacher. A profile taken while the machine was busy (or quiet) times everything
        slower (or faster) than the build does minutes later; the ratio to the teacher is what
        both agree on."""
        t_search = (self.solution or {}).get("teacher_s")
        if t_search and self.teacher_latency_s:
            return float(t_search) / float(self.teacher_latency_s)
        return 1.0

    def __post_init__(self) -> None:
        sol = self.solution or {}
        self.pareto = sorted(_point(p) for p in self.pareto)
        if self.chosen is None and sol.get("predicted_s") is not None:
            self.chosen = (float(sol["predicted_s"]), float(sol.get("score") or 0.0))
        if self.teacher_point is None:
            t = sol.get("teacher_s") or self.teacher_latency_s
            self.teacher_point = (float(t), 0.0) if t else None
        if not self.choices:
            slot_s = {int(k): v for k, v in self.slot_latency_s.items()}
            self.choices = [SlotChoice(slot=_slot(c["first"], c.get("last", c["first"])),
                                       teacher_op=c.get("teacher_op", ""), op=c["op"],
                                       precision=c.get("precision", "fp32"), predicted_s=c.get("predicted_s"),
                                       teacher_s=c.get("teacher_s", slot_s.get(int(c["first"]))),
                                       score=c.get("score"))
                            for c in sol.get("choices", [])]
        if not self.parts:
            if self.teacher_latency_s is not None:
                self.parts.append(PartLatency("teacher", sol.get("teacher_sum_s"), self.teacher_latency_s))
            if self.student_latency_s is not None or sol.get("predicted_s") is not None:
                self.parts.append(PartLatency("student", sol.get("predicted_s"), self.student_latency_s))
        if not self.accuracy_rows:
            a = self.accuracy
            if a.get("agreement") is not None:
                self.accuracy_rows.append(("top-1 agreement with the teacher (%)", 100.0, a["agreement"]))
            if a.get("student_top1") is not None or a.get("teacher_top1") is not None:
                self.accuracy_rows.append(("top-1 accuracy (%)", a.get("teacher_top1"), a.get("student_top1")))
            if a.get("kl") is not None:
                self.accuracy_rows.append(("KL(teacher || student)", 0.0, a["kl"]))
            if a.get("images") is not None:
                self.accuracy_rows.append(("evaluation images", a["images"], a["images"]))


def _point(p) -> tuple[float, float]:
    if isinstance(p, dict):
        return float(p["predicted_s"]), float(p["score"])
    lat, score = p
    return float(lat), float(score)


def _slot(first, last) -> str:
    return f"{first}" if int(last) == int(first) or int(last) < 0 else f"{first}-{last}"


def _ms(s: float | None, digits: int = 3) -> str:
    return "—" if s is None or (isinstance(s, float) and math.isnan(s)) else f"{s * 1e3:.{digits}f}"


def _num(v, digits: int = 2) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


# -- plots ----------------------------------------------------------------------------------------

def _pyplot():
    import matplotlib

    matplotlib.use("Agg")   # no display on build machines; must precede pyplot's import
    import matplotlib.pyplot as plt

    return plt


def _save(plt, fig, path: Path) -> None:
    try:
        atomic.write_with(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    finally:
        plt.close(fig)


def plot_pareto(d: ReportData, path: Path) -> None:
    """Frontier (predicted latency vs predicted score), the chosen point, the teacher, and the
    student's measured latency at the chosen score (the horizontal gap is the prediction error)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    ax.plot([p[0] * 1e3 for p in d.pareto], [p[1] for p in d.pareto], "o-", color="tab:blue", label="Pareto frontier")
    if d.chosen:
        ax.plot([d.chosen[0] * 1e3], [d.chosen[1]], "*", color="tab:red", ms=15, label="chosen (predicted)")
        if d.student_latency_s:
            ax.plot([d.student_latency_s * d.measured_scale * 1e3], [d.chosen[1]], "D", color="tab:orange", ms=7,
                    label="chosen (measured, on the search's scale)")
    if d.teacher_point:
        ax.plot([d.teacher_point[0] * 1e3], [d.teacher_point[1]], "s", color="black", ms=8, label="teacher")
    ax.set_xlabel("latency (ms)")
    ax.set_ylabel("predicted score (change vs teacher)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    _save(plt, fig, path)


def plot_choices(d: ReportData, path: Path) -> None:
    """Per slot: measured latency of the teacher's block next to the predicted latency of the
    chosen op, labelled with the op and precision."""
    plt = _pyplot()
    n = len(d.choices)
    fig, ax = plt.subplots(figsize=(max(6.5, 0.45 * n + 2), 4.5))
    xs = list(range(n))
    nan = float("nan")
    teach = [c.teacher_s * 1e3 if c.teacher_s is not None else nan for c in d.choices]
    chosen = [c.predicted_s * 1e3 if c.predicted_s is not None else nan for c in d.choices]
    ax.bar([x - 0.2 for x in xs], teach, 0.4, color="gray", label="teacher block (measured)")
    ax.bar([x + 0.2 for x in xs], chosen, 0.4, color="tab:blue", label="chosen op (predicted)")
    ax.set_xticks(xs)
    ax.set_xticklabels([f"{c.slot}: {c.op}" + ("" if c.precision == "fp32" else f" [{c.precision}]")
                        for c in d.choices], rotation=60, ha="right", fontsize=7)
    ax.set_xlabel("slot: chosen op")
    ax.set_ylabel("latency (ms)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    _save(plt, fig, path)


def plot_parts(d: ReportData, path: Path) -> None:
    """Predicted vs measured latency per part (bars absent where a figure is unknown)."""
    plt = _pyplot()
    n = len(d.parts)
    fig, ax = plt.subplots(figsize=(max(5.0, 1.2 * n + 2), 3.8))
    xs = list(range(n))
    nan = float("nan")
    ax.bar([x - 0.2 for x in xs], [p.predicted_s * 1e3 if p.predicted_s is not None else nan for p in d.parts],
           0.4, color="tab:blue", label="predicted")
    k = d.measured_scale
    ax.bar([x + 0.2 for x in xs], [p.measured_s * k * 1e3 if p.measured_s is not None else nan for p in d.parts],
           0.4, color="tab:orange", label="measured" if k == 1.0 else f"measured × {k:.2f} (search's scale)")
    ax.set_xticks(xs)
    ax.set_xticklabels([p.part for p in d.parts])
    ax.set_ylabel("latency (ms)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    _save(plt, fig, path)


# -- html -----------------------------------------------------------------------------------------

def _table(head: tuple, rows: list[tuple], caption: str = "") -> str:
    e = html.escape
    h = "".join(f"<th>{e(str(c))}</th>" for c in head)
    b = "".join("<tr>" + "".join(f"<td>{e(str(c))}</td>" for c in r) + "</tr>\n" for r in rows)
    caption = f"<caption>{e(caption)}</caption>" if caption else ""
    return f"<table>{caption}\n<tr>{h}</tr>\n{b}</table>\n"


def _figure(name: str, caption: str) -> str:
    e = html.escape
    return f'<figure><img src="{e(name)}" alt="{e(caption)}"><figcaption>{e(caption)}</figcaption></figure>\n'


_CSS = """body{font-family:system-ui,sans-serif;max-width:1050px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.6em 0 1.4em}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}img{max-width:100%}
figure{margin:1em 0}figcaption{color:#555;font-size:.9em}.note{color:#8a5a00}"""


def write_report(out_dir: str | Path, data: ReportData) -> Path:
    """Write report.html and its PNGs into `out_dir` (atomically, each file) and return the HTML
    path. The page is self-contained apart from the PNGs, which it references by relative name."""
    out = Path(out_dir)
    d = data
    e = html.escape
    notes = list(d.notes)
    if abs(d.measured_scale - 1.0) > 0.05:
        notes.append(f"The profile timed the teacher at {1e3 * d.teacher_latency_s * d.measured_scale:.3f} ms, the "
                     f"build at {1e3 * d.teacher_latency_s:.3f} ms: charts show measured latencies × "
                     f"{d.measured_scale:.2f}, so predictions and measurements share one scale.")
    figs = []
    if d.pareto:
        plot_pareto(d, out / PARETO_PNG)
        figs.append((PARETO_PNG, "Pareto frontier of the search (predicted), the chosen student and the teacher"))
    else:
        notes.append("No Pareto sweep in this run: `hant-trt search --sweep N` draws the frontier.")
    if d.choices:
        plot_choices(d, out / CHOICES_PNG)
        figs.append((CHOICES_PNG, "Per slot: the teacher's block vs the chosen op"))
        if all(c.teacher_s is None for c in d.choices):
            notes.append("No per-slot teacher latency (latency.csv has no keep rows): teacher bars are empty.")
    else:
        notes.append("No per-slot choices (no solution): the choice chart is skipped.")
    if any(p.predicted_s is not None or p.measured_s is not None for p in d.parts):
        plot_parts(d, out / LATENCY_PNG)
        figs.append((LATENCY_PNG, "Predicted vs measured latency"))
    else:
        notes.append("No latency figures: the latency chart is skipped.")

    sol = d.solution or {}
    speed = (d.teacher_latency_s / d.student_latency_s if d.teacher_latency_s and d.student_latency_s else None)
    summary = [("latency, measured (ms)", _ms(d.teacher_latency_s), _ms(d.student_latency_s)),
               ("latency, search-time figure (ms)", _ms(sol.get("teacher_s")), _ms(sol.get("predicted_s"))),
               ("speedup, measured", "1.00x", f"{speed:.2f}x" if speed else "—")]
    parts = [(p.part, _ms(p.predicted_s), _ms(p.measured_s),
              f"{100 * (p.predicted_s - p.measured_s) / p.measured_s:+.1f}%" if p.predicted_s and p.measured_s else "—")
             for p in d.parts]
    choices = [(c.slot, c.teacher_op or "—", c.op, c.precision, _ms(c.teacher_s, 4), _ms(c.predicted_s, 4),
                _ms(c.teacher_s - c.predicted_s, 4) if c.teacher_s is not None and c.predicted_s is not None else "—",
                _num(c.score, 3)) for c in d.choices]
    search = ""
    if sol:
        budget = sol.get("budget_s")
        budget = ", ".join(f"{_ms(v)} ms on {k}" for k, v in budget.items()) if isinstance(budget, dict) else budget
        search = (f"<p>Search: solver {e(str(sol.get('solver', '—')))}, status {e(str(sol.get('status', '—')))}, "
                  f"budget {e(str(budget if budget is not None else '—'))}, device {e(str(sol.get('device', '—')))}, "
                  f"predicted score {e(_num(sol.get('score'), 3))}.</p>\n")
    doc = ["<!doctype html>\n<html><head><meta charset=\"utf-8\">",
           f"<title>hant-trt report: {e(d.teacher_name)}</title><style>{_CSS}</style></head><body>\n",
           f"<h1>hant-trt: {e(d.teacher_name)} → student</h1>\n",
           f"<p>Generated {e(time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime()))} by hant-trt {e(__version__)}.</p>\n"]
    doc += [f'<p class="note">{e(n)}</p>\n' for n in notes]
    doc += ["<h2>Teacher vs student</h2>\n", _table(("", "teacher", "student"), summary), search,
            "<h2>Accuracy</h2>\n",
            _table(("metric", "teacher", "student"), [(m, _num(t), _num(s)) for m, t, s in d.accuracy_rows])
            if d.accuracy_rows else '<p class="note">No accuracy figures.</p>\n',
            "<h2>Latency: predicted vs measured</h2>\n",
            _table(("part", "predicted (ms)", "measured (ms)", "prediction error"), parts)]
    doc += [_figure(n, c) for n, c in figs]
    doc += ["<h2>Per-slot choices</h2>\n",
            _table(("slot", "teacher op", "chosen op", "precision", "teacher (ms)", "chosen, predicted (ms)",
                    "saved (ms)", "score"), choices),
            "</body></html>\n"]
    return atomic.write_text(out / "report.html", "".join(doc))


def report_data_from_run(run_root: str | Path, teacher_latency_s: float | None, student_latency_s: float | None,
                         accuracy: dict, teacher_name: str | None = None) -> ReportData:
    """ReportData from a run directory's files (all optional): solution.json, pareto.json,
    teacher.json (teacher op per slot), latency.csv (keep rows at the profile's base precision =
    teacher block latency),
    latency_fixed.json (stem, head, sum of teacher parts on the solution's device).

    teacher_latency_s, student_latency_s: measured side by side by `build`.
    accuracy: as in ReportData. teacher_name: default teacher.json's model.
    """
    root = Path(run_root)

    def load(name: str, default):
        p = root / name
        return json.loads(p.read_text()) if p.is_file() else default

    sol = load(SOLUTION, {})
    teacher = load(TEACHER, {})
    fixed = load(LATENCY_FIXED, {}).get("device", {}).get(sol.get("device"), {})
    ops = {int(s["index"]): s.get("teacher_op", "") for s in teacher.get("slots", [])}
    keep: dict[int, float] = {}
    base = fixed.get("precision", "fp32")       # the teacher as it deploys: fp16 on GPU targets
    lp = root / LATENCY
    if lp.is_file():
        with open(lp, newline="") as fh:
            for r in csv.DictReader(fh):
                if r.get("op") == "keep" and r.get("precision") == base and r.get("first") == r.get("last"):
                    keep[int(r["first"])] = float(r["median_s"])
    choices = []
    for c in sol.get("choices", []):
        first, last = int(c["first"]), int(c.get("last", c["first"]))
        span = range(first, max(first, last) + 1)
        t_s = sum(keep[i] for i in span) if all(i in keep for i in span) else None
        choices.append(SlotChoice(_slot(first, last), "+".join(ops.get(i, "?") for i in span) if ops else "",
                                  c["op"], c.get("precision", "fp32"), c.get("predicted_s"), t_s, c.get("score")))
    parts = []
    for key in ("stem_s", "head_s"):
        if fixed.get(key) is not None:
            parts.append(PartLatency(key[:-2], fixed[key], None))
    parts.append(PartLatency("teacher", fixed.get("teacher_sum_s"), teacher_latency_s))
    parts.append(PartLatency("student", sol.get("predicted_s"), student_latency_s))
    notes = []
    if fixed.get("teacher_sum_s"):
        notes.append("Teacher 'predicted' is the sum of its separately timed parts; the search adds the measured "
                     f"additivity correction ({_ms(fixed.get('correction_s'), 4)} ms) to every prediction.")
    return ReportData(teacher_name=teacher_name or teacher.get("model", "teacher"),
                      teacher_latency_s=teacher_latency_s, student_latency_s=student_latency_s,
                      accuracy=dict(accuracy), solution=sol, pareto=load(PARETO_JSON, []), chosen=None,
                      choices=choices, parts=parts, notes=notes)


__all__ = ["ReportData", "SlotChoice", "PartLatency", "write_report", "report_data_from_run",
           "plot_pareto", "plot_choices", "plot_parts"]
