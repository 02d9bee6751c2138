"""Run configuration: one TOML (or JSON) file with a section per stage.

Parsed with tomllib/json only (config text is never evaluated). Unknown keys are user errors, so a
typo does not silently fall back to a default.
"""

from __future__ import annotations

import dataclasses
import json
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .errors import UserError


@dataclass
class TeacherCfg:
    model: str = "efficientnet_lite0"
    weights: str = "default"       # default | hub | offline-lite0 | offline-lite1 | path to .safetensors/.pth
    resolution: int | None = None   # None: the model's own input size


@dataclass
class DataCfg:
    train: str = "embedded"         # embedded | folder path (class subfolders or labels.tsv)
    eval: str | None = None         # None: a held-out part of `train`
    eval_fraction: float = 0.2
    max_images: int | None = None


@dataclass
class DistillCfg:
    preset: str = "tiny"
    steps: int = 200
    batch_size: int = 16
    lr: float = 2e-3
    warmup_steps: int = 10
    resolution: int | None = None   # distillation resolution; None: teacher resolution
    slots: list[int] | None = None
    spans: int = 0                  # kernel fusion: one op may replace up to this many consecutive
                                    #   slots (candidates inheriting the merged blocks; 0 or 1: none).
                                    #   Opt-in: on ORT CPU fused ops save ~half the latency their
                                    #   standalone timing says, so the search overshoots its budget
    group_mb: int = 4000            # memory budget per candidate group
    bn: str = "frozen"              # frozen: BN uses its (teacher/refit) statistics while training; train
    bn_recalibrate: bool = False    # re-estimate BN statistics at the deploy resolution after training
    device: str = "auto"            # auto (CUDA when visible) | cpu | cuda; CUDA trains in mixed precision
    checkpoint_every: int = 50
    seed: int = 0
    full_res_steps: int = 0         # the last N steps at the deploy resolution (after `resolution` ones)
    keep_best: bool = True          # per candidate, keep whichever of its start and its trained weights
                                    # has the lower validation MSE (refit kept only where it helps)
    suffix_kl: float = 0.0          # + this × KL(teacher logits ‖ candidate output through the teacher's
    suffix_kl_slots: int = 3        #   rest) for candidates ending in the last `suffix_kl_slots` slots
    fisher: float = 0.0             # α: loss = (1 − α) normalised MSE + α Fisher-weighted MSE (the feature
                                    #   error weighted by the teacher's squared output gradients; one
                                    #   teacher backward per step)
    cuda_graph: bool = False        # on CUDA, replay each step as a CUDA graph (launch-bound with many
                                    #   small candidates); opt-in: not yet run on a GPU
    align: int = 0                  # N > 0: candidates' hidden widths (ir/er) at multiples of N — a
                                    #   width between two is replaced by both (`ops.presets.aligned`):
                                    #   ORT CPU int8 on AMD EPYC ran e5 MBConvs of 24/40-channel slots
                                    #   slower than e6 (16 there); on Lite1 the students were no better
                                    #   (docs/RESULTS.md, session 22). 0: the preset's widths


@dataclass
class ScoreCfg:
    batch_size: int = 32
    max_images: int | None = None


@dataclass
class ProfileCfg:
    backend: str = "ort"
    precisions: list[str] = field(default_factory=lambda: ["fp32"])
    batch: int = 1
    threads: int | None = None      # CPU threads; None: the backend's default, lowered to the cores free at profile time
    lut: str | None = None          # None: ~/.cache/hant-trt/latency.sqlite
    max_seconds: float = 2.0        # per-measurement time cap
    cv_target: float = 0.02
    calib_method: str = "max"       # int8 ranges, for scoring and the final Q/DQ alike: max | percentile | entropy
    calib_images: int = 32          # un-augmented training images those ranges are calibrated on
    int8_layout: str = "auto"       # Q/DQ layout: trt (TensorRT: symmetric, inputs only) | ort (ONNX Runtime
                                    #   CPU's integer kernels: uint8, outputs too) | ort-qadd (ort, with
                                    #   integer residual Adds and pooling) | auto (ort-qadd on the ort
                                    #   backend without fp16, else trt)
    context: str = "alone"          # alone: each candidate timed by itself | model: also timed inside
                                    #   the teacher (swapped in, beside the teacher; int8 ones inside
                                    #   the int8 teacher), fp32 and int8 | int8: only the int8 ones
    context_rounds: int = 5         # model: alternating (teacher, swapped) pairs per swap
    islands: int = 0                # int8 profiles: alternating pairs timing each part left at the base
                                    #   precision inside the int8 teacher, whence the search's cost of a
                                    #   junction between int8 and float parts (0: not timed, no such cost)
    compile: bool = False           # torch backend: time torch.compile'd modules (Inductor fuses BN and
                                    #   activations into convolutions, as TensorRT does)


