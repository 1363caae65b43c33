"""Worker throughput against the model's own speed (with torch and with ONNX Runtime in int8), and a new
version's bulk build against incremental inserts.

The same texts are embedded by SentenceTransformer.encode (batch 64) and by a running worker
(batch 64: claim -> read -> index keywords -> chunk -> embed -> COPY into the store -> commit), round
by round so machine noise hits both alike; the headline is the median of the per-round ratios. Every
round is the whole pipeline: before it, the texts' store rows and their keyword data are cleared (the
keyword tables hold only these texts, so they are emptied whole, statistics included), so each round
indexes their keywords again, as a first insert of those rows does. Texts
are cut to the index's chunk size, so both do the same model work (the worker would otherwise embed
the overflow as extra chunks instead of truncating it).

The store starts with FILLER rows of realistic vectors (the texts' own embeddings plus small noise),
so the worker inserts into an HNSW index of production size, not an empty one. Before each timed
part the queue is drained and the worker idle, and every wait has a deadline. onnx_vs_torch: worker
rows/s with the model as `onnx:all-MiniLM-L6-v2` over rows/s with torch, in rounds that alternate
which of the two goes first.

bulk_build_vs_incremental: BUILD_ROWS rows through a worker with a zero-cost embedder (a lookup of
realistic vectors: SciFact embeddings plus noise), once as incremental inserts into the HNSW-indexed
store (their keywords already indexed, so both do only the vector work) and once as a new version's
build (walk into an unindexed store, one HNSW build, switch); rows/s of the second over the first.
first_fill_vs_incremental: the same rows as the index's first fill (created on the filled table: the
queue into an unindexed store, keywords too, one HNSW build) over the same rows as incremental inserts
that index their keywords too (keyword tables emptied first), so both sides do the same work.

concurrency_4_vs_1 (--concurrency-only to run just it): a remote embedding service, the tests'
OpenAI-compatible server (tests/embedding_server.py) with 200 ms added to every request and each text
embedded once (a GPU box much faster than these cores), so the worker mostly waits on the network.
Rows/s of `Worker(concurrency=4)` over `concurrency=1`, same rows, batch 16, rounds alternating.

--quick: fewer rounds, a smaller pre-filled store and fewer build rows (its vectors the texts' own
embeddings instead of all of SciFact's), for a machine where the full run does not fit.
"""
from __future__ import annotations

import argparse
import os
import statistics
import threading
import time

import numpy as np
import psycopg
from pgvector.psycopg import register_vector
from sqlalchemy import create_engine

from common import LookupEmbedder, corpus, scratch_database
from search_latency import scifact_vectors
from semsearch import IndexDefinition, IndexOptions, Worker, install
from semsearch.database import sqlalchemy_url
from semsearch.embedders import get_embedder

DOCS = 640
BATCH = 64
ROUNDS = 4  # even: each model goes first in half the rounds
FILLER = 30_000
DEADLINE_S = 600
BUILD_ROWS = 20_000


def wait_for(condition, what: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"gave up waiting for {what} after {DEADLINE_S} s")
        time.sleep(0.02)


KEYWORD_PARTS = ("docs", "postings", "terms", "stats")


def clear_keywords(conn: psycopg.Connection) -> None:
    """Empty the index's keyword tables (they hold only the benchmark's rows): its rows' keywords are
    indexed again from scratch, statistics included, as for rows never seen."""
    tables = [conn.execute("SELECT semsearch.keyword_table(i, %s) FROM semsearch.indexes i WHERE i.name = 'docs_search'",
                           (part,)).fetchone()[0] for part in KEYWORD_PARTS]
    conn.execute(f"TRUNCATE {', '.join(tables)}")


def keyword_rows(conn: psycopg.Connection) -> int:
    return conn.execute("SELECT count(*) FROM semsearch.store_docs_search_docs").fetchone()[0]


