"""Phase 1: layer-wise feature-map distillation with one shared teacher pass per batch.

Every step runs the teacher once (all slots' inputs and outputs captured), then every candidate of
every slot trains on those activations: candidate(input of its span) → output of its span, with
normalised MSE. Candidates are split into groups (memory budget, checkpoint files); groups share the
step. Batches and augmentation are seeded by (seed, step), so a resumed run sees exactly the data an
uninterrupted one would, and its final weights are equal.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from .. import atomic
from ..config import DistillCfg
from ..errors import UserError
from ..progress import progress
from ..teacher.capture import (capture, capture_fisher, fisher_mse, kl_to_teacher, normalised_mse, suffix_logits,
                               teacher_modules_eval)
from ..teacher.decompose import Decomposition, module_slot_of, span_teacher
from ..teacher.slot import Slot
from ..training import (adamw, autocast_of, batch_for_step, estimate_bn, eval_batches, lr_at, resolve_device,
                        set_train_mode)
from .pool import build_candidate, candidate_ops


_STEP_DELAY = float(os.environ.get("HANT_TRT_STEP_DELAY", "0") or 0)


@dataclass
class Job:
    """One candidate to train: op string on a slot (or span)."""

    first: int
    last: int
    op: str
    module: nn.Module
    inherits: bool
    slot: Slot

    @property
    def key(self) -> str:
        return f"{self.slot.name}:{self.op}"


@dataclass
class Group:
    jobs: list[Job]
    opt: torch.optim.Optimizer = field(default=None)


def plan_jobs(d: Decomposition, cfg: DistillCfg, rank: int = 0, world: int = 1,
              only_spans: bool = False, only_ops: set[str] | None = None,
              only_keys: set[tuple[int, int, str]] | None = None) -> list[Job]:
    """Every trainable candidate of the selected slots (and spans), sharded round-robin by rank.

    A fused span's candidate is kept only when it inherits teacher weights
    (`ops.families.mbconv.span_source`): trained from scratch on a few hundred images, an op
    replacing several blocks lands far from them (on Lite0 even single-slot candidates without
    inheritance score KL 2–4).
    only_spans: the spans' candidates alone (adding fusion to a run whose slots are distilled).
    only_ops: these op strings alone (None: all of the preset's). only_keys: these (first, last, op)
    alone (candidates added to a distilled run: `tools/add_candidates.py`)."""
    n = len(d.slots)
    chosen = list(range(n)) if cfg.slots is None else list(cfg.slots)
    for i in chosen:
        if not 0 <= i < n:
            raise UserError(f"slot index {i} is out of range (the teacher has slots 0..{n - 1})")
    spans = [(i, i) for i in chosen]
    if cfg.spans and cfg.spans >= 2:
        for length in range(2, cfg.spans + 1):
            spans += [(i, i + length - 1) for i in chosen if i + length - 1 < n
                      and all(j in chosen for j in range(i, i + length))]
    jobs: list[Job] = []
    torch.manual_seed(cfg.seed)  # reproducible random init of non-inheriting candidates
    for first, last in spans:
        if only_spans and first == last:
            continue
        slot = module_slot_of(d.slots, first, last)
        teacher = span_teacher(d, first, last)
        for op in candidate_ops(slot, cfg.preset, fused=first != last, align=cfg.align):
            if op == "keep" or (only_ops is not None and op not in only_ops) \
                    or (only_keys is not None and (first, last, op) not in only_keys):
                continue
            try:
                module, inherits = build_candidate(op, slot, teacher)
            except UserError:
                if first == last:
                    raise
                continue        # a span op that does not fit these blocks (e.g. `es` after a residual block)
            if first != last and not inherits:
                continue
            jobs.append(Job(first, last, op, module, inherits, slot))
    return [j for k, j in enumerate(jobs) if k % world == rank]


def _trainable(job: Job) -> bool:
    return any(p.requires_grad for p in job.module.parameters())


def make_groups(jobs: list[Job], batch: int, budget_mb: int) -> list[Group]:
    """Greedy packing by estimated bytes (weights + Adam state + activations kept for backward)."""
    groups: list[Group] = []
    cur: list[Job] = []
    cur_bytes = 0.0
    for job in jobs:
        params = sum(p.numel() for p in job.module.parameters())
        c, h, w = job.slot.in_shape
        act = batch * (c * h * w + 6 * max(job.slot.out_shape[0], c) * h * w)
        est = 4 * (4 * params + act)
        if cur and (cur_bytes + est) / 2**20 > budget_mb:
            groups.append(Group(cur))
            cur, cur_bytes = [], 0.0
        cur.append(job)
        cur_bytes += est
    if cur:
        groups.append(Group(cur))
    return groups


class _StepBatches(torch.utils.data.Dataset):
    """Item k = the batch of step `first + k`, exactly `batch_for_step`'s (each worker process seeds
    its own RNG per step, so batches do not depend on which worker made them)."""

    def __init__(self, train_set, full_set, full_from: int, first: int, last: int, batch_size: int, seed: int):
        self.sets, self.full_from = (train_set, full_set), full_from
        self.first, self.n, self.batch_size, self.seed = first, max(0, last - first), batch_size, seed

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, k: int) -> torch.Tensor:
        step = self.first + k
        ds = self.sets[1] if self.sets[1] is not None and step >= self.full_from else self.sets[0]
        return batch_for_step(ds, step, self.batch_size, self.seed)


def loader_workers(dev: torch.device) -> int:
    """Data workers that keep a GPU fed (decoding and augmenting JPEGs is CPU work); none on the CPU,
    where workers would take cores from the training itself."""
    if dev.type != "cuda":
        return 0
    return max(0, min(8, (os.cpu_count() or 1) - 2))


def step_batches(train_set, full_set, full_from: int, first: int, last: int, batch_size: int, seed: int,
                 dev: torch.device):
    """The batches of steps first..last-1 in order; on CUDA made ahead by worker processes into
    pinned memory."""
    ds = _StepBatches(train_set, full_set, full_from, first, last, batch_size, seed)
    workers = loader_workers(dev)
    if workers == 0:
        return (ds[k] for k in range(len(ds)))
    return iter(torch.utils.data.DataLoader(ds, batch_size=None, shuffle=False, num_workers=workers,
                                            pin_memory=True, prefetch_factor=4, persistent_workers=False))


def train_step(d: Decomposition, groups: list[Group], x: torch.Tensor, cfg: DistillCfg, step: int, amp: bool,
               amp_dtype, scaler, zero_grad: bool = True) -> torch.Tensor:
    """One distillation step on batch `x` at the learning rate already in the optimizers: the
    teacher once, then every candidate of every group forward, backward, and each group's optimizer
    step. Returns the summed loss on the device (one host sync a step, when it is read, not one a
    candidate). zero_grad=False for a CUDA-graph capture (gradients are rewritten on each replay);
    autocast's cache is off there, as capture requires."""
    cast = dict(device_type="cuda", dtype=amp_dtype, enabled=amp, cache_enabled=zero_grad)
    with torch.autocast(**cast):
        acts, logits, fisher = teacher_pass(d, x, cfg, step)
    loss_sum = torch.zeros((), device=x.device)
    for g in groups:
        for j in g.jobs:
            with torch.autocast(**cast):
                out = j.module(acts[j.first])
            loss = job_loss(d, j, out, acts, logits, cfg, fisher)
            scaler.scale(loss).backward()
            loss_sum += loss.detach()
        scaler.step(g.opt)
        if zero_grad:
            g.opt.zero_grad(set_to_none=True)
    scaler.update()
    return loss_sum