@dataclass
class SearchCfg:
    budget: str = "0.7x"            # "0.7x" of the teacher, "2ms", "500us", "0.002s", "speedup=1.5"; per device
    metric: str = "kl"              # kl | agreement | local_mse | top1 (accuracy drop; needs labels)
    solver: str = "cbc"             # cbc (bundled with PuLP) | highs (needs highspy)
    time_limit: float = 60.0        # solver seconds; a feasible but unproven answer is reported as such
    sweep: int = 0                  # N > 0: also solve N budgets → pareto.json + pareto.png
    devices: list[str] | None = None  # device fingerprints (or unique substrings); None: all profiled
    max_params: str | None = None   # Σ params of the slots: "0.8x" of the teacher's, "3.5M", or None
    max_macs: str | None = None     # Σ MACs of the slots: "0.5x", "300M", "1.2G", or None
    latency_model: str = "scale"    # whole model from parts: scale (× teacher/Σ parts) | offset (+ teacher − Σ parts)
    calibrate_rounds: int = 0       # N > 0: time the chosen student beside the teacher (int8x budgets:
                                    #   its plain int8) on the profile backend and re-solve with a
                                    #   corrected budget, up to N times
    refine_sweeps: int = 0          # N > 0: improve the ILP's pick by local search on the composed
                                    #   student's KL (eval split, int8 parts simulated), up to N sweeps
    refine_moves: str = "both"      # exclude: solve again without one replaced part (a span too) at a
                                    #   time | swap: another option at one slot | both (exclude first)
    refine_judge: str = "kl"        # kl: the composed student's KL, untrained | finetune: the build's eval
                                    #   objective after a `judge_steps` fine-tune (exclusion moves only)
    judge_steps: int = 150          # the judge's fine-tune steps (the build's settings, shortened)
    judge_confirm: int = 2          # finetune judge: fresh fine-tune seeds a move must also win on (0: none)
    interactions: str = "none"      # skip: measure every pair of skips composed (eval split, KL) and
                                    #   penalise pairs that lose more than their swap-one scores add up to
    skip_weight: float = 1.0        # a `skip`'s score × this: > 1 says the fine-tune recovers trainable
                                    #   parts' losses but has nothing to train in a dropped block
    max_skips_per_stage: int | None = None  # N: at most N dropped blocks (`skip`) per stage of the
                                    #   teacher; dropped blocks of one stage compound (None: no limit)
    exclude: list[str] | None = None  # candidates never chosen, SLOTS:OP: "14-15:*", "12:skip", "*:ir_k3_e1_*"