def prefill(conn: psycopg.Connection, vectors: np.ndarray, filler: int) -> None:
    """filler store rows (keys outside the table's) near real embeddings; HNSW built once after."""
    rng = np.random.default_rng(0)
    conn.execute("DROP INDEX semsearch.store_docs_search_hnsw")
    with conn.cursor().copy("COPY semsearch.store_docs_search (key, chunk, content, embedding, model, content_hash) "
                            "FROM STDIN (FORMAT BINARY)") as copy:
        copy.set_types(["text", "int4", "text", "vector", "text", "bytea"])
        for i in range(filler):
            v = vectors[i % len(vectors)] + rng.normal(0, 0.05, vectors.shape[1]).astype(np.float32)
            copy.write_row((f"filler-{i}", 0, "filler", v / np.linalg.norm(v), "filler", b""))
    conn.execute("SELECT semsearch.build_hnsw(semsearch.lookup_index('docs_search'))")


def main(rounds: int = ROUNDS, filler: int = FILLER, build_rows: int = BUILD_ROWS, quick: bool = False) -> None:
    embedder = get_embedder()
    options = IndexOptions(chunk_overlap=0)
    texts = [chunks[0] for chunks in embedder.chunk([f"{t}\n\n{b}" for t, b in corpus(DOCS)], options.chunk_tokens, 0)]
    embedder.encode(texts[:BATCH], batch_size=BATCH)  # warm up
    onnx = get_embedder(f"onnx:{embedder.name}")
    onnx.encode(texts[:BATCH], batch_size=BATCH)
    agreement = np.einsum("ij,ij->i", onnx.encode(texts[:BATCH]), embedder.encode(texts[:BATCH]))
    with scratch_database() as url:
        install(create_engine(sqlalchemy_url(url)))
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CREATE TABLE docs (id int PRIMARY KEY, body text)")
            with create_engine(sqlalchemy_url(url)).begin() as c:
                IndexDefinition("docs_search", "docs", ["body"], options=options).create(c)
            with conn.cursor().copy("COPY docs FROM STDIN") as copy:
                for i, text in enumerate(texts):
                    copy.write_row((i, text))
            register_vector(conn)
            text_vectors = embedder.encode(texts, batch_size=BATCH)
            prefill(conn, text_vectors, filler)
            conn.execute("DELETE FROM semsearch.queue")
            conn.execute("UPDATE semsearch.indexes SET backfill_pending = false")
            keys = [str(i) for i in range(len(texts))]

            def stored() -> int:
                return conn.execute("SELECT count(DISTINCT key) FROM semsearch.store_docs_search WHERE key = ANY(%s)",
                                    (keys,)).fetchone()[0]

            def idle() -> bool:
                return conn.execute("SELECT count(*) = 0 FROM semsearch.queue").fetchone()[0]

            # A running worker, as in production: each round queues the texts and waits until all
            # are in the store, so start-up and shutdown are not counted. Its model is switched
            # between torch and ONNX Runtime (int8) round by round.
            switch = Switch(embedder)
            worker = Worker(url, batch_size=BATCH, poll_interval=1.0, embedder_factory=lambda model: switch)
            thread = threading.Thread(target=worker.run)
            thread.start()
            encode_rates, worker_rates, onnx_rates = [], [], []

            def worker_round(model) -> float:
                switch.target = model
                wait_for(idle, "an empty queue")
                # The whole pipeline every round: no store rows and no keyword data for these texts.
                conn.execute("DELETE FROM semsearch.store_docs_search WHERE key = ANY(%s)", (keys,))
                clear_keywords(conn)
                start = time.perf_counter()
                conn.execute("SELECT semsearch.request_backfill('docs_search')")
                wait_for(lambda: stored() == len(texts), "the worker to store every text")
                rate = len(texts) / (time.perf_counter() - start)
                assert keyword_rows(conn) == len(texts), "keywords not indexed in this round"
                return rate

            try:
                for rep in range(rounds):
                    wait_for(idle, "an empty queue")
                    start = time.perf_counter()
                    embedder.encode(texts, batch_size=BATCH)
                    encode_rates.append(len(texts) / (time.perf_counter() - start))
                    # Which model goes first alternates round by round.
                    for model in ((embedder, onnx) if rep % 2 == 0 else (onnx, embedder)):
                        (worker_rates if model is embedder else onnx_rates).append(worker_round(model))
            finally:
                worker.stop()
                thread.join()
    bulk = bulk_build_vs_incremental(build_rows, text_vectors if quick else None)
    ratios = [w / e for w, e in zip(worker_rates, encode_rates)]
    print(f"texts: {len(texts)}, batch size: {BATCH}, rounds: {rounds} (each: keywords, chunks, embeddings, "
          f"store; torch and ONNX alternating first), store pre-filled with {filler} vectors")
    print(f"encode_rows_per_s: {statistics.median(encode_rates):.1f}")
    print(f"worker_rows_per_s: {statistics.median(worker_rates):.1f}")
    print(f"per-round ratios: {', '.join(f'{r:.3f}' for r in ratios)}")
    print(f"worker_vs_encode: {statistics.median(ratios):.3f}")
    onnx_ratios = [o / w for o, w in zip(onnx_rates, worker_rates)]
    print(f"onnx (int8) worker_rows_per_s: {statistics.median(onnx_rates):.1f}; per-round ratios to torch: "
          f"{', '.join(f'{r:.3f}' for r in onnx_ratios)}; cosine to torch's vectors: min {agreement.min():.4f}")
    print(f"onnx_vs_torch: {statistics.median(onnx_ratios):.3f}")
    print(f"bulk_build_vs_incremental: {bulk:.2f}")