def graph_refusal(dev: torch.device, scaler, cfg: DistillCfg) -> str | None:
    """Why the step cannot be replayed as a CUDA graph here (None: it can)."""
    if dev.type != "cuda":
        return "training runs on the CPU"
    if scaler.is_enabled():
        return "fp16 loss scaling (this GPU has no bf16) checks for overflow on the host each step"
    if cfg.fisher:
        return "distill.fisher samples labels on the host each step"
    return None


def job_loss(d: Decomposition, j: Job, out: torch.Tensor, acts: list[torch.Tensor], logits: torch.Tensor,
             cfg: DistillCfg | None = None, fisher: list | None = None) -> torch.Tensor:
    """Normalised MSE to the teacher's output of the job's span — with `cfg.fisher` = α > 0 and the
    batch's Fisher weights (`capture_fisher`), (1 − α) × that + α × the Fisher-weighted MSE —,
    plus, for late slots with `cfg.suffix_kl` > 0, that weight × KL to the teacher's logits with the
    candidate's output run through the rest of the (frozen) teacher: what swap-one scoring
    measures, trained directly where the rest is short and a small feature error can still move
    the logits a lot."""
    target = acts[j.last + 1].float()
    loss = normalised_mse(out.float(), target)
    alpha = cfg.fisher if cfg is not None else 0.0
    if alpha and fisher is not None:
        loss = (1 - alpha) * loss + alpha * fisher_mse(out.float(), target, fisher[j.last + 1])
    if cfg is not None and cfg.suffix_kl and j.last >= len(d.slots) - cfg.suffix_kl_slots:
        loss = loss + cfg.suffix_kl * kl_to_teacher(logits, suffix_logits(d, out, j.last + 1))
    return loss