@dataclass
class BuildCfg:
    finetune_steps: int = 1200      # Lite0 on 2 CPU cores: ~7.5 min at batch 16, 160 px
    finetune_lr: float = 3e-4
    batch_size: int = 16
    feature_weight: float = 1.0     # fine-tune: weight of the per-boundary feature-map loss (0: logits only)
    bn: str = "frozen"              # fine-tune BatchNorm: frozen | train
    bn_recalibrate: str = "none"    # after fine-tune, re-estimate BN statistics of: none | replaced | all
    bn_images: int = 256            # un-augmented training images for that re-estimation
    mixup: float = 0.0              # fine-tune on Beta(a, a) mixes of the batch with itself (0: off)
    train: str = "replaced"         # fine-tune trains: replaced (the chosen candidates) | all (stem, head, kept blocks too)
    ce_weight: float = 2.0          # fine-tune: weight of the label cross-entropy when labels exist; 2 (was
                                    #   0.5) measured +4 / +1.4 holdout points on Lite0 / Lite1 students at
                                    #   the price of agreement with the teacher (docs/RESULTS.md, session 14);
                                    #   0: a student that imitates the teacher only
    qat: bool = False               # fine-tune through the int8 parts' roundings (straight-through), ranges
                                    #   calibrated on the assembled student; recalibrated after
    ema: float = 0.0                # fine-tune: decay of a moving average of the trained weights that
                                    #   replaces them at the end (0: off; e.g. 0.995)
    full_res_steps: int = 300       # fine-tune: the last N steps at the deploy resolution (the others at
                                    #   distill.resolution): late replaced blocks then train on the map
                                    #   sizes they deploy at (7x7, not 5x5, on Lite0 at 160 px); 300 (was
                                    #   0) measured +0.2 to +2.0 holdout points on all 7 students of
                                    #   Lite0 and Lite1 it was tried on, ~1.5x the fine-tune's time
                                    #   (docs/RESULTS.md, session 17)
    finetune_images: str = "train"  # the fine-tune trains on: train (the eval split held out) | all (train
                                    #   and eval split: once phase 1 and the search have used the eval split,
                                    #   the shipped student may learn from it too, as a model is refitted on
                                    #   train + validation after selection; keep_best is off then, and the
                                    #   build's eval-split figures are marked trained-on); measured no gain
                                    #   on two Lite1 students (docs/RESULTS.md, session 24)
    keep_best: bool = True          # keep the assembled weights when fine-tuning raised the eval split's
                                    #   KL + ce_weight × CE (KL alone when unlabelled)
    teacher_resolution: int | None = None  # fine-tune: the teacher's logits (and the eval split's figures)
                                    #   on images at this side, the student on the same crops resized to
                                    #   its own: a run at a smaller `teacher.resolution` learns from the
                                    #   teacher at the side it was trained at (None: the run's side)
    seed: int | None = None         # fine-tune: the seed of its batches and mixup (None: distill.seed, which
                                    #   draws the train/eval split too); another seed over the same split
                                    #   says how much of a build's figures is its fine-tune's luck
    kd_model: str | None = None     # fine-tune: the logits the student learns from come from this model
                                    #   instead of the teacher (e.g. "efficientnet_lite1", a stronger model
                                    #   of the same input normalisation); the feature-map targets, the eval
                                    #   split's figures and everything the build compares with stay the
                                    #   teacher's (None: the teacher's logits)
    kd_weights: str = "default"     # its weights, as `teacher.weights` takes them (e.g. "offline-lite1")
    polish_steps: int = 0           # after the fine-tune, this many steps more in which every weight trains,
                                    #   at the deploy resolution, on the logits alone (the kd model's when
                                    #   set; no feature-map pull), at `polish_lr`: the student as a whole moves
                                    #   to its logits target once its replaced parts have settled (0: off);
                                    #   measured 4-5 holdout points lost on a Lite0 student with Lite1's
                                    #   logits, with or without QAT (docs/RESULTS.md, session 31)
    polish_lr: float = 1e-4
    soup: int = 0                   # N >= 2: the fine-tune (and polish) runs N times from the assembled
                                    #   student, at seeds `build.seed` + 0..N-1, and the shipped weights are
                                    #   their average, a uniform "model soup" (Wortsman et al. 2022): N times
                                    #   the fine-tune's cost, no latency (0 or 1: one fine-tune). The search's
                                    #   fine-tune judge runs one. Measured on six picks of Lite0 and Lite1: the
                                    #   soup's int8 holdout top-1 0.7 points over its fine-tunes' mean (-0.1
                                    #   to +1.6), 0.4 over the best of them (docs/RESULTS.md, session 32)
    engine_name: str | None = None