class Switch:
    """One worker, two models: the one it embeds with is switched between rounds. No revision, so the
    worker never takes the switch for an upgraded model."""

    revision = ""

    def __init__(self, target):
        self.target = target
        self.name, self.dimensions = target.name, target.dimensions

    def chunk(self, texts, chunk_tokens, overlap):
        return self.target.chunk(texts, chunk_tokens, overlap)

    def encode(self, texts, batch_size=64):
        return self.target.encode(texts, batch_size=batch_size)


def bulk_build_vs_incremental(build_rows: int = BUILD_ROWS, base: np.ndarray | None = None) -> float:
    """base: the vectors the rows' are drawn near (default: every SciFact abstract's embedding)."""
    docs = corpus(10_000)
    if base is None:
        base = scifact_vectors([{"title": t, "text": b} for t, b in docs])
    rng = np.random.default_rng(3)
    vectors = base[np.arange(build_rows) % len(base)] + rng.normal(0, 0.035, (build_rows, base.shape[1]))
    vectors = (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)
    embedders = {name: LookupEmbedder(name, vectors) for name in ("lookup-a", "lookup-b")}

    def drain(url) -> float:
        start = time.perf_counter()
        Worker(url, batch_size=BATCH, poll_interval=0.2, embedder_factory=embedders.__getitem__).run(drain=True)
        return time.perf_counter() - start

    with scratch_database() as url:
        install(create_engine(sqlalchemy_url(url)))
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CREATE TABLE docs (id int PRIMARY KEY, body text)")
            with conn.cursor().copy("COPY docs FROM STDIN") as copy:
                for i in range(build_rows):
                    copy.write_row((i, f"{i} {docs[i % len(docs)][0]}"))
            with create_engine(sqlalchemy_url(url)).begin() as c:
                IndexDefinition("docs_search", "docs", ["body"],
                                options=IndexOptions(model="lookup-a", dimensions=384)).create(c)
            # The index is created on a table with rows: a first fill (unindexed store, one HNSW build),
            # which also indexes every row's keywords.
            first = build_rows / drain(url)
            assert keyword_rows(conn) == build_rows
            # Incremental inserts into the HNSW-indexed store, keywords included (as the first fill):
            # store and keyword tables emptied, every row queued again.
            conn.execute("TRUNCATE semsearch.store_docs_search")
            clear_keywords(conn)
            conn.execute("SELECT semsearch.request_backfill('docs_search')")
            incremental_keywords = build_rows / drain(url)
            assert keyword_rows(conn) == build_rows
            # The same with their keywords already indexed (unchanged rows: only the vector work), as
            # a version build does.
            conn.execute("TRUNCATE semsearch.store_docs_search")
            conn.execute("SELECT semsearch.request_backfill('docs_search')")
            incremental = build_rows / drain(url)
            conn.execute("""SELECT semsearch.alter_index('docs_search', '{"model": "lookup-b"}'::jsonb ||
                            jsonb_build_object('dimensions', 384))""")
            bulk = build_rows / drain(url)
            stored = conn.execute("SELECT model, count(*) FROM semsearch.store_docs_search_v2 GROUP BY 1").fetchall()
            assert stored == [("lookup-b", build_rows)], stored
    print(f"{build_rows} rows, zero-cost embedder: incremental inserts {incremental:.0f} rows/s (keywords already "
          f"indexed), version build (walk, one HNSW build, switch) {bulk:.0f} rows/s; with their keywords: "
          f"incremental inserts {incremental_keywords:.0f} rows/s, first fill of the index {first:.0f} rows/s")
    print(f"first_fill_vs_incremental: {first / incremental_keywords:.2f}")
    return bulk / incremental


