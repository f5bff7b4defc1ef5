"""Logging of the command line: ``--log-level`` and ``--log-format text|json``.

JSON lines carry ``time`` (ISO 8601, UTC), ``level``, ``logger``, ``message`` and, for an error with
a traceback, ``exception``; one object per line, for log collectors."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import TextIO

LEVELS = ("debug", "info", "warning", "error")
FORMATS = ("text", "json")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def setup(level: str = "info", fmt: str = "text", stream: TextIO | None = None) -> None:
    """Route the ``flowstate`` logger to ``stream`` (stderr) at ``level`` in format ``fmt``."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter("flowstate: %(message)s"))
    logger = logging.getLogger("flowstate")
    logger.handlers[:] = [handler]
    logger.setLevel(level.upper())
    logger.propagate = False
