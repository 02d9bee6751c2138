"""Budgets and limits as users write them: latency ("0.7x", "2ms", "0.002s", "speedup=1.5",
"int8x=1.2") and counts for params / MACs ("0.5x", "3.5M", "2e6").

"int8x=1.2" asks for 1.2x the speed of the whole teacher in plain int8 on the same engine (the
profile's `teacher_int8_s`): what hant-trt adds beyond quantizing the teacher, in the unit users
compare it by, and independent of how fast the fp32 teacher happened to time."""

from __future__ import annotations

import math
import re

from ..errors import UserError

_NUM = r"(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?"
_BUDGET = re.compile(rf"^\s*(?:(?P<x>{_NUM})\s*x|(?P<ms>{_NUM})\s*ms|(?P<us>{_NUM})\s*us|(?P<s>{_NUM})\s*s"
                     rf"|speedup\s*=\s*(?P<sp>{_NUM})\s*x?|int8x\s*=\s*(?P<i8>{_NUM})\s*x?)\s*$", re.IGNORECASE)
_COUNT = re.compile(rf"^\s*(?:(?P<x>{_NUM})\s*x|(?P<n>{_NUM})\s*(?P<unit>[kmg]?))\s*$", re.IGNORECASE)
_UNITS = {"": 1.0, "k": 1e3, "m": 1e6, "g": 1e9}
_FORMS = "0.7x, 2ms, 500us, 0.002s, speedup=1.5 or int8x=1.2"


def relative_budget(text: str) -> float | None:
    """The budget as a fraction of the teacher's latency ("0.7x" → 0.7, "speedup=2" → 0.5), or None
    for an absolute one or one relative to the int8 teacher; a UserError when it cannot be read.
    Needs no measurement, so a config can be checked before any stage runs."""
    m = _BUDGET.match(str(text))
    if not m:
        raise UserError(f"cannot read budget '{text}' (use {_FORMS})")
    if m["i8"] is not None and not float(m["i8"]) > 0:
        raise UserError(f"budget '{text}': the speedup over int8 must be positive")
    if m["sp"] is not None:
        if float(m["sp"]) <= 0:
            raise UserError(f"budget '{text}': the speedup must be positive")
        return 1.0 / float(m["sp"])
    if m["x"] is not None:
        if not float(m["x"]) > 0:
            raise UserError(f"budget '{text}' must be a positive, finite latency")
        return float(m["x"])
    return None


def is_int8x(text: str) -> bool:
    """Whether a latency budget is written relative to the teacher in plain int8 ("int8x=1.2")."""
    m = _BUDGET.match(str(text))
    return bool(m and m["i8"])


def parse_budget(text: str, teacher_s: float, teacher_int8_s: float | None = None) -> float:
    """Latency budget in seconds for one device.

    text: "0.7x" (fraction of the teacher's measured latency), "2ms", "500us", "0.002s",
    "speedup=1.5" (teacher latency / 1.5) or "int8x=1.2" (the int8 teacher's latency / 1.2).
    teacher_s / teacher_int8_s: the teacher's measured latency on that device, fp32 / plain int8.
    """
    m = _BUDGET.match(str(text))
    if not m:
        raise UserError(f"cannot read budget '{text}' (use {_FORMS})")
    if (m["x"] or m["sp"]) and not (teacher_s and teacher_s > 0):
        raise UserError(f"budget '{text}' is relative to the teacher, whose latency is unknown: re-run profile")
    if m["i8"] and not (teacher_int8_s and teacher_int8_s > 0):
        raise UserError(f"budget '{text}' is relative to the teacher in int8, which the profile did not time "
                        "(profile.precisions needs int8)")
    relative_budget(text)                    # a relative form's number must be positive
    if m["i8"]:
        v = teacher_int8_s / float(m["i8"])
    elif m["x"]:
        v = teacher_s * float(m["x"])
    elif m["ms"]:
        v = float(m["ms"]) / 1e3
    elif m["us"]:
        v = float(m["us"]) / 1e6
    elif m["s"]:
        v = float(m["s"])
    else:
        v = teacher_s / float(m["sp"])
    if not (math.isfinite(v) and v > 0):
        raise UserError(f"budget '{text}' must be a positive, finite latency")
    return v


def parse_count(text: str | float | int | None, teacher_total: float, what: str = "params") -> float | None:
    """A params / MACs limit as a number, or None when `text` is None or empty.

    text: "0.5x" (fraction of the teacher's total over the replaceable slots), "3.5M", "1.2G", "800k",
    a plain number, or a number. teacher_total: Σ over slots of the teacher's own params (or MACs).
    what: name used in error messages.
    """
    if text is None or text == "":
        return None
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        v = float(text)
    else:
        m = _COUNT.match(str(text))
        if not m:
            raise UserError(f"cannot read the {what} limit '{text}' (use 0.5x, 3.5M, 1.2G or a number)")
        if m["x"]:
            if not teacher_total > 0:
                raise UserError(f"{what} limit '{text}' is relative to the teacher, whose {what} are unknown")
            v = float(m["x"]) * teacher_total
        else:
            v = float(m["n"]) * _UNITS[m["unit"].lower()]
    if not (math.isfinite(v) and v > 0):
        raise UserError(f"the {what} limit '{text}' must be positive")
    return v
