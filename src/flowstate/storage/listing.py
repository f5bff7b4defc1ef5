"""Values as ``flowstate`` prints them: sizes in binary units, times in ISO-8601. (The tables that
use them are rendered in ``flowstate.render``.)"""

from __future__ import annotations

from datetime import datetime, tzinfo


def format_size(size: int) -> str:
    """``512 B``, ``1.5 KiB``, ``20.0 MiB``, ``3.2 GiB`` (GiB is the largest unit)."""
    if size < 1024:
        return f"{size} B"
    value = size / 1024
    for unit in ("KiB", "MiB"):
        # Compare the value as printed, so that 1048575 bytes is "1.0 MiB", not "1024.0 KiB".
        if round(value, 1) < 1024:
            return f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"


def format_size_short(size: int) -> str:
    """``format_size`` with three significant digits at most from 100 on: ``123 MiB``, ``12.3 MiB``."""
    text = format_size(size)
    number, unit = text.split(" ")
    return f"{float(number):.0f} {unit}" if "." in number and float(number) >= 100 else text


def format_time(timestamp: float, tz: tzinfo | None = None) -> str:
    """ISO-8601 to the second, with the UTC offset; local time when ``tz`` is ``None``."""
    try:
        # Without a zone, fromtimestamp gives naive local time; astimezone(None) adds its offset.
        return datetime.fromtimestamp(timestamp, tz).astimezone(tz).isoformat(timespec="seconds")
    except (OverflowError, OSError, ValueError):
        return repr(timestamp)
