"""Timing things beside each other: in each round every thing is timed once, back to back, so all
of them see the same machine state and the host's drift between rounds cancels out of their
ratios and differences. Every comparison of two timings (a swap in the teacher, a junction, a
student beside its teacher) is taken this way."""

from __future__ import annotations

from typing import Callable, Sequence


def time_in_rounds(backend, things: Sequence, rounds: int, on_round: Callable[[int], None] | None = None,
                   **time_kw) -> list[list[float]]:
    """Per thing (prepared on `backend`), its median latency in each of `rounds` rounds (at least
    one); within a round the things are timed in order. time_kw goes to `backend.time`;
    on_round(r) is called after round r (0-based)."""
    times: list[list[float]] = [[] for _ in things]
    for r in range(max(1, rounds)):
        for k, thing in enumerate(things):
            times[k].append(backend.time(thing, **time_kw).median_s)
        if on_round is not None:
            on_round(r)
    return times


def time_beside(backend, reference, others: Sequence, rounds: int, on_round: Callable[[int], None] | None = None,
                **time_kw) -> list[list[tuple[float, float]]]:
    """Per thing of `others`, its (reference s, thing s) pair of each round: in every round each
    of them is timed right after `reference`."""
    times = time_in_rounds(backend, [x for other in others for x in (reference, other)], rounds, on_round,
                           **time_kw)
    return [list(zip(times[2 * k], times[2 * k + 1])) for k in range(len(others))]
