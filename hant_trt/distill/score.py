"""Swap-one scoring: each candidate alone in the teacher, measured against the teacher.

Per eval batch the teacher runs once (every slot's input captured = the prefix up to each slot,
computed once and shared by all that slot's candidates); each candidate then runs on its slot's
input and the teacher's suffix produces logits.

Resumable: with a checkpoint file the sums so far are written (atomically) every `every_s` seconds,
and a killed score continues from them; the loader is not shuffled, so the result is the same as
an uninterrupted one.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ..teacher.capture import capture, normalised_mse, suffix
from ..teacher.decompose import Decomposition
from .pool import TrainedPart


@dataclass
class _Acc:
    agree: int = 0
    correct: int = 0
    kl: float = 0.0
    mse: float = 0.0
    n: int = 0
    batches: int = 0

    def add(self, logits: torch.Tensor, t_top: torch.Tensor, t_logp: torch.Tensor, y, labelled: bool) -> None:
        """One eval batch's logits against the teacher's top-1 and log-probabilities."""
        self.agree += int((logits.argmax(1) == t_top).sum())
        if labelled:
            self.correct += int((logits.argmax(1) == y).sum())
        self.kl += float(F.kl_div(F.log_softmax(logits, 1), t_logp, log_target=True, reduction="sum"))
        self.n += logits.shape[0]

    def metrics(self, labelled: bool) -> dict:
        return {"agreement": 100.0 * self.agree / max(1, self.n), "kl": self.kl / max(1, self.n),
                "top1": (100.0 * self.correct / self.n) if labelled and self.n else None,
                "local_mse": self.mse / max(1, self.batches)}


def _resumed(checkpoint: Path | None, fingerprint: str, keys: list[str]) -> tuple[int, dict[str, _Acc]]:
    """(batches done, sums) of an earlier score of the same entries and settings, else (0, {})."""
    if checkpoint is None or not checkpoint.is_file():
        return 0, {}
    try:
        st = json.loads(checkpoint.read_text())
        if st.get("fingerprint") != fingerprint or sorted(st["accs"]) != sorted(keys):
            return 0, {}
        return int(st["batches"]), {k: _Acc(**v) for k, v in st["accs"].items()}
    except (OSError, ValueError, KeyError, TypeError):      # unreadable: score from the start
        return 0, {}


@torch.no_grad()
def score_candidates(d: Decomposition, entries: list[TrainedPart], eval_loader, labelled: bool, progress=None,
                     device=None, checkpoint: Path | None = None, fingerprint: str = "",
                     every_s: float = 30.0) -> dict:
    """Each entry's key -> metrics dict. device: where the batches go (the caller puts the teacher
    and the modules there; None: where they come from). checkpoint: a file for the sums so far,
    resumed from when it holds `fingerprint` and the same entries."""
    from .. import atomic

    keys = [e.key for e in entries]
    done, accs = _resumed(checkpoint, fingerprint, keys)
    if done:
        print(f"hant-trt: score resumes after batch {done} ({checkpoint.name})", file=sys.stderr, flush=True)
        if progress is not None:
            progress.update(done)
    else:
        accs = {k: _Acc() for k in keys}
    saved = time.time()
    for b, (x, y) in enumerate(eval_loader):
        if b < done:
            continue
        if device is not None:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        acts, t_logits = capture(d, x)
        t_logp = F.log_softmax(t_logits, 1)
        t_top = t_logits.argmax(1)
        for e in entries:
            e.module.eval()
            out = e.module(acts[e.first])
            a = accs[e.key]
            a.add(suffix(d, out, e.last + 1), t_top, t_logp, y, labelled)
            a.mse += float(normalised_mse(out, acts[e.last + 1]))
            a.batches += 1
        if progress is not None:
            progress.update(1)
        if checkpoint is not None and time.time() - saved > every_s:
            atomic.write_json(checkpoint, {"fingerprint": fingerprint, "batches": b + 1,
                                           "accs": {k: asdict(a) for k, a in accs.items()}})
            saved = time.time()
    return {key: a.metrics(labelled) for key, a in accs.items()}


@torch.no_grad()
def score_fixed_int8(d: Decomposition, eval_loader, calib_batches: list[torch.Tensor], labelled: bool,
                     method: str = "max", layout=None) -> dict:
    """{"stem": {"int8": metrics}, "head": {"int8": metrics}}: the teacher with its stem (or head)
    alone in simulated int8 — calibrated on `calib_batches` (images) as `int8_entries` calibrates a
    slot — scored like any candidate (agreement, KL, top-1; local_mse 0: not a slot output)."""
    from ..quant.layouts import simulated_int8

    head_in = [capture(d, x)[0][-1] for x in calib_batches]
    q_stem = simulated_int8(d.stem, calib_batches, method, layout)
    q_head = simulated_int8(d.head, head_in, method, layout)
    accs = {"stem": _Acc(), "head": _Acc()}
    for x, y in eval_loader:
        acts, t_logits = capture(d, x)
        t_logp, t_top = F.log_softmax(t_logits, 1), t_logits.argmax(1)
        accs["stem"].add(suffix(d, q_stem(x), 0), t_top, t_logp, y, labelled)
        accs["head"].add(q_head(acts[-1]), t_top, t_logp, y, labelled)
    return {name: {"int8": a.metrics(labelled)} for name, a in accs.items()}
