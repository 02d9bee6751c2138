"""Paired timing: every round times each thing once, in order, and pairs stay within their round."""

from types import SimpleNamespace

from hant_trt.latency.paired import time_beside, time_in_rounds


class Clock:
    """A backend whose every timing is the next number, recording what it timed."""

    def __init__(self):
        self.calls, self.n = [], 0

    def time(self, thing, **kw):
        self.calls.append((thing, kw))
        self.n += 1
        return SimpleNamespace(median_s=float(self.n))


def test_rounds_time_every_thing_once_in_order():
    be = Clock()
    rounds = []
    got = time_in_rounds(be, ["a", "b", "c"], 2, on_round=rounds.append, max_seconds=0.5)
    assert got == [[1.0, 4.0], [2.0, 5.0], [3.0, 6.0]] and rounds == [0, 1]
    assert [t for t, _ in be.calls] == ["a", "b", "c"] * 2 and all(kw == {"max_seconds": 0.5} for _, kw in be.calls)
    assert time_in_rounds(Clock(), ["a"], 0) == [[1.0]]          # at least one round


def test_each_thing_is_timed_right_after_the_reference():
    be = Clock()
    got = time_beside(be, "t", ["s1", "s2"], 2)
    assert [t for t, _ in be.calls] == ["t", "s1", "t", "s2"] * 2
    assert got == [[(1.0, 2.0), (5.0, 6.0)], [(3.0, 4.0), (7.0, 8.0)]]
