"""Fixtures of the broker connector tests: the servers they need, and names no other test uses.

A service that does not answer skips its tests with the reason, except in CI (the variable ``CI`` is
set), where it fails them: CI must never pass by skipping what it was meant to prove.
"""

from __future__ import annotations

import json
import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

NATS_URL = os.environ.get("FLOWSTATE_NATS_URL", "nats://127.0.0.1:4222")
REDIS_URL = os.environ.get("FLOWSTATE_REDIS_URL", "redis://127.0.0.1:6379/0")


def _answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def require_service(what: str, host: str, port: int) -> None:
    if _answers(host, port):
        return
    reason = f"{what} does not answer on {host}:{port}"
    if os.environ.get("CI"):
        pytest.fail(f"{reason}, and CI must run the broker tests (see .ci/run)")
    pytest.skip(reason)


@pytest.fixture
def nats_url() -> str:
    pytest.importorskip("nats")
    require_service("NATS (JetStream)", "127.0.0.1", int(NATS_URL.rsplit(":", 1)[1]))
    return NATS_URL


@pytest.fixture
def redis_url() -> str:
    pytest.importorskip("redis")
    require_service("Redis", "127.0.0.1", int(REDIS_URL.rsplit(":", 1)[1].split("/")[0]))
    return REDIS_URL


@pytest.fixture
def unique() -> str:
    """A name no other test (nor another run of this one) uses: for streams, subjects and keys."""
    return f"t{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """``FLOWSTATE_KAFKA_BOOTSTRAP`` (a real broker) or librdkafka's mock cluster, kept alive by the
    producer that created it for the whole session (its listener is real TCP on 127.0.0.1)."""
    pytest.importorskip("confluent_kafka")
    real = os.environ.get("FLOWSTATE_KAFKA_BOOTSTRAP")
    if real:
        yield real
        return
    from confluent_kafka import Producer

    holder = Producer({"test.mock.num.brokers": 1, "log_level": 3})
    brokers = holder.list_topics(timeout=10).brokers.values()
    yield ",".join(f"{b.host}:{b.port}" for b in brokers)
    holder.flush(1)


def on_mock_cluster() -> bool:
    return not os.environ.get("FLOWSTATE_KAFKA_BOOTSTRAP")


def covered_lines(chk: Path) -> int:
    """The most lines the sources had read up to the barriers of a completed checkpoint in ``chk``
    (``extra.source_records`` of its metadata; 0 without one)."""
    covered = 0
    for metadata in chk.glob("chk-*/_metadata"):
        try:
            extra = json.loads(metadata.read_text()).get("extra") or {}
        except (OSError, ValueError):
            continue  # being written: complete on a later look
        covered = max(covered, int(extra.get("source_records") or 0))
    return covered
