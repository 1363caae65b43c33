"""Re-queue an index's rows: all of them (the worker's own backfill, in short steps), or those matching
a condition that the caller gives, run with the caller's rights and never stored for a worker to run."""
from __future__ import annotations

from typing import Callable

import psycopg
from psycopg import sql

from .errors import SemsearchError


class BadFilter(SemsearchError):
    """A --where that is not one SQL condition on the index's table."""


def filtered_keys(conn: psycopg.Connection, index: str, where: str) -> list[str]:
    """Keys of the rows of the index's table that match `where`, a single SQL condition.

    The condition is sent as one prepared statement, so the server refuses a second statement; it runs
    with the caller's rights, and nothing of it is stored.
    """
    if not where or not where.strip():
        raise BadFilter("--where is empty: give a SQL condition on the table, e.g. \"id > 1000\", "
                        "or leave it out to queue every row")
    key_sql, source = conn.execute(
        "SELECT semsearch.key_text_sql(ix, 't'), ix.source::text FROM semsearch.lookup_index(%s) ix",
        (index,)).fetchone()
    # key_sql and source come from the catalog (semsearch.key_text_sql), not from the caller.
    query = sql.SQL("SELECT {} FROM {} t WHERE ({})").format(sql.SQL(key_sql), sql.SQL(source), sql.SQL(where))
    try:
        with conn.transaction():
            return [r[0] for r in conn.execute(query, prepare=True).fetchall()]
    except psycopg.Error as exc:
        diag = getattr(exc, "diag", None)
        message = (diag.message_primary if diag and diag.message_primary else str(exc)).strip()
        raise BadFilter(f"--where {where!r} is not one SQL condition on {source}: {message}") from None


def queue_keys(conn: psycopg.Connection, index: str, keys: list[str], step: int,
               on_progress: Callable[[int], None] | None = None) -> int:
    """Queue keys for the worker, `step` per short transaction."""
    index_id = conn.execute("SELECT (semsearch.lookup_index(%s)).id", (index,)).fetchone()[0]
    for start in range(0, len(keys), step):
        chunk = keys[start:start + step]
        conn.execute("INSERT INTO semsearch.queue (index_id, keys) VALUES (%s, %s)", (index_id, chunk))
        conn.execute("SELECT pg_notify('semsearch', %s)", (str(index_id),))
        conn.commit()
        if on_progress:
            on_progress(len(chunk))
    return len(keys)


def backfill_all(conn: psycopg.Connection, index: str, step: int,
                 on_progress: Callable[[int], None] | None = None) -> int:
    """Queue every row of the index's table in key order, a short transaction per step."""
    conn.execute("SELECT semsearch.request_backfill(%s)", (index,))
    conn.commit()
    queued = 0
    while step_rows := conn.execute("SELECT semsearch.backfill_step(%s, %s)", (index, step)).fetchone()[0]:
        conn.commit()
        queued += step_rows
        if on_progress:
            on_progress(step_rows)
    conn.commit()
    return queued


def table_rows(conn: psycopg.Connection, index: str) -> int:
    source = conn.execute("SELECT source FROM semsearch.lookup_index(%s)", (index,)).fetchone()[0]
    estimate = conn.execute("SELECT reltuples::bigint FROM pg_class WHERE oid = %s::regclass", (source,)).fetchone()[0]
    return max(estimate, 0)
