"""``PostgresSink`` passes the connector conformance kit against the real PostgreSQL server, in both
deliveries."""

from __future__ import annotations

import itertools
import uuid

import pytest

from flowstate.connectors.postgres import MARKER_TABLE, PostgresSink
from flowstate.testing.conformance import SINK_CHECKS, SinkCase, SinkTarget

from tests.connectors.test_postgres_sink import DSN, psycopg, server  # noqa: F401  (fixture)

RECORDS = [("w", i) for i in range(10)]


@pytest.fixture
def case_factory(server):  # noqa: F811
    """Each target a table of its own; every table and marker made by the test is dropped after it."""
    made: list[str] = []
    prefix = f"fs_conf_{uuid.uuid4().hex[:8]}"
    counter = itertools.count()

    def factory(delivery: str) -> SinkCase:
        def make_target() -> SinkTarget:
            table = f"{prefix}_{next(counter)}"
            with psycopg.connect(server, autocommit=True) as conn:
                conn.execute(f"CREATE TABLE {table} (id bigserial PRIMARY KEY, word text NOT NULL, n bigint NOT NULL)")
            made.append(table)

            def read() -> list[tuple]:
                with psycopg.connect(server) as conn:
                    return conn.execute(f"SELECT word, n FROM {table} ORDER BY id").fetchall()

            return SinkTarget(PostgresSink(table, server, columns=["word", "n"], delivery=delivery), read)

        return SinkCase(make_target, RECORDS, exactly_once=delivery == "exactly_once")

    yield factory
    with psycopg.connect(server, autocommit=True) as conn:
        for table in made:
            conn.execute(f"DROP TABLE IF EXISTS {table}")
        conn.execute(f"DELETE FROM {MARKER_TABLE} WHERE sink LIKE %s", (f"postgres-sink:{prefix}%",))


@pytest.mark.parametrize("delivery", ["exactly_once", "at_least_once"])
@pytest.mark.parametrize("check", list(SINK_CHECKS))
def test_the_postgres_sink_passes_every_sink_check(check, delivery, case_factory):
    SINK_CHECKS[check](case_factory(delivery))
