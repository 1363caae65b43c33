"""A million documents on one box: first fill, search latency, recall and footprint, measured in one run.

Corpus: as bench/search_latency.py builds it (the SciFact abstracts, then documents recombined from
their sentences, ../shared/data/scifact), up to --docs. Each document is chunked as the worker chunks
for a zero-cost embedder here (windows of CHUNK_WORDS words, CHUNK_OVERLAP shared: about 2 chunks for
an abstract), and each chunk's vector is the real SciFact embedding of the abstract it comes from plus
small noise, renormalised (uniformly random vectors would make HNSW degenerate); the bench computes
them beforehand and the embedder looks them up, so the run measures semsearch's database side, not a
model.

Load: the table is filled with COPY, then the index is created on it (storage --storage, halfvec by
default): semsearch's first fill, run by `Worker(concurrency=--concurrency)` until drained (backfill
queue -> keywords -> chunks -> store without HNSW -> one HNSW build). first_fill_rows_per_s: documents
÷ the seconds from the index's creation to the drained worker, HNSW build included.

--database keeps the database (built only when its table is missing), so query runs do not rebuild.

Queries: SciFact train queries (their real embeddings), each kind timed over --queries queries after
an untimed pass of the same block (warm), through psycopg without prepared statements; p50s of
semsearch.semantic_search, keyword_search and hybrid_search, top 10, default settings.
recall_at_10: semantic_search's top 10 documents against the exact 10 nearest (every chunk scanned,
best chunk per document). filtered_recall_at_10: the same with a filter matching 1% of the documents,
where the search must also return the full 10. bytes_per_document: the store, its HNSW index and the
keyword tables with all their indexes, ÷ documents; each structure's share is printed above it.
"""
from __future__ import annotations

import argparse
import json
import random
import re
import statistics
import time
from contextlib import nullcontext

import numpy as np
import psycopg
from pgvector.psycopg import register_vector
from sqlalchemy import create_engine

from common import SCIFACT, scratch_database
from quality import load
from search_latency import NOISE, scifact_vectors
from semsearch import IndexDefinition, IndexOptions, Worker, install
from semsearch.database import sqlalchemy_url
from semsearch.options import DEFAULT_MODEL

CHUNK_WORDS, CHUNK_OVERLAP = 150, 20  # about 1.9 chunks per document, as SciFact at the model's 128 tokens
TENANTS = 100  # tenant = id % TENANTS: one tenant is the 1% filter
LOOKUP_MODEL = "scale-lookup"


def chunk_words(text: str) -> list[str]:
    words = text.split()
    step = CHUNK_WORDS - CHUNK_OVERLAP
    return [" ".join(words[i:i + CHUNK_WORDS]) for i in range(0, max(len(words) - CHUNK_OVERLAP, 1), step)]


