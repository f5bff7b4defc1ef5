"""Event time, pure: durations, watermarks, timer queues and window assignment.

Nothing in this package reads a clock, sleeps, spawns a thread or touches a file: processing time
(``now``) is a parameter, and every function returns values the runtime acts upon
(``flowstate.operators.windows``, ``.timers`` and ``.joins``). This is what lets scripted event
sequences and Hypothesis models test the rules below exactly.

Time is a float number of **seconds** (since the epoch for event time). A watermark ``W`` asserts
that no record with a timestamp ``< W`` is still to come: a record with ``ts < W`` is *late*; an
event-time timer for ``t`` fires once ``W >= t``; a time window ``[start, end)`` fires once
``W >= end``.
"""

from flowstate.time.duration import parse_duration
from flowstate.time.watermarks import (
    MAX_WATERMARK,
    MIN_WATERMARK,
    ChannelWatermarks,
    SplitWatermarks,
    Watermark,
)

__all__ = [
    "MAX_WATERMARK", "MIN_WATERMARK", "ChannelWatermarks", "SplitWatermarks", "Watermark", "parse_duration",
]
