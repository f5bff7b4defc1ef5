"""Durations as users write them: seconds (``int``/``float``), strings and ``timedelta``.

Rules:

1. A number is seconds. A ``timedelta`` is its total seconds.
2. A string is one or more ``<number><unit>`` terms, summed: ``"500ms"``, ``"30m"``, ``"1h30m"``,
   ``"1.5s"``. Units: ``us``, ``ms``, ``s``, ``m``, ``h``, ``d``. A leading ``-`` negates the whole
   string (``"-5m"``); a bare number string is seconds.
3. Negative durations are refused unless ``allow_negative``; ``bool``, ``None``, NaN and infinity
   are always refused. Refusals raise ``ValueError`` naming what was given and the accepted forms.
"""

from __future__ import annotations

import math
import re
from datetime import timedelta
from typing import Any

_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_TERM = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*(us|ms|s|m|h|d)")
_FORMS = "seconds (a number), a timedelta, or a string such as '500ms', '30s', '5m', '1h30m'"


def parse_duration(value: Any, what: str = "duration", *, allow_negative: bool = False) -> float:
    """Seconds of ``value`` (rules 1-3)."""
    if isinstance(value, bool) or value is None:
        raise ValueError(f"{what}: expected {_FORMS}, got {value!r}")
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str):
        seconds = _parse_string(value, what)
    else:
        raise ValueError(f"{what}: expected {_FORMS}, got {value!r}")
    if not math.isfinite(seconds):
        raise ValueError(f"{what}: must be finite, got {value!r}")
    if seconds < 0 and not allow_negative:
        raise ValueError(f"{what}: must not be negative, got {value!r}")
    return seconds


def _parse_string(text: str, what: str) -> float:
    s = text.strip().lower()
    sign = 1.0
    if s.startswith("-"):
        sign, s = -1.0, s[1:].strip()
    if not s:
        raise ValueError(f"{what}: expected {_FORMS}, got {text!r}")
    try:
        return sign * float(s)
    except ValueError:
        pass
    position, total = 0, 0.0
    for match in _TERM.finditer(s):
        if s[position:match.start()].strip():
            raise ValueError(f"{what}: cannot read {text!r}; expected {_FORMS}")
        total += float(match.group(1)) * _UNITS[match.group(2)]
        position = match.end()
    if position == 0 or s[position:].strip():
        raise ValueError(f"{what}: cannot read {text!r}; expected {_FORMS}")
    return sign * total