# Build options added after runs were saved, left out of the build's and the judge's fingerprints
# while unset, so those runs and judgements stay valid: one list for both
BUILD_OPT_INS = {"teacher_resolution": None, "seed": None, "kd_model": None, "kd_weights": "default",
                 "polish_steps": 0, "polish_lr": 1e-4, "soup": 0}


@dataclass
class RunConfig:
    run_dir: str = "runs/demo"
    teacher: TeacherCfg = field(default_factory=TeacherCfg)
    data: DataCfg = field(default_factory=DataCfg)
    distill: DistillCfg = field(default_factory=DistillCfg)
    score: ScoreCfg = field(default_factory=ScoreCfg)
    profile: ProfileCfg = field(default_factory=ProfileCfg)
    search: SearchCfg = field(default_factory=SearchCfg)
    build: BuildCfg = field(default_factory=BuildCfg)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# -- what each value may be ------------------------------------------------------------------
@dataclass(frozen=True)
class Rule:
    """What one config value may be. kind: int | float | bool | str | "ints" | "strs" (lists) |
    "count" (a number, or text such as 0.5x / 3.5M that `check` reads)."""

    kind: Any
    lo: float | None = None
    hi: float | None = None
    open_lo: bool = False            # lo itself excluded
    open_hi: bool = False
    choices: Any = ()                # tuple, or a callable giving one (registries filled at import)
    optional: bool = False           # None allowed
    check: Callable[[Any], str | None] | None = None   # further syntax: the problem, or None

    def allowed(self) -> str:
        names = {int: "an integer", float: "a number", bool: "true or false", str: "a string",
                 "ints": "a list of integers", "strs": "a list of strings",
                 "count": "a count such as 0.5x (of the teacher), 3.5M, 1.2G or a number"}
        text = names[self.kind]
        choices = self.choices() if callable(self.choices) else self.choices
        if choices:
            text = ("one of " if self.kind is str else "a list drawn from ") + ", ".join(choices)
        bounds = []
        if self.lo is not None:
            bounds.append(f"{'>' if self.open_lo else '>='} {self.lo:g}")
        if self.hi is not None:
            bounds.append(f"{'<' if self.open_hi else '<='} {self.hi:g}")
        if bounds:
            text += (" each" if self.kind == "ints" else "") + " " + " and ".join(bounds)
        return text + (" (or absent)" if self.optional else "")

    def problem(self, value: Any) -> str | None:
        """Why `value` is not allowed, or None."""
        if value is None:
            return None if self.optional else "expected " + self.allowed()
        items = value if self.kind in ("ints", "strs") else [value]
        if self.kind in ("ints", "strs") and (not isinstance(value, list) or not value):
            return "expected a non-empty list: " + self.allowed()
        item_kind = {"ints": int, "strs": str, "count": object}.get(self.kind, self.kind)
        choices = self.choices() if callable(self.choices) else self.choices
        for v in items:
            if not _is(v, item_kind) or (item_kind is str and not v.strip()):
                return "expected " + self.allowed()
            if choices and v not in choices:
                return "expected " + self.allowed()
            if item_kind in (int, float) and not _in_range(float(v), self):
                return "expected " + self.allowed()
        return self.check(value) if self.check else None


def _is(v: Any, kind: type) -> bool:
    if isinstance(v, bool):
        return kind is bool
    if kind is float:
        return isinstance(v, (int, float)) and math.isfinite(v)
    return isinstance(v, kind)


def _in_range(v: float, r: Rule) -> bool:
    if r.lo is not None and (v <= r.lo if r.open_lo else v < r.lo):
        return False
    return r.hi is None or (v < r.hi if r.open_hi else v <= r.hi)


def _multiple_of_8(v: int) -> str | None:
    return None if v % 8 == 0 else "expected 0 or a multiple of 8 (widths are rounded to 8)"


def _budget_text(v: str) -> str | None:
    from .search.budget import relative_budget

    try:
        fraction = relative_budget(v)
    except UserError as exc:
        return str(exc)
    if fraction is not None and fraction > 1:
        return "a budget slower than the teacher: the teacher itself meets it (use a fraction <= 1x or speedup >= 1)"
    return None


