"""Cost of semsearch's triggers on the application's writes.

Two identical tables, one with a SearchIndex: time a 10k-row bulk INSERT and single-row INSERTs
into each, interleaved so machine noise hits both alike. Prints ratios (with / without).
"""
from __future__ import annotations

import statistics
import time

import psycopg

from common import corpus, scratch_database
from semsearch import IndexDefinition, install
from semsearch.database import sqlalchemy_url

ROWS = 10_000
ROUNDS = 5
SINGLE = 500


def main() -> None:
    docs = corpus(ROWS)
    docs = (docs * (ROWS // len(docs) + 1))[:ROWS]
    with scratch_database() as url:
        from sqlalchemy import create_engine

        engine = create_engine(sqlalchemy_url(url))
        install(engine)
        with psycopg.connect(url, autocommit=True) as conn:
            for table in ("plain", "indexed"):
                conn.execute(f"CREATE TABLE {table} (id bigint PRIMARY KEY, title text, body text, views int)")
        with engine.begin() as c:
            IndexDefinition("indexed_search", "indexed", ["title", "body"], dimensions=384).create(c)

        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CREATE TEMP TABLE src (id bigint, title text, body text)")
            with conn.cursor().copy("COPY src FROM STDIN") as copy:
                for i, (title, body) in enumerate(docs):
                    copy.write_row((i, title, body))

            def bulk(table: str) -> float:
                conn.execute(f"TRUNCATE {table}")
                conn.execute("DELETE FROM semsearch.queue")
                start = time.perf_counter()
                conn.execute(f"INSERT INTO {table} SELECT id, title, body, 0 FROM src")
                return time.perf_counter() - start

            def single(table: str) -> float:
                conn.execute(f"TRUNCATE {table}")
                conn.execute("DELETE FROM semsearch.queue")
                start = time.perf_counter()
                for i in range(SINGLE):
                    conn.execute(f"INSERT INTO {table} VALUES (%s, %s, %s, 0)", (i, docs[i][0], docs[i][1]))
                return (time.perf_counter() - start) / SINGLE

            bulk("plain"), bulk("indexed")  # warm up
            bulk_ratio = statistics.median(bulk("indexed") / bulk("plain") for _ in range(ROUNDS))
            single_ratio = statistics.median(single("indexed") / single("plain") for _ in range(ROUNDS))
    print(f"rows per bulk insert: {ROWS}, single inserts per round: {SINGLE}, rounds: {ROUNDS}")
    print(f"single_insert_trigger_ratio: {single_ratio:.3f}")
    print(f"bulk_insert_trigger_ratio: {bulk_ratio:.3f}")


if __name__ == "__main__":
    main()
