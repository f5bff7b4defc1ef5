"""The record type of examples/clickstream_sessions.py. Records that are kept in state or cross
worker processes are pickled, so their class lives in an importable module (the directory of a job
file is on ``sys.path``), not in the job file itself."""

from typing import NamedTuple


class Click(NamedTuple):
    ts: float
    user: str
    url: str


def parse(line: str) -> Click:
    ts, user, url = line.split(",")
    return Click(float(ts), user, url)