def _count_text(v: Any) -> str | None:
    from .search.budget import parse_count

    try:
        parse_count(v, 1.0)
    except UserError as exc:
        return str(exc)
    return None


def _presets() -> tuple:
    from .ops.presets import PRESETS

    return tuple(PRESETS)


def _int8_layouts() -> tuple:
    from .quant.layouts import LAYOUTS

    return ("auto", *LAYOUTS)


def _metrics() -> tuple:
    from .search.tables import _ALIASES, METRICS

    return METRICS + tuple(_ALIASES)


def _exclude_text(v: list) -> str | None:
    from .search.limits import exclude_problem

    return next((msg for msg in map(exclude_problem, v) if msg), None)


def _count_rule() -> Rule:
    # "0.5x" / "3.5M" or a plain number: the syntax is checked by the same parser the search uses
    return Rule("count", optional=True, check=_count_text)


POSITIVE = dict(lo=0, open_lo=True)
FRACTION = dict(lo=0, hi=1)

RULES: dict[str, dict[str, Rule]] = {
    "": {"run_dir": Rule(str)},
    "teacher": {"model": Rule(str), "weights": Rule(str),
                "resolution": Rule(int, lo=32, optional=True)},
    "data": {"train": Rule(str), "eval": Rule(str, optional=True),
             "eval_fraction": Rule(float, lo=0, hi=1, open_lo=True, open_hi=True),
             "max_images": Rule(int, lo=1, optional=True)},
    "distill": {"preset": Rule(str, choices=_presets), "steps": Rule(int, lo=1),
                "batch_size": Rule(int, lo=1), "lr": Rule(float, **POSITIVE), "warmup_steps": Rule(int, lo=0),
                "resolution": Rule(int, lo=16, optional=True), "slots": Rule("ints", lo=0, optional=True),
                "spans": Rule(int, lo=0), "group_mb": Rule(int, lo=1), "bn": Rule(str, choices=("frozen", "train")),
                "bn_recalibrate": Rule(bool), "device": Rule(str, choices=("auto", "cpu", "cuda")),
                "checkpoint_every": Rule(int, lo=1), "seed": Rule(int, lo=0), "full_res_steps": Rule(int, lo=0),
                "keep_best": Rule(bool), "suffix_kl": Rule(float, lo=0), "suffix_kl_slots": Rule(int, lo=0),
                "fisher": Rule(float, **FRACTION), "cuda_graph": Rule(bool),
                "align": Rule(int, lo=0, check=_multiple_of_8)},
    "score": {"batch_size": Rule(int, lo=1), "max_images": Rule(int, lo=1, optional=True)},
    "profile": {"backend": Rule(str, choices=("ort", "torch", "tensorrt")),
                "precisions": Rule("strs", choices=("fp32", "fp16", "bf16", "int8")),
                "batch": Rule(int, lo=1), "threads": Rule(int, lo=1, optional=True),
                "lut": Rule(str, optional=True), "max_seconds": Rule(float, **POSITIVE),
                "cv_target": Rule(float, **POSITIVE),
                "calib_method": Rule(str, choices=("max", "percentile", "entropy")),
                "calib_images": Rule(int, lo=1), "int8_layout": Rule(str, choices=_int8_layouts),
                "context": Rule(str, choices=("alone", "model", "int8")), "context_rounds": Rule(int, lo=1),
                "islands": Rule(int, lo=0),
                "compile": Rule(bool)},
    "search": {"budget": Rule(str, check=_budget_text), "metric": Rule(str, choices=_metrics),
               "solver": Rule(str, choices=("cbc", "highs")), "time_limit": Rule(float, **POSITIVE),
               "sweep": Rule(int, lo=0), "devices": Rule("strs", optional=True),
               "max_params": _count_rule(), "max_macs": _count_rule(),
               "latency_model": Rule(str, choices=("scale", "offset")), "calibrate_rounds": Rule(int, lo=0),
               "refine_sweeps": Rule(int, lo=0), "refine_moves": Rule(str, choices=("both", "exclude", "swap")),
               "refine_judge": Rule(str, choices=("kl", "finetune")), "judge_steps": Rule(int, lo=0), "judge_confirm": Rule(int, lo=0),
               "interactions": Rule(str, choices=("none", "skip")),
               "skip_weight": Rule(float, **POSITIVE), "max_skips_per_stage": Rule(int, lo=0, optional=True),
               "exclude": Rule("strs", optional=True, check=_exclude_text)},
    "build": {"finetune_steps": Rule(int, lo=0), "finetune_lr": Rule(float, **POSITIVE),
              "batch_size": Rule(int, lo=1), "feature_weight": Rule(float, lo=0),
              "bn": Rule(str, choices=("frozen", "train")),
              "bn_recalibrate": Rule(str, choices=("none", "replaced", "all")), "bn_images": Rule(int, lo=1),
              "mixup": Rule(float, lo=0), "train": Rule(str, choices=("replaced", "all")),
              "ce_weight": Rule(float, lo=0),
              "ema": Rule(float, lo=0, hi=1, open_hi=True), "qat": Rule(bool),
              "full_res_steps": Rule(int, lo=0), "finetune_images": Rule(str, choices=("train", "all")),
              "keep_best": Rule(bool), "teacher_resolution": Rule(int, lo=32, optional=True),
              "seed": Rule(int, lo=0, optional=True), "kd_model": Rule(str, optional=True),
              "kd_weights": Rule(str), "polish_steps": Rule(int, lo=0), "polish_lr": Rule(float, **POSITIVE),
              "soup": Rule(int, lo=0, hi=16), "engine_name": Rule(str, optional=True)},
}