def documents(corpus: list[dict], n: int, rng: random.Random):
    """(id, tenant, title, body, source abstract): the real abstracts first, then recombinations."""
    sentences = [re.split(r"(?<=[.!?])\s+", d["text"]) for d in corpus]
    for i, d in enumerate(corpus[:n]):
        yield i + 1, (i + 1) % TENANTS, d["title"], d["text"], i
    for i in range(len(corpus), n):
        source, other = rng.randrange(len(corpus)), rng.randrange(len(corpus))
        own = sentences[source][:]
        rng.shuffle(own)
        body = " ".join(own[:max(2, len(own) * 3 // 4)] + rng.sample(sentences[other], min(2, len(sentences[other]))))
        yield i + 1, (i + 1) % TENANTS, corpus[source]["title"], body, source


class ChunkLookupEmbedder:
    """Zero cost: chunks by words, and each chunk's vector is looked up by its text."""

    revision = ""

    def __init__(self, vectors: dict[int, np.ndarray]):
        self.name, self.dimensions, self.vectors = LOOKUP_MODEL, 384, vectors

    def chunk(self, texts, chunk_tokens, overlap):
        return [chunk_words(t) for t in texts]

    def encode(self, texts, batch_size=64):
        return np.stack([self.vectors[hash(t)] for t in texts]).astype(np.float32)


def installed(conn: psycopg.Connection) -> bool:
    return conn.execute("SELECT to_regclass('semsearch.indexes') IS NOT NULL").fetchone()[0]


def build(url: str, docs: int, storage: str, concurrency: int) -> float | None:
    """Fill the table, create the index on it, run the first fill; returns first_fill_rows_per_s. A kept
    database whose first fill was cut short (the process stopped) is resumed, and not timed (None)."""
    corpus = [json.loads(line) for line in SCIFACT.open()]
    base = scifact_vectors(corpus)
    noise = np.random.default_rng(7)
    vectors: dict[int, np.ndarray] = {}
    started = time.monotonic()
    with psycopg.connect(url, autocommit=True) as conn:
        resumed = conn.execute("SELECT to_regclass('docs') IS NOT NULL").fetchone()[0]
        if not resumed:
            conn.execute("CREATE TABLE docs (id integer PRIMARY KEY, tenant integer NOT NULL, title text, body text)")
        with conn.cursor().copy("COPY docs FROM STDIN") if not resumed else nullcontext() as copy:
            for id_, tenant, title, body, source in documents(corpus, docs, random.Random(7)):
                if copy is not None:
                    copy.write_row((id_, tenant, title, body))
                for chunk in chunk_words(f"{title}\n\n{body}"):
                    v = base[source] + noise.normal(0, NOISE, base.shape[1])
                    vectors[hash(chunk)] = (v / np.linalg.norm(v)).astype(np.float16)
        if not resumed:
            conn.execute("CREATE INDEX docs_tenant ON docs (tenant)")
            conn.execute("VACUUM ANALYZE docs")
        indexed = installed(conn) and conn.execute(
            "SELECT EXISTS (SELECT 1 FROM semsearch.indexes WHERE name = 'docs_search')").fetchone()[0]
    print(f"table: {docs} documents, {len(vectors)} distinct chunks, {time.monotonic() - started:.0f} s"
          f"{' (kept: resuming its first fill)' if resumed else ''}", flush=True)
    embedder = ChunkLookupEmbedder(vectors)
    started = time.monotonic()
    if not indexed:
        engine = create_engine(sqlalchemy_url(url))
        install(engine)
        with engine.begin() as c:
            IndexDefinition("docs_search", "docs", ["title", "body"],
                            options=IndexOptions(model=LOOKUP_MODEL, dimensions=384, storage=storage)).create(c)
        engine.dispose()
    Worker(url, concurrency=concurrency, poll_interval=0.5, embedder_factory=lambda model: embedder).run(drain=True)
    elapsed = time.monotonic() - started
    with psycopg.connect(url, autocommit=True) as conn:
        chunks = conn.execute("SELECT count(*) FROM semsearch.store_docs_search").fetchone()[0]
        assert conn.execute("SELECT NOT hnsw_pending FROM semsearch.indexes WHERE name = 'docs_search'").fetchone()[0]
        conn.execute("VACUUM ANALYZE")
    print(f"first fill: {docs} documents, {chunks} chunk rows in {elapsed:.0f} s (HNSW build included)", flush=True)
    return None if resumed else docs / elapsed


def structure_sizes(conn: psycopg.Connection, docs: int) -> int:
    """Print each structure's size (with its indexes) and share; returns the total in bytes."""
    rows = conn.execute(
        "SELECT c.oid::regclass::text, pg_table_size(c.oid), pg_indexes_size(c.oid) FROM pg_class c "
        "WHERE c.relnamespace = 'semsearch'::regnamespace AND c.relkind = 'r' "
        "AND c.relname LIKE 'store\\_docs\\_search%%' ORDER BY 1").fetchall()
    total = sum(t + i for _, t, i in rows)
    print("structure (table + its indexes), bytes per document, share:")
    for name, table, indexes in rows:
        for part, size in ((name, table), (f"{name} indexes", indexes)):
            print(f"  {part:<50} {size / docs:>8.0f} B {size / total:>6.1%}")
    for name, in conn.execute("SELECT indexrelid::regclass::text FROM pg_index WHERE indrelid = "
                              "'semsearch.store_docs_search'::regclass").fetchall():
        size = conn.execute("SELECT pg_relation_size(%s::regclass)", (name,)).fetchone()[0]
        print(f"    of which {name:<40} {size / docs:>8.0f} B")
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=100, help="timed queries (train split)")
    parser.add_argument("--storage", choices=["halfvec", "vector"], default="halfvec")
    parser.add_argument("--concurrency", type=int, default=2, help="the first fill's worker lanes")
    parser.add_argument("--database", help="use this database and keep it (built only when its table is missing)")
    args = parser.parse_args()
    if not SCIFACT.exists():
        raise SystemExit(f"needs the SciFact corpus at {SCIFACT}")
    _, queries, _ = load()
    from semsearch.embedders import get_embedder

    qids = list(queries)[:args.queries]
    query_vectors = dict(zip(qids, get_embedder(DEFAULT_MODEL).encode([queries[q] for q in qids])))

    with (nullcontext(args.database) if args.database else scratch_database()) as url:
        with psycopg.connect(url, autocommit=True) as conn:
            done = installed(conn) and conn.execute(
                "SELECT EXISTS (SELECT 1 FROM semsearch.indexes WHERE name = 'docs_search' AND NOT hnsw_pending "
                "AND NOT backfill_pending) AND NOT EXISTS (SELECT 1 FROM semsearch.queue)").fetchone()[0]
        first_fill = build(url, args.docs, args.storage, args.concurrency) if not done else None
        conn = psycopg.connect(url, autocommit=True, prepare_threshold=None)
        register_vector(conn)
        docs = conn.execute("SELECT count(*) FROM docs").fetchone()[0]
        chunks = conn.execute("SELECT count(*) FROM semsearch.store_docs_search").fetchone()[0]
        storage = conn.execute("SELECT storage FROM semsearch.indexes WHERE name = 'docs_search'").fetchone()[0]
        print(f"{docs} documents, {chunks} chunk rows ({chunks / docs:.2f} per document), storage {storage}")
        total = structure_sizes(conn, docs)

        kinds = {
            "semantic": ("SELECT key FROM semsearch.semantic_search('docs_search', %(v)s, 10)", ),
            "keyword": ("SELECT key FROM semsearch.keyword_search('docs_search', %(q)s, 10)", ),
            "hybrid": ("SELECT key FROM semsearch.hybrid_search('docs_search', %(q)s, %(v)s, 10)", ),
        }
        p50 = {}
        for kind, (statement,) in kinds.items():
            times = []
            for timed in (False, True):  # an untimed pass first: warm pages, as an application that runs it often
                for q in qids:
                    started = time.perf_counter()
                    conn.execute(statement, {"v": query_vectors[q], "q": queries[q]}).fetchall()
                    if timed:
                        times.append((time.perf_counter() - started) * 1000)
            p50[kind] = statistics.median(times)
            print(f"{kind}: p50 {p50[kind]:.2f} ms, p95 {sorted(times)[int(len(times) * 0.95) - 1]:.2f} ms", flush=True)

        # Exact: every chunk scanned (no index), its best 200 chunks, the best chunk per document.
        exact = ("SELECT key FROM (SELECT key, min(d) AS d FROM (SELECT key, embedding <=> %(v)s AS d "
                 "FROM semsearch.store_docs_search {where} ORDER BY d LIMIT 200) c GROUP BY key) s ORDER BY d LIMIT 10")
        tenant_keys = "ARRAY(SELECT id::text FROM docs WHERE tenant = 7)"
        recalls, filtered, full = [], [], 0
        for q in qids:
            v = query_vectors[q]
            got = {k for k, in conn.execute(kinds["semantic"][0], {"v": v})}
            got_filtered = [k for k, in conn.execute(
                f"SELECT key FROM semsearch.semantic_search('docs_search', %(v)s, 10, {tenant_keys})", {"v": v})]
            with conn.transaction():
                conn.execute("SET LOCAL enable_indexscan = off")
                truth = {k for k, in conn.execute(exact.format(where=""), {"v": v})}
                filtered_truth = {k for k, in conn.execute(exact.format(where=f"WHERE key = ANY({tenant_keys})"), {"v": v})}
            recalls.append(len(got & truth) / 10)
            full += len(got_filtered) == 10
            filtered.append(len(set(got_filtered) & filtered_truth) / 10)
        print(f"filtered searches returning the full 10: {full}/{len(qids)}")
        conn.close()

    if first_fill is not None:
        print(f"first_fill_rows_per_s: {first_fill:.0f}")
    else:
        print("first_fill_rows_per_s: not measured (a kept database, or a first fill resumed: run on a new database)")
    print(f"semantic_p50_ms: {p50['semantic']:.2f}")
    print(f"keyword_p50_ms: {p50['keyword']:.2f}")
    print(f"hybrid_p50_ms: {p50['hybrid']:.2f}")
    print(f"recall_at_10: {statistics.mean(recalls):.3f}")
    print(f"filtered_recall_at_10: {statistics.mean(filtered):.3f}")
    print(f"bytes_per_document: {total / docs:.0f}")


if __name__ == "__main__":
    main()
