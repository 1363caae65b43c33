"""Commit -> embedding visible, with an idle worker woken by NOTIFY.

A worker (real model) runs in its own process; this process commits single-row inserts one at a
time and polls the store until the row's embedding is visible. Also measures one encode of the same
kind of text in this process, the floor any worker must pay.
"""
from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import psycopg
from sqlalchemy import create_engine

from common import corpus, scratch_database
from semsearch import IndexDefinition, install
from semsearch.database import sqlalchemy_url
from semsearch.embedder import get_embedder

COMMITS = 200


def main() -> None:
    texts = [f"{t}. {b[:200]}" for t, b in corpus(COMMITS)]
    embedder = get_embedder()
    embedder.encode(texts[:8])
    encode_ms = statistics.median(
        (lambda s: (embedder.encode([t]), (time.perf_counter() - s) * 1000)[1])(time.perf_counter())
        for t in texts[:50])
    with scratch_database() as url:
        install(create_engine(sqlalchemy_url(url)))
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CREATE TABLE notes (id int PRIMARY KEY, body text)")
            with create_engine(sqlalchemy_url(url)).begin() as c:
                IndexDefinition("notes_search", "notes", ["body"]).create(c)
            worker = subprocess.Popen([sys.executable, "-m", "semsearch.cli", "worker", "--url", url],
                                      env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)},
                                      stderr=subprocess.DEVNULL)
            try:
                conn.execute("INSERT INTO notes VALUES (0, 'warm up')")
                wait_for(conn, 0, timeout=120)  # the worker has loaded its model
                latencies = []
                for i, text in enumerate(texts, 1):
                    time.sleep(0.05)  # the worker is idle again
                    start = time.perf_counter()
                    conn.execute("INSERT INTO notes VALUES (%s, %s)", (i, text))
                    wait_for(conn, i)
                    latencies.append((time.perf_counter() - start) * 1000)
            finally:
                worker.terminate()
                worker.wait(30)
    latencies.sort()
    print(f"commits: {len(latencies)}")
    print(f"encode_ms: {encode_ms:.1f}")
    print(f"freshness_p50_ms: {statistics.median(latencies):.1f}")
    print(f"freshness_p95_ms: {latencies[int(len(latencies) * 0.95) - 1]:.1f}")


def wait_for(conn: psycopg.Connection, key: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not conn.execute("SELECT 1 FROM semsearch.store_notes_search WHERE key = %s", (str(key),)).fetchone():
        if time.monotonic() > deadline:
            raise TimeoutError(f"row {key} not embedded within {timeout}s")
        time.sleep(0.002)


if __name__ == "__main__":
    main()
