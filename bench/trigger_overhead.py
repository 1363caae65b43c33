"""Cost of semsearch's triggers on the application's writes.

Two identical tables, one with a SearchIndex. Measured, interleaved so machine noise hits both alike:
- bulk: one INSERT statement carrying 10k rows from the client (what an application's bulk insert is);
- bulk INSERT ... SELECT of 10k rows already on the server (the leanest possible insert: worst case);
- single-row INSERTs, one statement each;
- one UPDATE of the indexed column of 10k rows (the transition-table join);
- 8 connections inserting single rows concurrently (each trigger NOTIFYs, and PostgreSQL serialises the
  commits of notifying transactions: this is where that would show).
Prints ratios (with triggers / without); the two sides alternate which goes first, round by round.
"""
from __future__ import annotations

import statistics
import threading
import time

import psycopg
from sqlalchemy import create_engine

from common import corpus, scratch_database
from semsearch import IndexDefinition, install
from semsearch.database import sqlalchemy_url

ROWS = 10_000
ROUNDS = 7
SINGLE = 500
WRITERS = 8
PER_WRITER = 150


def main() -> None:
    docs = corpus(ROWS)
    docs = (docs * (ROWS // len(docs) + 1))[:ROWS]
    with scratch_database() as url:
        engine = create_engine(sqlalchemy_url(url))
        install(engine)
        with psycopg.connect(url, autocommit=True) as conn:
            for table in ("plain", "indexed"):
                conn.execute(f"CREATE TABLE {table} (id bigint PRIMARY KEY, title text, body text, views int)")
            with engine.begin() as c:
                IndexDefinition("indexed_search", "indexed", ["title", "body"]).create(c)
            conn.execute("CREATE TEMP TABLE src (id bigint, title text, body text)")
            with conn.cursor().copy("COPY src FROM STDIN") as copy:
                for i, (title, body) in enumerate(docs):
                    copy.write_row((i, title, body))
            values = ", ".join(["(%s, %s, %s, 0)"] * ROWS)
            params = [v for i, (title, body) in enumerate(docs) for v in (i, title, body)]

            def timed(table: str, statements) -> float:
                conn.execute(f"TRUNCATE {table}")
                conn.execute("DELETE FROM semsearch.queue")
                start = time.perf_counter()
                for query, args in statements:
                    conn.execute(query, args)
                return time.perf_counter() - start

            cases = {
                "bulk": lambda t: [(f"INSERT INTO {t} VALUES {values}", params)],
                "bulk_select": lambda t: [(f"INSERT INTO {t} SELECT id, title, body, 0 FROM src", None)],
                "single": lambda t: [(f"INSERT INTO {t} VALUES (%s, %s, %s, 0)", (i, *docs[i])) for i in range(SINGLE)],
            }
            writers = [psycopg.connect(url, autocommit=True) for _ in range(WRITERS)]

            def concurrent(table: str) -> float:
                conn.execute(f"TRUNCATE {table}")
                conn.execute("DELETE FROM semsearch.queue")
                start_line = threading.Barrier(WRITERS + 1)

                def write(n: int, writer: psycopg.Connection) -> None:
                    start_line.wait()
                    for i in range(n * PER_WRITER, (n + 1) * PER_WRITER):
                        writer.execute(f"INSERT INTO {table} VALUES (%s, %s, %s, 0)", (i, *docs[i % ROWS]))

                threads = [threading.Thread(target=write, args=(n, w)) for n, w in enumerate(writers)]
                for t in threads:
                    t.start()
                start_line.wait()
                start = time.perf_counter()
                for t in threads:
                    t.join()
                return time.perf_counter() - start

            def paired(run) -> float:
                """Median over rounds of run("indexed") / run("plain"), the order alternating per round."""
                run("plain"), run("indexed")  # warm up
                results = []
                for r in range(ROUNDS):
                    if r % 2:
                        plain, indexed = run("plain"), run("indexed")
                    else:
                        indexed, plain = run("indexed"), run("plain")
                    results.append(indexed / plain)
                return statistics.median(results)

            def bulk_update(table: str) -> float:
                """One UPDATE of the indexed column of 10k rows: the triggers' transition-table join."""
                conn.execute(f"TRUNCATE {table}")
                conn.execute(f"INSERT INTO {table} SELECT id, title, body, 0 FROM src")
                conn.execute("DELETE FROM semsearch.queue")
                start = time.perf_counter()
                conn.execute(f"UPDATE {table} SET body = body || ' (edited)'")
                return time.perf_counter() - start

            ratios = {name: paired(lambda t, statements=statements: timed(t, statements(t)))
                      for name, statements in cases.items()}
            ratios["bulk_update"] = paired(bulk_update)
            concurrent_ratio = paired(concurrent)
            # Worst case: a worker waits for work all along, so every write NOTIFYs. (A real idle worker
            # stops waiting at the first NOTIFY, and writes skip it while it works.)
            conn.execute("INSERT INTO semsearch.listeners (pid) VALUES (0)")
            waiting_ratio = paired(concurrent)
            conn.execute("DELETE FROM semsearch.listeners")
            for w in writers:
                w.close()
    print(f"rows per bulk insert: {ROWS}, single inserts per round: {SINGLE}, rounds: {ROUNDS}")
    print(f"bulk_insert_select_trigger_ratio: {ratios['bulk_select']:.3f}")
    print(f"single_insert_trigger_ratio: {ratios['single']:.3f}")
    print(f"bulk_update_trigger_ratio: {ratios['bulk_update']:.3f}")
    print(f"concurrent writers: {WRITERS} x {PER_WRITER} single-row inserts")
    print(f"concurrent_insert_always_notify_ratio: {waiting_ratio:.3f}")
    print(f"bulk_insert_trigger_ratio: {ratios['bulk']:.3f}")
    print(f"concurrent_insert_trigger_ratio: {concurrent_ratio:.3f}")


if __name__ == "__main__":
    main()