def teacher_pass(d: Decomposition, x: torch.Tensor, cfg: DistillCfg | None, step: int):
    """(acts, logits, Fisher weights or None): the one teacher pass a step (or an eval batch) needs;
    the weights' sampled labels are seeded by (seed, step), so a resumed run sees the same ones."""
    if cfg is not None and cfg.fisher:
        return capture_fisher(d, x, cfg.seed * 1_000_003 + step + 500_000_000)
    acts, logits = capture(d, x)
    return acts, logits, None


@torch.no_grad()
def validation_mse(d: Decomposition, jobs: list[Job], batches: list[torch.Tensor],
                   cfg: DistillCfg | None = None) -> dict[str, float]:
    """Validation loss of every job on the eval batches (modules in eval mode): normalised MSE,
    plus the suffix KL term where `cfg` asks for it (`job_loss`)."""
    sums = {j.key: 0.0 for j in jobs}
    for b, x in enumerate(batches):
        acts, logits, fisher = teacher_pass(d, x, cfg, -1 - b)
        for j in jobs:
            was = j.module.training
            j.module.eval()
            sums[j.key] += float(job_loss(d, j, j.module(acts[j.first]), acts, logits, cfg, fisher))
            j.module.train(was)
    return {k: v / max(1, len(batches)) for k, v in sums.items()}


@torch.no_grad()
def recalibrate_bn(d: Decomposition, jobs: list[Job], batches: list[torch.Tensor]) -> None:
    """Re-estimate BatchNorm statistics at the deploy resolution (distillation may have run at a
    lower one): cumulative averages over `batches` of teacher inputs."""
    if not batches:
        return
    for j in jobs:
        j.module.eval()

    def forward():
        for x in batches:
            acts, _ = capture(d, x)
            for j in jobs:
                j.module(acts[j.first])

    estimate_bn([j.module for j in jobs], forward)


def _snapshot(jobs: list[Job]) -> dict[str, dict]:
    return {j.key: {k: v.detach().clone() for k, v in j.module.state_dict().items()} for j in jobs}


@torch.no_grad()
def keep_better(jobs: list[Job], mse_now: dict, mse_then: dict, then: dict[str, dict]) -> dict:
    """Per job, restore the `then` weights where they had the lower validation MSE. Returns the
    validation MSE of what is kept."""
    kept = dict(mse_now)
    for j in jobs:
        if j.key in then and mse_then.get(j.key, float("inf")) < mse_now.get(j.key, float("inf")):
            j.module.load_state_dict(then[j.key])
            kept[j.key] = mse_then[j.key]
    return kept


