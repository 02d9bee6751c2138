"""The distillation step replayed as a CUDA graph, one graph per input shape.

Why: phase 1 trains a hundred or more small candidates per step, each a handful of small kernels
forward and backward. On a GPU the step is then bound by kernel launches and Python, not by the
GPU (the H200 ran 480 `tiny` steps in 246 s, mostly idle). Captured once, a step is one
`replay()`: the same kernels, launched by the driver from a recorded list.

What must hold for a replay to be the eager step: every tensor it reads or writes keeps its address
(the input is copied into a static tensor; parameters, gradients and optimizer state are updated
in place; the learning rate lives in a device tensor the caller fills); the optimizers are
capturable (their step counters on the device). Capturing needs a few warm-up runs of the step on a
side stream; those would train, so parameters, buffers and optimizer state are saved before and
copied back in place after, and the first replayed step starts where the eager loop would.

Never ran on a GPU yet (written from PyTorch's CUDA-graph documentation; the CPU suite checks only
that the eager path is unchanged): `distill.cuda_graph` is opt-in.
"""

from __future__ import annotations

from typing import Callable

import torch


def make_capturable(optimizers: list[torch.optim.Optimizer], device: torch.device) -> list[torch.Tensor]:
    """Optimizers switched to capturable with their learning rate as a device tensor (one per
    optimizer, returned: fill them before a replay); existing state moves to the device."""
    lrs = []
    for opt in optimizers:
        lr = torch.tensor(float(opt.param_groups[0]["lr"]), device=device)
        for pg in opt.param_groups:
            pg["capturable"] = True
            pg["lr"] = lr
        for state in opt.state.values():
            for k, v in list(state.items()):
                if torch.is_tensor(v):
                    state[k] = v.to(device, dtype=torch.float32) if k == "step" else v.to(device)
        lrs.append(lr)
    return lrs


class GraphedStep:
    """`step_fn(x) -> loss` (forward, backward and optimizer steps, no zero_grad) as CUDA graphs.

    `modules`: every module whose parameters or buffers the step changes; `optimizers`: theirs,
    already capturable (`make_capturable`)."""

    def __init__(self, step_fn: Callable[[torch.Tensor], torch.Tensor], modules: list[torch.nn.Module],
                 optimizers: list[torch.optim.Optimizer], warmup: int = 3):
        self.step_fn, self.modules, self.optimizers, self.warmup = step_fn, modules, optimizers, warmup
        self.graphs: dict[tuple, tuple] = {}

    def _saved(self) -> tuple[list, list]:
        weights = [{k: v.detach().clone() for k, v in m.state_dict(keep_vars=True).items()} for m in self.modules]
        states = [{id(p): {k: v.detach().clone() if torch.is_tensor(v) else v for k, v in s.items()}
                   for p, s in opt.state.items()} for opt in self.optimizers]
        return weights, states

    @torch.no_grad()
    def _restore(self, saved: tuple[list, list]) -> None:
        weights, states = saved
        for m, w in zip(self.modules, weights):
            for k, v in m.state_dict(keep_vars=True).items():
                v.copy_(w[k])
        for opt, st in zip(self.optimizers, states):
            for p, s in opt.state.items():
                before = st.get(id(p))
                for k, v in s.items():
                    if before is None:      # state made by the warm-up itself: start from zero
                        if torch.is_tensor(v):
                            v.zero_()
                    elif torch.is_tensor(v):
                        v.copy_(before[k])

    def _capture(self, x: torch.Tensor) -> tuple:
        static_x = x.detach().clone()
        saved = self._saved()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(self.warmup):
                for opt in self.optimizers:
                    opt.zero_grad(set_to_none=True)
                self.step_fn(static_x)
        torch.cuda.current_stream().wait_stream(side)
        self._restore(saved)
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=True)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            loss = self.step_fn(static_x)
        # capturing ran nothing; the weights are still the saved ones
        return graph, static_x, loss

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        key = (tuple(x.shape), x.dtype)
        if key not in self.graphs:
            self.graphs = {key: self._capture(x)}      # one shape at a time: the other's pool is freed
        graph, static_x, loss = self.graphs[key]
        static_x.copy_(x)
        graph.replay()
        return loss
