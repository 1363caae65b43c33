"""Worker throughput against the model's own speed.

The same texts are embedded by SentenceTransformer.encode (batch 64) and by the worker (batch 64,
claim -> read -> embed -> COPY into the store), interleaved encode / worker / encode / worker so
machine noise hits both alike. Texts are cut to fit the model's window, so both do the same model work
(the worker would otherwise embed the overflow as extra chunks instead of truncating it).
"""
from __future__ import annotations

import statistics
import time

import psycopg
from sqlalchemy import create_engine

from common import corpus, scratch_database
from semsearch import IndexDefinition, Worker, install
from semsearch.database import sqlalchemy_url
from semsearch.embedder import get_embedder

DOCS = 640
BATCH = 64
ROUNDS = 2


def fit_to_window(embedder, text: str) -> str:
    return embedder.chunk(text, None, 0)[0]


def main() -> None:
    embedder = get_embedder()
    texts = [fit_to_window(embedder, f"{t}\n\n{b}") for t, b in corpus(DOCS)]
    embedder.encode(texts[:BATCH], batch_size=BATCH)  # warm up
    with scratch_database() as url:
        install(create_engine(sqlalchemy_url(url)))
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CREATE TABLE docs (id int PRIMARY KEY, body text)")
            with create_engine(sqlalchemy_url(url)).begin() as c:
                IndexDefinition("docs_search", "docs", ["body"], chunk_overlap=0).create(c)
            with conn.cursor().copy("COPY docs FROM STDIN") as copy:
                for i, text in enumerate(texts):
                    copy.write_row((i, text))

            encode_rates, worker_rates = [], []
            for _ in range(ROUNDS):
                start = time.perf_counter()
                embedder.encode(texts, batch_size=BATCH)
                encode_rates.append(len(texts) / (time.perf_counter() - start))

                conn.execute("TRUNCATE semsearch.store_docs_search")
                conn.execute("SELECT semsearch.request_backfill('docs_search')")
                start = time.perf_counter()
                Worker(url, batch_size=BATCH, embedder_factory=lambda model: embedder).run(drain=True)
                worker_rates.append(len(texts) / (time.perf_counter() - start))
                stored = conn.execute("SELECT count(DISTINCT key) FROM semsearch.store_docs_search").fetchone()[0]
                assert stored == len(texts), f"worker stored {stored} of {len(texts)}"
    encode_rate = statistics.mean(encode_rates)
    worker_rate = statistics.mean(worker_rates)
    print(f"texts: {len(texts)}, batch size: {BATCH}, rounds: {ROUNDS}")
    print(f"encode_rows_per_s: {encode_rate:.1f}")
    print(f"worker_rows_per_s: {worker_rate:.1f}")
    print(f"worker_vs_encode: {worker_rate / encode_rate:.3f}")


if __name__ == "__main__":
    main()