def concurrency_4_vs_1(rounds: int = 2, rows: int = 1280, batch: int = 16) -> float:
    import socket
    import subprocess
    import sys
    from pathlib import Path

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, str(Path(__file__).resolve().parent.parent / "tests" / "embedding_server.py"),
                               str(port), "--latency", os.environ.get("BENCH_LATENCY", "0.2"), "--cache"], stdout=subprocess.PIPE, text=True)
    assert server.stdout.readline().strip() == "ready"
    spec = f"openai:all-MiniLM-L6-v2@http://127.0.0.1:{port}/v1"
    texts = [f"{t}. {b[:300]}" for t, b in corpus(rows)]
    rates: dict[int, list[float]] = {1: [], 4: []}
    try:
        with scratch_database() as url:
            install(create_engine(sqlalchemy_url(url)))
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute("CREATE TABLE docs (id int PRIMARY KEY, body text)")
                with create_engine(sqlalchemy_url(url)).begin() as c:
                    IndexDefinition("docs_search", "docs", ["body"],
                                    options=IndexOptions(model=spec, dimensions=384)).create(c)
                with conn.cursor().copy("COPY docs FROM STDIN") as copy:
                    for i, text in enumerate(texts):
                        copy.write_row((i, text))
                Worker(url, batch_size=batch, concurrency=4, poll_interval=0.2).run(drain=True)  # the server's cache

                def stored() -> int:
                    return conn.execute("SELECT count(DISTINCT key) FROM semsearch.store_docs_search").fetchone()[0]

                def idle() -> bool:
                    return conn.execute("SELECT count(*) = 0 FROM semsearch.queue").fetchone()[0]

                for rep in range(rounds):
                    for concurrency in ((1, 4) if rep % 2 == 0 else (4, 1)):
                        # A running worker, as in production: start-up and shutdown are not counted.
                        worker = Worker(url, batch_size=batch, concurrency=concurrency, poll_interval=0.2)
                        thread = threading.Thread(target=worker.run)
                        thread.start()
                        try:
                            conn.execute("TRUNCATE semsearch.store_docs_search")
                            conn.execute("SELECT semsearch.request_backfill('docs_search')")
                            start = time.perf_counter()
                            wait_for(lambda: stored() == rows, "every row stored")
                            rates[concurrency].append(rows / (time.perf_counter() - start))
                            wait_for(idle, "an empty queue")
                        finally:
                            worker.stop()
                            thread.join(60)
    finally:
        server.kill()
        server.wait()
    one, four = statistics.median(rates[1]), statistics.median(rates[4])
    print(f"remote embedder (+200 ms per request), batch {batch}: concurrency 1 {one:.1f} rows/s, "
          f"concurrency 4 {four:.1f} rows/s")
    return four / one


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concurrency-only", action="store_true", help="just concurrency_4_vs_1")
    parser.add_argument("--bulk-only", action="store_true", help="just the version build's figures")
    parser.add_argument("--quick", action="store_true",
                        help="2 rounds, 5,000 pre-filled vectors, 5,000 build rows near the texts' own embeddings")
    args = parser.parse_args()
    if args.concurrency_only:
        print(f"concurrency_4_vs_1: {concurrency_4_vs_1():.2f}")
    elif args.bulk_only:
        print(f"bulk_build_vs_incremental: {bulk_build_vs_incremental(5_000 if args.quick else BUILD_ROWS):.2f}")
    elif args.quick:
        main(rounds=2, filler=5_000, build_rows=5_000, quick=True)
    else:
        main()
