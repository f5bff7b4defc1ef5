"""The command-line side of observability: ``flowstate checkpoints doctor DIR`` and ``flowstate ui
DIR`` (the dashboard of a stopped job, from what is on disk)."""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path

from flowstate.errors import ConfigError
from flowstate.observe.dashboard import view_of
from flowstate.observe.doctor import diagnose, facts_of, format_findings
from flowstate.observe.history import read_history

log = logging.getLogger("flowstate")


def _directory(location: str) -> Path:
    path = Path(location)
    if not path.is_dir():
        raise ConfigError(f"{location} is not a directory (the doctor and the dashboard read local checkpoint directories)")
    return path


def doctor(location: str, as_json: bool = False) -> int:
    """Print the findings; exit 0 when there is none, 1 otherwise."""
    events = read_history(_directory(location))
    facts = facts_of(events)
    findings = diagnose(facts)
    if as_json:
        print(json.dumps([{"rule": f.rule.value, "severity": f.severity.value, "sentence": f.sentence,
                           "suggestion": f.suggestion} for f in findings], indent=2))
    else:
        if not facts.checkpoints:
            print(f"No checkpoint history in {location}.")
        else:
            print(format_findings(findings, len(facts.checkpoints)))
    return 1 if findings else 0


def ui(location: str, host: str, port: int, stop: threading.Event | None = None) -> int:
    """Serve the dashboard of the checkpoint directory until interrupted (or ``stop`` is set)."""
    from flowstate.observe.server import HttpServer

    directory = _directory(location)

    def view():  # type: ignore[no-untyped-def]
        return view_of(read_history(directory), state="stopped", live=True)

    server = HttpServer(host, port, view, lambda: None, what="dashboard")
    print(f"dashboard of {directory} on {server.url} (Ctrl-C to stop)", flush=True)
    try:
        (stop or threading.Event()).wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.close()
    return 0