def rule_of(section: str, key: str) -> Rule:
    return RULES[section][key]


def validate(cfg: RunConfig) -> RunConfig:
    """Check every value against RULES; the first bad one is a UserError naming key, value and what
    is allowed, so a typo fails at load rather than after the stages before the one reading it."""
    for section, rules in RULES.items():
        obj = getattr(cfg, section) if section else cfg
        for key, rule in rules.items():
            value = getattr(obj, key)
            why = rule.problem(value)
            if why:
                name = f"{section}.{key}" if section else key
                raise UserError(f"config: {name} = {json.dumps(value, default=str)}: {why}")
    if cfg.build.qat and cfg.build.bn != "frozen":
        raise UserError('config: build.qat = true needs build.bn = "frozen" (the int8 roundings are those of '
                        'BatchNorm folded with its running statistics)')
    if cfg.build.finetune_images == "all" and cfg.data.train == "embedded":
        raise UserError('config: build.finetune_images = "all" needs data.train to be a folder (the embedded '
                        "photos' eval crops come from the same photos as their training crops)")
    return cfg


# -- reading -----------------------------------------------------------------------------------
def _fill(cls: type, data: dict, where: str) -> Any:
    if not isinstance(data, dict):
        raise UserError(f"config: [{where}] must be a table, not {json.dumps(data, default=str)}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        if key not in fields:
            raise UserError(f"config: unknown key '{key}' in [{where}] (known: {', '.join(fields)})")
        sub = fields[key].default_factory if fields[key].default_factory is not dataclasses.MISSING else None
        if sub is not None and dataclasses.is_dataclass(sub):
            kwargs[key] = _fill(sub, value, key)
        else:
            kwargs[key] = value
    return cls(**kwargs)


def from_dict(data: dict, check: bool = True) -> RunConfig:
    """check=False leaves validate() to the caller, after its overrides (which may fix a value)."""
    cfg = _fill(RunConfig, data, "top level")
    return validate(cfg) if check else cfg


def load(path: str | Path, check: bool = True) -> RunConfig:
    p = Path(path)
    if not p.is_file():
        raise UserError(f"config file {p} not found")
    try:
        if p.suffix == ".json":
            data = json.loads(p.read_text())
        else:
            data = tomllib.loads(p.read_text())
    except (json.JSONDecodeError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"config file {p} is not valid {'JSON' if p.suffix == '.json' else 'TOML'}: {exc}") from None
    except OSError as exc:
        raise UserError(f"config file {p} is unreadable ({exc.strerror})") from None
    return from_dict(data, check)
