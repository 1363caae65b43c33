"""Commit -> embedding visible, with an idle worker woken by NOTIFY.

A worker (real model) runs in its own process; this process commits single-row inserts one at a
time and polls the store until the row's embedding is visible. Also measures one encode of the same
kind of text in this process, the floor any worker must pay.

Two kinds of text, commits alternating between them: a title and the first 200 characters of its
SciFact abstract (freshness_p50_ms, freshness_p95_ms), and the title with the full abstract, as a
document table holds it (freshness_abstract_p50_ms, ..._p95_ms; several chunks per row at the
default chunk size). --commits sets how many of each.

Then on a read replica: a streaming standby of the server (tests/standby.py: pg_basebackup -R, its
own socket; the embedded server only), and the same short-text commits on the primary, each timed
until the standby finds the row's embedding (replica_freshness_p50_ms, ..._p95_ms). The issue's goal:
within 50 ms of freshness_p50_ms.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import psycopg
from sqlalchemy import create_engine

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from common import corpus, scratch_database  # noqa: E402
from tests.standby import caught_up, socket_dir, streaming_standby  # noqa: E402
from semsearch import IndexDefinition, IndexOptions, install
from semsearch.database import sqlalchemy_url
from semsearch.embedders import get_embedder

COMMITS = 200


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--commits", type=int, default=COMMITS, help="commits of each kind of text")
    args = parser.parse_args()
    docs = corpus(args.commits)
    texts = [f"{t}. {b[:200]}" for t, b in docs]
    abstracts = [f"{t}. {b}" for t, b in docs]
    embedder = get_embedder()
    embedder.encode(texts[:8])

    options = IndexOptions()

    def encode_ms(sample):  # one text, chunked as the worker does, then embedded
        def once(t):
            start = time.perf_counter()
            embedder.encode(embedder.chunk([t], options.chunk_tokens, options.chunk_overlap)[0])
            return (time.perf_counter() - start) * 1000
        return statistics.median(once(t) for t in sample[:50])

    short_encode_ms, abstract_encode_ms = encode_ms(texts), encode_ms(abstracts)
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
                latencies, abstract_latencies = [], []
                for i, (text, abstract) in enumerate(zip(texts, abstracts)):
                    for key, body, into in ((2 * i + 1, text, latencies), (2 * i + 2, abstract, abstract_latencies)):
                        into.append(commit_until_found(conn, conn, key, body))
                replica_latencies = []
                if socket_dir(url) is not None:
                    with streaming_standby(url) as on_standby, \
                            psycopg.connect(on_standby(url), autocommit=True) as standby:
                        caught_up(conn, standby)
                        for i, text in enumerate(texts):
                            replica_latencies.append(commit_until_found(conn, standby, 1_000_000 + i, text))
            finally:
                worker.terminate()
                worker.wait(30)
    latencies.sort()
    abstract_latencies.sort()
    chars = sorted(len(a) for a in abstracts)
    print(f"full abstracts: median {chars[len(chars) // 2]} characters; 200-character texts: "
          f"median {sorted(map(len, texts))[len(texts) // 2]}")
    print(f"encode_abstract_ms: {abstract_encode_ms:.1f}")
    print(f"freshness_abstract_p50_ms: {statistics.median(abstract_latencies):.1f}")
    print(f"freshness_abstract_p95_ms: {abstract_latencies[int(len(abstract_latencies) * 0.95) - 1]:.1f}")
    print(f"commits: {len(latencies)}")
    print(f"encode_ms: {short_encode_ms:.1f}")
    print(f"freshness_p50_ms: {statistics.median(latencies):.1f}")
    print(f"freshness_p95_ms: {latencies[int(len(latencies) * 0.95) - 1]:.1f}")
    if replica_latencies:
        replica_latencies.sort()
        print(f"replica_freshness_p95_ms: {replica_latencies[int(len(replica_latencies) * 0.95) - 1]:.1f}")
        print(f"replica_freshness_p50_ms: {statistics.median(replica_latencies):.1f}")
    else:
        print("replica_freshness_p50_ms: not measured (a standby is made only of the embedded server)")


def commit_until_found(primary: psycopg.Connection, reader: psycopg.Connection, key: int, body: str) -> float:
    """Milliseconds from the commit of a new row on the primary until `reader` finds its embedding."""
    time.sleep(0.05)  # the worker is idle again
    start = time.perf_counter()
    primary.execute("INSERT INTO notes VALUES (%s, %s)", (key, body))
    wait_for(reader, key)
    return (time.perf_counter() - start) * 1000


def wait_for(conn: psycopg.Connection, key: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not conn.execute("SELECT 1 FROM semsearch.store_notes_search WHERE key = %s", (str(key),)).fetchone():
        if time.monotonic() > deadline:
            raise TimeoutError(f"row {key} not embedded within {timeout}s")
        time.sleep(0.002)


if __name__ == "__main__":
    main()