@torch.no_grad()
def refit_jobs(d: Decomposition, jobs: list[Job], train_set, cfg: DistillCfg, images: int = 64,
               device: torch.device | None = None) -> int:
    """Least-squares start of every candidate's read-out on un-augmented-seed training batches
    (seeds disjoint from the training steps'). Returns how many candidates it refitted."""
    from ..ops.refit import refit_readout

    n_batches = max(1, images // cfg.batch_size)
    xs = [batch_for_step(train_set, -1 - k, cfg.batch_size, cfg.seed).to(device or "cpu") for k in range(n_batches)]
    acts = [capture(d, x)[0] for x in xs]
    done = 0
    for j in jobs:
        x = torch.cat([a[j.first] for a in acts])
        t = torch.cat([a[j.last + 1] for a in acts])
        done += bool(refit_readout(j.module, x, t))
    return done


class Checkpointer:
    """Per-group checkpoint files + one `state.json` commit point, written atomically.

    Files of step S are written first, then state.json names S, then older files are removed: a
    kill at any moment leaves a complete, consistent step to resume from.
    """

    def __init__(self, folder: Path, fingerprint: str):
        self.dir = Path(folder)
        self.fp = fingerprint

    def state(self) -> dict | None:
        p = self.dir / "state.json"
        if not p.exists():
            return None
        try:
            return json.loads(p.read_text())
        except json.JSONDecodeError:
            raise UserError(f"checkpoint {p} is corrupt; rerun with --restart") from None

    def save(self, step: int, groups: list[Group], extra: dict) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        for gi, g in enumerate(groups):
            blob = {"step": step, "modules": {j.key: j.module.state_dict() for j in g.jobs},
                    "opt": g.opt.state_dict()}
            atomic.write_with(self.dir / f"g{gi:03d}.s{step:07d}.pt", lambda tmp, b=blob: torch.save(b, tmp))
        atomic.write_json(self.dir / "state.json", {"step": step, "fingerprint": self.fp,
                                                    "groups": len(groups), **extra})
        for f in self.dir.glob("g*.s*.pt"):
            if not f.name.endswith(f".s{step:07d}.pt"):
                f.unlink(missing_ok=True)

    def load(self, groups: list[Group]) -> int:
        st = self.state()
        step = st["step"]
        if st.get("groups") != len(groups):
            raise UserError("checkpoint was made with another grouping; rerun with --restart")
        for gi, g in enumerate(groups):
            blob = torch.load(self.dir / f"g{gi:03d}.s{step:07d}.pt", map_location="cpu", weights_only=True)
            for j in g.jobs:
                j.module.load_state_dict(blob["modules"][j.key])
            g.opt.load_state_dict(blob["opt"])
        return step


def distill(d: Decomposition, train_set, eval_set, cfg: DistillCfg, out_dir: Path, fingerprint: str,
            resume: bool = False, restart: bool = False, rank: int = 0, world: int = 1,
            eval_images: int = 64, bn_set=None, bn_batches: int = 4, full_set=None,
            only_spans: bool = False, only_ops: set[str] | None = None,
            only_keys: set[tuple[int, int, str]] | None = None) -> dict:
    """Train every candidate; write `slot<name>.safetensors` + `.json` into `out_dir`.

    `bn_set`: training images at the deploy resolution, for re-estimating BatchNorm statistics
    after training (None: keep the statistics from training).
    `full_set`: augmented training images at the deploy resolution for the last
    `cfg.full_res_steps` steps (cheap low-resolution steps first, then a few at full resolution).

    Returns a summary (jobs, steps, seconds, validation MSE per candidate).
    """
    teacher_modules_eval(d)
    if not 0.0 <= cfg.fisher <= 1.0:
        raise UserError(f"distill.fisher must be between 0 and 1, not {cfg.fisher}")
    dev = resolve_device(cfg.device)
    amp, amp_dtype = autocast_of(dev)
    t_plan = time.time()
    jobs = plan_jobs(d, cfg, rank, world, only_spans=only_spans, only_ops=only_ops, only_keys=only_keys)
    fmt = torch.channels_last if dev.type == "cuda" else torch.contiguous_format
    for m in (d.stem, d.head, *d.blocks, *(j.module for j in jobs)):
        m.to(dev, memory_format=fmt)
    scaler = torch.amp.GradScaler("cuda", enabled=amp and amp_dtype == torch.float16)
    jobs = [j for j in jobs if _trainable(j)] + [j for j in jobs if not _trainable(j)]
    trainable = [j for j in jobs if _trainable(j)]
    groups = make_groups(trainable, cfg.batch_size, cfg.group_mb)
    for g in groups:
        g.opt = adamw([p for j in g.jobs for p in j.module.parameters() if p.requires_grad], cfg.lr)
    ckpt = Checkpointer(out_dir / "ckpt" / f"rank{rank}", fingerprint)
    st = ckpt.state()
    t_start = time.time()
    evb = [b.to(dev) for b in eval_batches(eval_set, eval_images, cfg.batch_size)]
    start = 0
    if st is not None and not restart:
        if st.get("fingerprint") != fingerprint:
            raise UserError(f"{out_dir} holds a distillation made by another configuration; "
                            "rerun with --restart to discard it")
        if not resume:
            raise UserError(f"{out_dir} holds a partial distillation (step {st['step']}/{cfg.steps}); "
                            "pass --resume to continue it or --restart to discard it")
        start = ckpt.load(groups)
        mse_init, mse_refit = st["mse_init"], st.get("mse_refit", {})
        if st.get("scaler"):
            scaler.load_state_dict(st["scaler"])
    else:
        mse_init = validation_mse(d, jobs, evb, cfg)
        before = _snapshot(jobs) if cfg.keep_best else {}
        refit_jobs(d, jobs, train_set, cfg, device=dev)
        mse_refit = validation_mse(d, jobs, evb, cfg)
        if cfg.keep_best:  # a refit on few samples (late, low-resolution slots) can be worse than none
            mse_refit = keep_better(jobs, mse_refit, mse_init, before)
            ckpt.dir.mkdir(parents=True, exist_ok=True)
            atomic.write_with(ckpt.dir / "start.pt", lambda tmp: torch.save(_snapshot(jobs), tmp))
    t0 = time.time()
    timings = {"plan_s": t_start - t_plan, "start_s": t0 - t_start}
    step_s: dict[bool, list[float]] = {False: [], True: []}   # by "at the deploy resolution"
    bar = progress(cfg.steps, start, f"distill {len(trainable)} candidates")
    for j in trainable:
        set_train_mode(j.module, cfg.bn)
    full_from = cfg.steps - cfg.full_res_steps if full_set is not None and cfg.full_res_steps > 0 else cfg.steps
    batches = step_batches(train_set, full_set, full_from, start, cfg.steps, cfg.batch_size, cfg.seed, dev)
    step_fn = lambda x, step, zero=True: train_step(d, groups, x, cfg, step, amp, amp_dtype, scaler,  # noqa: E731
                                                   zero_grad=zero)
    graphed, lrs = None, []
    if cfg.cuda_graph:
        why = graph_refusal(dev, scaler, cfg)
        if why:
            print(f"hant-trt: distill.cuda_graph ignored: {why}", file=sys.stderr, flush=True)
        else:
            from .graphed import GraphedStep, make_capturable

            lrs = make_capturable([g.opt for g in groups], dev)
            # the step index only seeds Fisher labels, which graphs refuse: any value replays the same
            graphed = GraphedStep(lambda x: step_fn(x, 0, zero=False), [j.module for j in trainable],
                                  [g.opt for g in groups])
    t_step = time.time()
    for step, x in zip(range(start, cfg.steps), batches):
        x = x.to(dev, non_blocking=True).contiguous(memory_format=fmt)
        lr = lr_at(step, cfg.steps, cfg.lr, cfg.warmup_steps)
        if graphed is not None:
            for t in lrs:
                t.fill_(lr)
            loss_sum = graphed(x)
        else:
            for g in groups:
                for pg in g.opt.param_groups:
                    pg["lr"] = lr
            loss_sum = step_fn(x, step)
        bar.update(1)
        bar.set_postfix(loss=f"{float(loss_sum) / max(1, len(trainable)):.4f}")   # float(): the step has run
        step_s[step >= full_from].append(time.time() - t_step)
        done = step + 1
        if done % cfg.checkpoint_every == 0 or done == cfg.steps:
            ckpt.save(done, groups, {"mse_init": mse_init, "mse_refit": mse_refit,
                                     "scaler": scaler.state_dict() if scaler.is_enabled() else None})
        if _STEP_DELAY:  # test hook: slows steps so a test can kill the process mid-run
            time.sleep(_STEP_DELAY)
        t_step = time.time()
    bar.close()
    t_loop = time.time()
    if bn_set is not None and bn_batches and cfg.bn_recalibrate:
        recalibrate_bn(d, trainable, [b.to(dev) for b in eval_batches(bn_set, bn_batches * cfg.batch_size, cfg.batch_size)])
    mse_final = validation_mse(d, jobs, evb, cfg)
    start_p = ckpt.dir / "start.pt"
    if cfg.keep_best and start_p.exists():
        start_w = torch.load(start_p, map_location=dev, weights_only=True)
        mse_final = keep_better(jobs, mse_final, mse_refit, start_w)
    summary = write_slot_files(jobs, out_dir, mse_init, mse_refit, mse_final, rank, world)
    timings.update(loop_s=t_loop - t0, finish_s=time.time() - t_loop, **_step_medians(step_s))
    summary.update(steps=cfg.steps, seconds=round(time.time() - t0, 1), candidates=len(jobs),
                   timings={k: round(v, 4) for k, v in timings.items()})
    return summary


def _step_medians(step_s: dict[bool, list[float]]) -> dict[str, float]:
    """Median seconds of a step at the low and at the deploy resolution, the first of each left out
    (allocations, cuDNN's autotuning, a CUDA graph's capture): what a longer run's steps cost."""
    out = {}
    for full, key in ((False, "step_low_s"), (True, "step_full_s")):
        xs = sorted(step_s[full][1:] or step_s[full])
        if xs:
            out[key] = xs[len(xs) // 2]
    return out


def write_slot_files(jobs: list[Job], out_dir: Path, mse_init: dict, mse_refit: dict, mse_final: dict,
                     rank: int, world: int) -> dict:
    """One safetensors file per slot/span (`<op>::<param>` keys) + a JSON listing its candidates."""
    target = out_dir if world == 1 else out_dir / f"rank{rank}"
    by_slot: dict[str, list[Job]] = {}
    for j in jobs:
        by_slot.setdefault(j.slot.name, []).append(j)
    for name, js in by_slot.items():
        tensors = {f"{j.op}::{k}": v for j in js for k, v in j.module.state_dict().items()}
        atomic.save_tensors(target / f"slot{name}.safetensors", tensors) if tensors else None
        atomic.write_json(target / f"slot{name}.json", {
            "slot": name, "first": js[0].first, "last": js[0].last,
            "candidates": [{"op": j.op, "inherits": j.inherits, "mse_init": mse_init.get(j.key),
                            "mse_refit": mse_refit.get(j.key), "mse_final": mse_final.get(j.key), "has_weights": bool(j.module.state_dict())}
                           for j in js],
        })
    prune_stale_slot_files(target, {f"slot{name}" for name in by_slot})
    return {"mse_init": mse_init, "mse_final": mse_final}


def merge_slot_files(sources: list[tuple[Path, set | None]], out: Path) -> int:
    """The slot files of several folders (ranks; a run and candidates added to it) as one set in
    `out`, which may be one of them. sources: (folder, keep) — keep: the (first, last, op) taken
    from that folder (None: all). The candidates of a slot sorted by op; slot files of `out` that
    no source has are removed; a candidate from two sources is an error. Returns the number of
    candidates."""
    from safetensors.torch import load_file

    names = sorted({p.stem for src, _ in sources for p in Path(src).glob("slot*.json")})
    total, written = 0, set()
    for name in names:
        tensors, meta = {}, None
        for src, keep in sources:
            jp = Path(src) / f"{name}.json"
            if not jp.exists():
                continue
            m = json.loads(jp.read_text())
            meta = meta or {k: v for k, v in m.items() if k != "candidates"} | {"candidates": []}
            kept = [c for c in m["candidates"] if keep is None or (m["first"], m["last"], c["op"]) in keep]
            meta["candidates"] += kept
            sp = Path(src) / f"{name}.safetensors"
            if sp.exists():
                ops = {c["op"] for c in kept}
                tensors.update({k: v for k, v in load_file(str(sp)).items() if k.split("::")[0] in ops})
        meta["candidates"].sort(key=lambda c: c["op"])
        ops = [c["op"] for c in meta["candidates"]]
        if len(set(ops)) != len(ops):
            raise RuntimeError(f"{name}: a candidate was trained more than once ({ops})")
        if not ops:
            continue
        if tensors:
            atomic.save_tensors(out / f"{name}.safetensors", dict(sorted(tensors.items())))
        else:       # weightless candidates alone (`skip`): no stale tensors of another set
            (out / f"{name}.safetensors").unlink(missing_ok=True)
        atomic.write_json(out / f"{name}.json", meta)
        written.add(name)
        total += len(ops)
    prune_stale_slot_files(out, written)
    return total


def prune_stale_slot_files(folder: Path, keep: set[str]) -> None:
    """Remove slot files of an earlier distillation of other slots: later stages read every
    `slot*.json` in the folder."""
    for f in list(Path(folder).glob("slot*.json")) + list(Path(folder).glob("slot*.safetensors")):
        if f.stem not in keep:
            f.unlink(missing_ok=True)
