"""Phase-1 quality benchmark over a run directory whose distill, score and profile stages
are done (e.g. `examples/lite0_dev_tiny.toml`): what the candidates are worth, alone and together.

    .venv/bin/python benchmarks/quality_lite0.py RUN_DIR [--parts slots,compose,predict,search,baselines]
        [--speedups 1.3,1.55,1.8] [--finetune-steps 300] [--students 5] [--metric kl]
        [--holdout ../shared/data/imagenet-sample/holdout] [--out RUN_DIR/quality]

Parts (each writes `<out>/<part>.json` atomically and is skipped when that file exists, so a killed
run resumes part by part):
- slots: per slot and candidate, latency as a fraction of the slot's `keep` (latency.csv) and
  swap-one agreement / KL (scores.csv, on the run's eval split — a held-out part of dev); the best
  agreement at ≤ 0.6x and ≤ 0.8x per slot; `slots.png` plots fraction vs agreement per slot.
- compose: students made of each slot's best candidate under 0.6x / 0.8x of the slot's latency,
  evaluated as assembled, after BN re-estimation of the replaced parts, and after the fine-tune.
- predict: per speedup, `--students` random selections under that budget: predicted score (Σ of
  swap-one agreement drops, the search's objective) vs measured agreement as assembled; Spearman.
- search: the real ILP at each speedup (budget = teacher / speedup); each student fine-tuned, its
  latency measured on ORT beside the teacher's in one run, agreement and top-1 on the eval split.
- remeasure (only when asked): every student saved by search/baselines timed again beside the
  teacher in `--rounds` alternating rounds, for figures taken on a busy machine.
- baselines: at each speedup's measured budget, (a) the teacher uniformly slimmed (every MBConv's
  expansion cut to the value that meets the budget, teacher-pruned weights, no phase 1) and
  (b) the best of `--students` random selections, both fine-tuned exactly like the HANT student.

`--holdout DIR`: every fine-tuned student of `search` and `baselines` (and the teacher) is also
evaluated on that labelled folder (top-1, agreement) — the figures to report; DIR is never trained on.

Every figure is measured here; the latency of every model is timed in this process, alternating
with the teacher.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import random
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from hant_trt import atomic
from hant_trt.student.assemble import Choice, StudentSpec, assemble, load_student, replaced_parts, save_student
from hant_trt.student.finetune import agreement, finetune_rejected, recalibrate_bn
from hant_trt.training import eval_batches
from hant_trt.student.stage import finetune_student, full_res_set
from hant_trt.config import from_dict
from hant_trt.data import FolderDataset, eval_transform, scan_folder
from hant_trt.distill.pool import load_trained
from hant_trt.scores import read_scores
from hant_trt.data import data_splits
from hant_trt.latency.backends import get_backend
from hant_trt.latency.export import export_onnx
from hant_trt.latency.paired import time_beside, time_in_rounds
from hant_trt.rundir import RunDir
from hant_trt.search.stage import pose, solve_posed
from hant_trt.search.tables import load_tables, select_devices
from hant_trt.teacher.stage import load_from_config


def _where(c: Choice) -> str:
    return str(c.first) if c.first == c.last else f"{c.first}-{c.last}"


def spearman(a: list[float], b: list[float]) -> float:
    def ranks(v):
        order = sorted(range(len(v)), key=lambda i: v[i])
        r = [0.0] * len(v)
        i = 0
        while i < len(order):
            j = i
            while j + 1 < len(order) and v[order[j + 1]] == v[order[i]]:
                j += 1
            for k in range(i, j + 1):
                r[order[k]] = (i + j) / 2
            i = j + 1
        return r

    ra, rb = ranks(a), ranks(b)
    ma, mb = sum(ra) / len(ra), sum(rb) / len(rb)
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb))
    va = math.sqrt(sum((x - ma) ** 2 for x in ra))
    vb = math.sqrt(sum((y - mb) ** 2 for y in rb))
    return cov / (va * vb) if va and vb else float("nan")


class Bench:
    def __init__(self, run: Path, out: Path, ft_steps: int, ft_lr: float | None, threads: int,
                 metric: str = "agreement", holdout: str | None = None, skip_weight: float | None = None):
        self.run, self.out = run, out
        self.cfg = from_dict(json.loads((run / "run.json").read_text())["config"])
        self.teacher, self.d = load_from_config(self.cfg)
        splits = data_splits(self.cfg, self.teacher.data_config, train_resolution=self.cfg.distill.resolution)
        self.train = splits.train
        self.full = full_res_set(self.cfg, self.teacher.data_config)
        self.eval_loader = DataLoader(splits.eval, batch_size=50)
        self.holdout_loader = None
        if holdout:
            items, _, _ = scan_folder(holdout)
            self.holdout_loader = DataLoader(FolderDataset(items, eval_transform(self.teacher.data_config)),
                                             batch_size=50)
        deploy = data_splits(self.cfg, self.teacher.data_config, train_augment=False).train
        self.bn_batches = eval_batches(deploy, 256, 32)
        self.trained = {p.where: p.module for p in load_trained(run / "candidates", self.d)}
        self.scores = {(r.first, r.last, r.op): r for r in read_scores(run / "scores.csv") if r.precision == "fp32"}
        self.skip_weight = self.cfg.search.skip_weight if skip_weight is None else skip_weight
        self.tables = load_tables(run, metric, self.skip_weight)
        self.metric = metric
        self.device = select_devices(self.tables.fixed, None)[0]
        self.fixed = self.tables.fixed[self.device]
        self.lat = {(o.first, o.last, o.op): o.latency_s[self.device] for o in self.tables.options
                    if o.precision == "fp32" and self.device in o.latency_s}
        self.n = len(self.d.slots)
        self.keep_best = self.cfg.build.keep_best
        self.calibrate = 0
        self.refine = 0
        self.interactions = self.cfg.search.interactions
        self.ft_steps, self.ft_lr = ft_steps, ft_lr if ft_lr is not None else self.cfg.build.finetune_lr
        self.backend = get_backend("ort", threads=threads)
        self.tmp = Path(tempfile.mkdtemp(prefix="hant_quality_"))
        self.shape = (1, 3, self.teacher.resolution, self.teacher.resolution)

    # -- helpers ----------------------------------------------------------------------------------
    def part(self, name: str, fn):
        path = self.out / f"{name}.json"
        if path.exists():
            print(f"[{name}] done before: {path}")
            return json.loads(path.read_text())
        t0 = time.time()
        res = fn()
        res["seconds"] = round(time.time() - t0, 1)
        atomic.write_json(path, res)
        print(f"[{name}] {res['seconds']:.0f}s → {path}")
        return res

    def predicted_s(self, choices: list[Choice]) -> float:
        """The search's prediction (latency model "scale")."""
        f = self.fixed
        parts = f.stem_s + f.head_s + sum(self.lat[(c.first, c.last, c.op)] for c in choices)
        return parts * f.teacher_s / f.teacher_sum_s

    def predicted_score(self, choices: list[Choice], metric: str = "agreement") -> float:
        """The search's objective: Σ agreement drops (≤ 0), or −Σ KL."""
        if metric == "kl":
            return -sum(self.scores[(c.first, c.last, c.op)].kl for c in choices)
        return sum(self.scores[(c.first, c.last, c.op)].agreement - 100.0 for c in choices)

    def student(self, choices: list[Choice], trained: bool = True):
        return assemble(self.d, choices, self.trained if trained else None)

    def evaluate(self, model) -> dict:
        return agreement(model, self.teacher.model, self.eval_loader)

    def final(self, res: dict, model, tag: str, choices: list[Choice]) -> None:
        """A fine-tuned student's figures: the eval split of dev, and the holdout folder if given.
        The student is saved under `<out>/students/<tag>` so `remeasure` can time it again later."""
        save_student(self.out / "students" / tag, model, StudentSpec(
            model=self.teacher.name, resolution=self.teacher.resolution, data_config=self.teacher.data_config,
            choices=choices))
        res["finetuned"] = self.evaluate(model)
        if self.holdout_loader is not None:
            res["holdout"] = agreement(model, self.teacher.model, self.holdout_loader)

    @staticmethod
    def top1(res: dict) -> str:
        h = res.get("holdout")
        return (f"top-1 {res['finetuned'].get('student_top1', float('nan')):.1f} on dev-eval"
                + (f", holdout top-1 {h['student_top1']:.1f} (teacher {h['teacher_top1']:.1f}), "
                   f"agreement {h['agreement']:.1f}%" if h else ""))

    def tune(self, model, choices: list[Choice], tag: str, assembled: dict | None = None) -> dict:
        """The build stage's fine-tune, `build.keep_best` included: when fine-tuning raised the
        eval split's objective (KL + ce_weight × CE) above `assembled`'s, the assembled weights
        are kept."""
        ordered = sorted(choices, key=lambda c: c.first)
        start = {k: v.detach().clone() for k, v in model.state_dict().items()}
        info = finetune_student(model, self.teacher.model, self.d, ordered, self.train, self.cfg,
                                self.tmp / f"ft_{tag}", tag, steps=self.ft_steps, lr=self.ft_lr, full_set=self.full)
        if self.keep_best and assembled is not None:
            after = self.evaluate(model)
            info["kl_finetuned"] = after["kl"]
            if finetune_rejected(assembled, after, self.cfg.build.ce_weight):
                model.load_state_dict(start)
                info["kept"] = "assembled"
        return info

    def measure(self, models: dict[str, torch.nn.Module], rounds: int = 3, seconds: float = 1.5) -> dict:
        """Latency (ms) of each model and of the teacher, timed in alternating rounds. Each model is
        timed right after a teacher timing and its figure is the median of those paired ratios × the
        teacher's median: this machine drifts within a round, and a model timed far from the
        teacher would carry the drift into its ratio."""
        t_prep = self.backend.prepare(export_onnx(self.teacher.model.eval(), self.shape, self.tmp / "teacher.onnx"))
        preps = {}
        for name, m in models.items():
            preps[name] = self.backend.prepare(export_onnx(m.eval(), self.shape, self.tmp / f"{name}.onnx"))
        if preps:
            pairs = dict(zip(preps, time_beside(self.backend, t_prep, list(preps.values()), rounds,
                                                max_seconds=seconds)))
            teacher = [t * 1e3 for p in pairs.values() for t, _ in p]
            ratios = {k: [s / t for t, s in p] for k, p in pairs.items()}
        else:
            teacher = [t * 1e3 for t in time_in_rounds(self.backend, [t_prep], rounds, max_seconds=seconds)[0]]
            ratios = {}
        t_ms = sorted(teacher)[len(teacher) // 2]
        return {"teacher": t_ms, **{k: sorted(v)[len(v) // 2] * t_ms for k, v in ratios.items()}}

    def ops_of(self, i: int) -> list[str]:
        return sorted({op for (f, l, op) in self.lat if f == i and l == i})

    # -- parts ------------------------------------------------------------------------------------
    def slots(self) -> dict:
        rows, best = [], []
        for i in range(self.n):
            keep = self.lat[(i, i, "keep")]
            per = []
            for op in self.ops_of(i):
                s = self.scores.get((i, i, op))
                if s is None:
                    continue
                per.append({"slot": i, "op": op, "frac": self.lat[(i, i, op)] / keep, "agreement": s.agreement,
                            "kl": s.kl, "local_mse": s.local_mse})
            rows += per
            b = {"slot": i, "teacher_op": self.d.slots[i].teacher_op, "keep_ms": keep * 1e3}
            for thr in (0.6, 0.8):
                ok = [r for r in per if r["frac"] <= thr and r["op"] != "keep"]
                top = max(ok, key=lambda r: (r["agreement"], -r["kl"])) if ok else None
                b[f"best_{thr}"] = {"op": top["op"], "agreement": top["agreement"], "kl": top["kl"],
                                    "frac": top["frac"]} if top else None
            best.append(b)
        self._plot_slots(rows)
        for b in best:
            cells = [f"{b['slot']:>2} {b['teacher_op']:<16} {b['keep_ms']:.3f} ms"]
            for thr in (0.6, 0.8):
                x = b[f"best_{thr}"]
                cells.append(f"≤{thr}: " + (f"{x['op']} {x['agreement']:.0f}% (x{x['frac']:.2f})" if x else "none"))
            print("  ".join(cells))
        return {"rows": rows, "best": best}

    def _plot_slots(self, rows: list[dict]) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        cols = 4
        fig, axes = plt.subplots(math.ceil(self.n / cols), cols, figsize=(16, 3.2 * math.ceil(self.n / cols)))
        for i, ax in enumerate(axes.flat):
            if i >= self.n:
                ax.axis("off")
                continue
            rs = [r for r in rows if r["slot"] == i]
            ax.scatter([r["frac"] for r in rs], [r["agreement"] for r in rs], s=14)
            for r in rs:
                ax.annotate(r["op"].replace("_relu6", ""), (r["frac"], r["agreement"]), fontsize=6)
            ax.axvline(0.6, color="grey", lw=0.5, ls="--")
            ax.axvline(0.8, color="grey", lw=0.5, ls="--")
            ax.set_title(f"slot {i} ({self.d.slots[i].teacher_op})", fontsize=8)
            ax.set_xlabel("latency / keep", fontsize=7)
            ax.set_ylabel("swap-one agreement %", fontsize=7)
        fig.tight_layout()
        atomic.write_with(self.out / "slots.png", lambda tmp: fig.savefig(tmp, dpi=90, format="png"))
        plt.close(fig)

    def compose(self, slots_res: dict) -> dict:
        out = {}
        for thr in (0.6, 0.8):
            choices = []
            for b in slots_res["best"]:
                x = b[f"best_{thr}"]
                choices.append(Choice(b["slot"], b["slot"], x["op"] if x else "keep"))
            m = self.student(choices)
            res = {"choices": [c.op for c in choices], "predicted_ms": self.predicted_s(choices) * 1e3,
                   "assembled": self.evaluate(m)}
            recalibrate_bn(m, self.bn_batches, replaced_parts(m, choices))
            res["bn_reestimated"] = self.evaluate(m)
            m = self.student(choices)
            res["finetune"] = self.tune(m, choices, f"compose{thr}", res["assembled"])
            res["finetuned"] = self.evaluate(m)
            print(f"compose ≤{thr}: assembled {res['assembled']['agreement']:.1f}%, BN re-estimated "
                  f"{res['bn_reestimated']['agreement']:.1f}%, fine-tuned {res['finetuned']['agreement']:.1f}% "
                  f"(top-1 {res['finetuned'].get('student_top1', float('nan')):.1f})")
            out[str(thr)] = res
        return out

    def random_under(self, budget_s: float, rng: random.Random, temperature: float | None = None,
                     tries: int = 20000) -> list[Choice] | None:
        """A random selection predicted to land within [0.85, 1] × budget. temperature=None: every
        candidate equally likely; a number: candidates drawn ∝ exp(agreement / temperature), i.e.
        students of the kind a search would consider rather than hopeless ones."""
        def draw(i: int) -> str:
            ops = self.ops_of(i)
            if temperature is None:
                return rng.choice(ops)
            w = [math.exp((self.scores[(i, i, op)].agreement - 100.0) / temperature) for op in ops]
            return rng.choices(ops, weights=w)[0]

        for _ in range(tries):
            ch = [Choice(i, i, draw(i)) for i in range(self.n)]
            if 0.85 * budget_s <= self.predicted_s(ch) <= budget_s:
                return ch
        return None

    def sample_near(self, budget_s: float, rng: random.Random) -> list[Choice] | None:
        """`random_under` at the lowest temperature that reaches the budget (tighter budgets need
        cheaper, lower-scoring candidates)."""
        for t in (2.0, 4.0, 8.0, 16.0, 32.0, None):
            ch = self.random_under(budget_s, rng, temperature=t, tries=3000)
            if ch is not None:
                return ch
        return None

    def predict(self, speedups: list[float], k: int) -> dict:
        rng = random.Random(0)
        pts = []
        for sp in speedups:
            budget = self.fixed.teacher_s / sp
            for j in range(k):
                ch = self.sample_near(budget, rng)
                if ch is None:
                    continue
                pts.append({"speedup": sp, "choices": [c.op for c in ch], "predicted_score": self.predicted_score(ch),
                            "predicted_kl": self.predicted_score(ch, "kl"),
                            "measured": self.evaluate(self.student(ch))["agreement"]})
                print(f"  predict {sp}x #{j}: predicted {pts[-1]['predicted_score']:.1f}, measured "
                      f"{pts[-1]['measured']:.1f}%")
        meas = [p["measured"] for p in pts]
        rho = spearman([p["predicted_score"] for p in pts], meas) if len(pts) > 2 else None
        rho_kl = spearman([p["predicted_kl"] for p in pts], meas) if len(pts) > 2 else None
        print(f"predicted vs measured agreement over {len(pts)} students: Spearman {rho} (Σ agreement drop), "
              f"{rho_kl} (Σ KL)")
        return {"points": pts, "spearman": rho, "spearman_kl": rho_kl}

    def search(self, speedups: list[float]) -> dict:
        out = {}
        models = {}
        run = RunDir(self.run, create=False)
        for sp in speedups:
            cfg = copy.deepcopy(self.cfg)       # the search stage itself, with this benchmark's settings
            c = cfg.search
            c.budget, c.metric, c.skip_weight, c.interactions = f"speedup={sp}", self.metric, self.skip_weight, \
                self.interactions
            c.calibrate_rounds, c.refine_sweeps, c.devices = self.calibrate, self.refine, [self.device]
            sol, info = solve_posed(run, cfg, pose(run, cfg))
            choices = [Choice(o.first, o.last, o.op, o.precision) for o in sol.choices]
            m = self.student(choices)
            res = {"metric": self.metric, "choices": [f"{_where(c)}:{c.op}" for c in choices if c.op != "keep"],
                   "predicted_ms": sol.predicted_s[self.device] * 1e3, "assembled": self.evaluate(m)}
            res.update({k: info[k] for k in ("calibration", "refine") if k in info})
            res["finetune"] = self.tune(m, choices, f"search{sp}", res["assembled"])
            self.final(res, m, f"hant{sp}", choices)
            models[f"hant{sp}"] = m
            out[str(sp)] = res
            print(f"search {sp}x: {len(res['choices'])} replaced, assembled {res['assembled']['agreement']:.1f}%, "
                  f"fine-tuned {res['finetuned']['agreement']:.1f}% {self.top1(res)}")
        lat = self.measure(models)
        for sp in speedups:
            r = out[str(sp)]
            r["measured_ms"], r["teacher_ms"] = lat[f"hant{sp}"], lat["teacher"]
            r["measured_speedup"] = lat["teacher"] / lat[f"hant{sp}"]
            print(f"search {sp}x: measured {r['measured_ms']:.3f} ms vs teacher {r['teacher_ms']:.3f} ms "
                  f"= {r['measured_speedup']:.2f}x")
        return out

    def baselines(self, speedups: list[float], search_res: dict, k: int) -> dict:
        out, models = {}, {}
        rng = random.Random(1)
        for sp in speedups:
            budget = search_res[str(sp)]["predicted_ms"] / 1e3
            res = {}
            # (a) uniform slimming: pruned from the teacher's weights (no phase 1), fine-tuned alike
            e, ch = self.uniform_any(budget)
            m = self.student(ch, trained=False)
            res["uniform"] = {"expansion": e, "assembled": self.evaluate(m)}
            res["uniform"]["finetune"] = self.tune(m, ch, f"uniform{sp}", res["uniform"]["assembled"])
            self.final(res["uniform"], m, f"uniform{sp}", ch)
            models[f"uniform{sp}"] = m
            # (b) random selections under the same predicted budget: best of k by assembled agreement
            cands = [c for c in (self.random_under(budget, rng) for _ in range(k)) if c is not None]
            if cands:
                scored = [(self.evaluate(self.student(c))["agreement"], i) for i, c in enumerate(cands)]
                best = cands[max(scored)[1]]
                m = self.student(best)
                res["random"] = {"choices": [c.op for c in best], "assembled": self.evaluate(m),
                                 "tried": len(cands)}
                res["random"]["finetune"] = self.tune(m, best, f"random{sp}", res["random"]["assembled"])
                self.final(res["random"], m, f"random{sp}", best)
                models[f"random{sp}"] = m
            out[str(sp)] = res
        lat = self.measure(models)
        for sp in speedups:
            for kind in ("uniform", "random"):
                r = out[str(sp)].get(kind)
                if r is None:
                    continue
                r["measured_ms"], r["teacher_ms"] = lat[f"{kind}{sp}"], lat["teacher"]
                r["measured_speedup"] = lat["teacher"] / lat[f"{kind}{sp}"]
                print(f"baseline {kind} at {sp}x budget: {r['measured_speedup']:.2f}x measured, agreement "
                      f"{r['finetuned']['agreement']:.1f}%, {self.top1(r)}")
        return out

    def remeasure(self, rounds: int) -> dict:
        """Time every saved student again beside the teacher, in alternating rounds (for figures
        taken while other work shared the machine)."""
        folders = sorted(p for p in (self.out / "students").iterdir() if (p / "spec.json").exists())
        lat = self.measure({p.name: load_student(p)[0] for p in folders}, rounds=rounds)
        res = {k: {"ms": v, "speedup": lat["teacher"] / v} for k, v in lat.items()}
        for k, v in res.items():
            print(f"remeasure {k:<14} {v['ms']:.3f} ms  {v['speedup']:.2f}x")
        return res

    def uniform_any(self, budget_s: float) -> tuple[int, list[Choice]]:
        """Uniform slimming measured by whole-model latency (the table may lack some ops): the largest
        expansion whose assembled model is no slower than `budget_s` on this backend."""
        teacher_ms = self.measure({}, rounds=3)["teacher"]   # one round once picked e1 for an e3 budget
        scale = self.fixed.teacher_s * 1e3 / teacher_ms  # table units per measured unit, now
        last = None
        for e in (5, 4, 3, 2, 1):
            ch = [Choice(s.index, s.index, f"ir_k{s.kernel}_e{e}_{s.act}" if s.kind == "ir" else "keep")
                  for s in self.d.slots]
            ms = self.measure({"u": self.student(ch, trained=False)}, rounds=3)["u"] * scale
            last = (e, ch)
            if ms / 1e3 <= budget_s:
                return e, ch
        return last


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir")
    ap.add_argument("--parts", default="slots,compose,predict,search,baselines")
    ap.add_argument("--speedups", default="1.3,1.55,1.8")
    ap.add_argument("--finetune-steps", type=int, default=300)
    ap.add_argument("--finetune-lr", type=float, default=None)
    ap.add_argument("--students", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None)
    ap.add_argument("--metric", default="kl", help="the search's score: kl (the product's default) | agreement")
    ap.add_argument("--no-keep-best", action="store_true",
                    help="always keep the fine-tuned weights (default: the run's build.keep_best)")
    ap.add_argument("--rounds", type=int, default=5, help="alternating timing rounds of `remeasure`")
    ap.add_argument("--holdout", default=None, help="labelled folder to report fine-tuned students on")
    ap.add_argument("--calibrate", type=int, default=0,
                    help="search part: calibrate each budget on the engine in up to N rounds (search.calibrate_rounds)")
    ap.add_argument("--refine", type=int, default=0,
                    help="search part: composition refinement, up to N sweeps (search.refine_sweeps)")
    ap.add_argument("--interactions", default=None,
                    help="search part: none | skip (search.interactions; default: the run's)")
    ap.add_argument("--skip-weight", type=float, default=None,
                    help="search part: a skip's score × this (search.skip_weight; default: the run's)")
    a = ap.parse_args()
    run = Path(a.run_dir)
    out = Path(a.out) if a.out else run / "quality"
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    b = Bench(run, out, a.finetune_steps, a.finetune_lr, a.threads, a.metric, a.holdout, a.skip_weight)
    b.calibrate = a.calibrate
    b.refine = a.refine
    if a.interactions is not None:
        b.interactions = a.interactions
    if a.no_keep_best:
        b.keep_best = False
    speedups = [float(x) for x in a.speedups.split(",")]
    parts = a.parts.split(",")
    print(f"eval split: {len(b.eval_loader.dataset)} images; device {b.device}; teacher "
          f"{b.fixed.teacher_s * 1e3:.3f} ms in the table")
    slots_res = b.part("slots", b.slots) if "slots" in parts or "compose" in parts else None
    if "compose" in parts:
        b.part("compose", lambda: b.compose(slots_res))
    if "predict" in parts:
        b.part("predict", lambda: b.predict(speedups, a.students))
    search_res = b.part("search", lambda: b.search(speedups)) if "search" in parts or "baselines" in parts else None
    if "baselines" in parts:
        b.part("baselines", lambda: b.baselines(speedups, search_res, a.students))
    if "remeasure" in parts:
        b.part("remeasure", lambda: b.remeasure(a.rounds))


if __name__ == "__main__":
    main()
