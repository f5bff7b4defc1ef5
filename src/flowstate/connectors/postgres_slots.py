"""Listing and dropping the logical replication slots that ``PostgresCdcSource`` leaves on a server
(``flowstate postgres-slots DSN``): a slot of a job that no longer runs keeps WAL on the server."""

from __future__ import annotations

from typing import Any

from flowstate.connectors.postgres_cdc import PostgresCdcError


def list_slots(dsn: str) -> list[dict[str, Any]]:
    """The logical slots of the server with their plugin, whether a session uses them, the position
    they keep and the WAL they hold back (bytes)."""
    import psycopg

    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT slot_name, plugin, active, confirmed_flush_lsn::text, "
            "pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint, temporary "
            "FROM pg_replication_slots WHERE slot_type = 'logical' ORDER BY slot_name"
        ).fetchall()
    return [
        {"slot": r[0], "plugin": r[1], "active": r[2], "confirmed": r[3], "retained_bytes": r[4], "temporary": r[5]}
        for r in rows
    ]


def drop_slot(dsn: str, slot: str, publication: str | None = None) -> None:
    """Drop a source's durable slot and its publication (default ``{slot}_pub``)."""
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        if conn.execute("SELECT 1 FROM pg_replication_slots WHERE slot_name = %s", (slot,)).fetchone() is None:
            raise PostgresCdcError(f"no replication slot named {slot!r}")
        conn.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
        conn.execute(f'DROP PUBLICATION IF EXISTS "{publication or slot + "_pub"}"')
