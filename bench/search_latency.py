"""Search latency at 100k documents, and the accuracy each shortcut costs, measured in one run.

Corpus: the 5,183 SciFact abstracts (../shared/data/scifact) plus synthetic documents recombined from
their sentences, up to --docs. Embedding 100k texts on a CPU would take an hour, so each synthetic
document gets the real embedding of the abstract most of its text comes from, plus small noise,
renormalised (uniformly random vectors would make HNSW degenerate). The SciFact embeddings are
computed once and cached (~/.cache/semsearch-bench). Rows go in with COPY; the store's HNSW index is
built once; the keyword tables are filled by semsearch.index_keywords, the function the worker calls.

Queries: SciFact train queries. Timings are medians over 3 blocks of each kind (ts_rank included),
each block timed after an untimed pass of itself, through psycopg without prepared statements (a prepared HNSW query
gets a generic plan: 10x slower).
Besides the p50 of each kind, it prints what the ORM costs by itself (the same 10 rows loaded by primary
key) and the ORM over its own statement sent as raw SQL; BM25's nDCG@10 reading each term's best
postings vs all of them; and hybrid's nDCG@10 on every train query with its keyword arm reading the
default number of postings for the rarest term and fewer (--hybrid-depths), as hybrid_ndcg10_depth<N>
lines. Last lines:
  orm_vs_raw          semantic top-10 through the ORM / the same top-10 by hand-written SQL on the store
                      (for information: both sides do not pay the ORM's own cost)
  orm_vs_pgvector_orm semantic top-10 through semsearch's ORM / the same search hand-written in the
                      SQLAlchemy ORM with pgvector-python's comparator (best chunk rows by
                      embedding.cosine_distance(v), same ef_search, grouped by key, joined to the model,
                      loaded as (Doc, score)): both pay SQLAlchemy's cost, so the ratio is semsearch's own
  sql_function_vs_raw semsearch.semantic_search(...) joined to the table / the hand-written SQL on the store
  hybrid_vs_semantic  hybrid_search p50 / semantic_search p50 (top 10, defaults)
  bm25_vs_tsrank      keyword_search (BM25) p50 / an OR-query ts_rank p50 over the documents table's own
                      tsvector (a stored generated column, GIN-indexed, as users keep one)
  recall_at_10        semantic_search top 10 vs exact nearest neighbours, default settings
  filtered_recall_at_10  the same with a filter matching 1% of rows (full 10 returned)
  similar_vs_semantic semsearch.similar p50 (10 rows like the query's best row, from its stored vectors)
                      / semantic_search p50
"""
from __future__ import annotations

import argparse
import json
import random
import re
import statistics
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import psycopg
from pgvector.psycopg import register_vector
from pgvector.sqlalchemy import HALFVEC, Vector
from sqlalchemy import Integer, Text, cast, create_engine, func, inspect, select, text
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from common import SCIFACT, scratch_database
from quality import load, ndcg_at_10
from semsearch import SearchIndex
from semsearch.database import sqlalchemy_url
from semsearch.options import DEFAULT_MODEL, HYBRID_KEYWORD_TERM_DEPTH, KEYWORD_TERM_DEPTH

CACHE = Path.home() / ".cache" / "semsearch-bench"
NOISE = 0.035  # per-dimension noise on unit vectors: a synthetic copy keeps cosine ~0.6 to its source


class Base(DeclarativeBase):
    pass


class Doc(Base):
    __tablename__ = "docs"
    id: Mapped[int] = mapped_column(primary_key=True)
    tenant: Mapped[int] = mapped_column(Integer, index=True)
    title: Mapped[str] = mapped_column(Text)
    body: Mapped[str] = mapped_column(Text)
    search = SearchIndex("title", "body")


def scifact_vectors(corpus: list[dict]) -> np.ndarray:
    CACHE.mkdir(parents=True, exist_ok=True)
    path = CACHE / f"scifact-{DEFAULT_MODEL}.npy"
    if path.exists():
        return np.load(path)
    from semsearch.embedders import get_embedder

    print(f"embedding {len(corpus)} SciFact abstracts once (cached in {path}) ...", flush=True)
    vectors = get_embedder(DEFAULT_MODEL).encode([d["title"] + "\n\n" + d["text"] for d in corpus], batch_size=64)
    np.save(path, vectors)
    return vectors


def build_corpus(corpus: list[dict], vectors: np.ndarray, n: int, rng: random.Random):
    """(id, tenant, title, body, vector) rows: the real abstracts first, then recombinations."""
    sentences = [re.split(r"(?<=[.!?])\s+", d["text"]) for d in corpus]
    gauss = np.random.default_rng(7)
    for i, d in enumerate(corpus[:n]):
        yield i + 1, (i + 1) % 100, d["title"], d["text"], vectors[i]
    for i in range(len(corpus), n):
        source = rng.randrange(len(corpus))
        other = rng.randrange(len(corpus))
        own = sentences[source][:]
        rng.shuffle(own)
        body = " ".join(own[:max(2, len(own) * 3 // 4)] + rng.sample(sentences[other], min(2, len(sentences[other]))))
        vector = vectors[source] + gauss.normal(0, NOISE, vectors.shape[1])
        yield i + 1, (i + 1) % 100, corpus[source]["title"], body, vector / np.linalg.norm(vector)


def add_user_tsvector(conn) -> bool:
    """The ts_rank baseline's column, as users keep one: a stored generated tsvector on the documents
    table (default storage) with a GIN index. Returns true when it was added."""
    if conn.execute("SELECT 1 FROM pg_attribute WHERE attrelid = 'docs'::regclass AND attname = 'tsv' "
                    "AND NOT attisdropped").fetchone():
        return False
    conn.execute("ALTER TABLE docs ADD COLUMN tsv tsvector GENERATED ALWAYS AS "
                 "(to_tsvector('english', coalesce(title, '') || ' ' || coalesce(body, ''))) STORED")
    conn.execute("CREATE INDEX docs_tsv_gin ON docs USING gin (tsv)")
    return True


def load_database(url: str, rows) -> None:
    engine = create_engine(sqlalchemy_url(url))
    Base.metadata.create_all(engine)
    engine.dispose()
    with psycopg.connect(url, autocommit=True) as conn:
        register_vector(conn)
        add_user_tsvector(conn)  # before the rows: filled and indexed as an application's inserts fill it
        conn.execute("SET maintenance_work_mem = '1GB'")
        conn.execute("DROP INDEX semsearch.store_docs_search_hnsw")
        started = time.monotonic()
        rows = list(rows)
        with conn.cursor().copy("COPY docs (id, tenant, title, body) FROM STDIN") as docs:
            for id_, tenant, title, body, _ in rows:
                docs.write_row((id_, tenant, title, body))
        with conn.cursor().copy("COPY semsearch.store_docs_search (key, chunk, content, embedding, model, content_hash) "
                                "FROM STDIN (FORMAT BINARY)") as store:
            store.set_types(["text", "int4", "text", "vector", "text", "bytea"])
            for id_, _, title, body, vector in rows:
                store.write_row((str(id_), 0, title + "\n\n" + body, vector.astype(np.float32), DEFAULT_MODEL, b""))
        print(f"COPY: {time.monotonic() - started:.0f} s", flush=True)
        started = time.monotonic()
        conn.execute("SELECT semsearch.build_hnsw(semsearch.lookup_index('docs_search'))")
        print(f"HNSW build: {time.monotonic() - started:.0f} s", flush=True)
        started = time.monotonic()
        ix_id = conn.execute("SELECT id FROM semsearch.indexes WHERE name = 'docs_search'").fetchone()[0]
        total = conn.execute("SELECT max(id) FROM docs").fetchone()[0]
        for start in range(1, total + 1, 5000):
            with conn.transaction():
                conn.execute("SELECT semsearch.index_keywords(%s, ARRAY(SELECT g::text FROM generate_series(%s::integer, %s::integer) g))",
                             (ix_id, start, min(start + 4999, total)))
            conn.execute("SELECT semsearch.refresh_keyword_stats(%s)", (ix_id,))  # as the worker does
        conn.execute("DELETE FROM semsearch.queue")  # everything is indexed
        conn.execute("VACUUM ANALYZE")
        print(f"keyword tables: {time.monotonic() - started:.0f} s", flush=True)


def timed(conn, sql: str, params) -> tuple[float, list]:
    started = time.perf_counter()
    with conn.transaction():
        rows = conn.execute(sql, params).fetchall()
    return (time.perf_counter() - started) * 1000, rows


def sizes(conn) -> None:
    print("sizes (table / with its indexes):")
    for name in ("docs", "docs_tsv_gin", "semsearch.store_docs_search", "semsearch.store_docs_search_docs",
                 "semsearch.store_docs_search_postings", "semsearch.store_docs_search_terms",
                 "semsearch.store_docs_search_stats"):
        table, total = conn.execute("SELECT pg_size_pretty(pg_table_size(%s::regclass)), "
                                    "pg_size_pretty(pg_total_relation_size(%s::regclass))", (name, name)).fetchone()
        print(f"  {name:<40} {table:>10} {total:>10}")
    for name in ("semsearch.store_docs_search_hnsw", "semsearch.store_docs_search_docs_gin",
                 "semsearch.store_docs_search_postings_impact", "semsearch.store_docs_search_postings_key"):
        print(f"  {name:<40} {conn.execute('SELECT pg_size_pretty(pg_relation_size(%s::regclass))', (name,)).fetchone()[0]:>21}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=100, help="timed queries (train split)")
    parser.add_argument("--term-depths", type=lambda v: [int(x) for x in v.split(",")], default=[100, 300],
                        help="postings per query term to compare with the default, e.g. 100,300")
    parser.add_argument("--hybrid-depths", type=lambda v: [int(x) for x in v.split(",")], default=[100],
                        help="postings for the rarest term in hybrid's keyword arm to compare with its default")
    parser.add_argument("--database", help="use this database and keep it (the corpus is built only when its "
                                           "table is missing), instead of a scratch one")
    args = parser.parse_args()
    if not SCIFACT.exists():
        raise SystemExit(f"needs the SciFact corpus at {SCIFACT}")
    corpus, queries, qrels = load()
    corpus_json = [json.loads(line) for line in SCIFACT.open()]
    vectors = scifact_vectors(corpus_json)
    from semsearch.embedders import get_embedder

    qids = list(queries)
    query_vectors = dict(zip(qids, get_embedder(DEFAULT_MODEL).encode([queries[q] for q in qids])))
    timed_ids = qids[:args.queries]

    with (nullcontext(args.database) if args.database else scratch_database()) as url:
        if not inspect(create_engine(sqlalchemy_url(url))).has_table(Doc.__tablename__):
            load_database(url, build_corpus(corpus_json, vectors, args.docs, random.Random(7)))
        conn = psycopg.connect(url, autocommit=True, prepare_threshold=None)
        register_vector(conn)
        if add_user_tsvector(conn):  # a kept database from before the column
            conn.execute("VACUUM ANALYZE docs")
        sizes(conn)
        engine = create_engine(sqlalchemy_url(url), connect_args={"prepare_threshold": None})
        # The same chunk rows as semsearch reads for 10 documents (semsearch.chunk_rows: one per document
        # here, and a fifth more).
        chunk_rows, ef_search = conn.execute(
            "SELECT semsearch.chunk_rows(i, 10), semsearch.ef_search_floor(i) FROM semsearch.lookup_index('docs_search') i"
        ).fetchone()
        raw_sql = ("SELECT d.id, d.tenant, d.title, d.body FROM (SELECT key, min(d) AS d FROM (SELECT key, embedding <=> %(v)s AS d "
                   f"FROM semsearch.store_docs_search ORDER BY embedding <=> %(v)s LIMIT {chunk_rows}) c "
                   "GROUP BY key ORDER BY min(d) LIMIT 10) r JOIN docs d ON d.id = r.key::integer ORDER BY r.d")
        or_query = ("SELECT id, ts_rank(tsv, q) FROM docs, "
                    "semsearch.or_query('english', %(q)s) q WHERE tsv @@ q ORDER BY 2 DESC LIMIT 10")
        session = Session(engine)

        def orm(q):
            with session.begin():
                session.execute(Doc.search.semantic(vector=query_vectors[q], limit=10)).all()

        def raw(q):
            with conn.transaction():  # the same ef_search as semsearch's
                conn.execute(f"SET LOCAL hnsw.ef_search = {max(ef_search, chunk_rows)}")
                conn.execute(raw_sql, {"v": query_vectors[q]}).fetchall()

        def sql(statement, *params):
            def run(q):
                with conn.transaction():
                    conn.execute(statement, [{"v": query_vectors[q], "q": queries[q], "k": str(orm_keys[q][0])}[p]
                                             for p in params]).fetchall()
            return run

        storage = conn.execute("SELECT storage FROM semsearch.lookup_index('docs_search')").fetchone()[0]

        class StoreBase(DeclarativeBase):  # (not Doc's: create_all must never create the store)
            pass

        class StoreRow(StoreBase):  # the store as a user would map it for pgvector-python's comparator
            __tablename__ = "store_docs_search"
            __table_args__ = {"schema": "semsearch"}
            key: Mapped[str] = mapped_column(Text, primary_key=True)
            chunk: Mapped[int] = mapped_column(Integer, primary_key=True)
            embedding = mapped_column(HALFVEC(384) if storage == "halfvec" else Vector(384))

        def pgvector_orm(q):  # the same search hand-written in the ORM, as pgvector-python's README shows
            distance = StoreRow.embedding.cosine_distance(query_vectors[q])
            best = select(StoreRow.key, distance.label("d")).order_by(distance).limit(chunk_rows).subquery()
            per_doc = (select(best.c.key, func.min(best.c.d).label("d")).group_by(best.c.key)
                       .order_by(func.min(best.c.d)).limit(10).subquery())
            statement = (select(Doc, (1 - per_doc.c.d).label("score"))
                         .join(per_doc, Doc.id == cast(per_doc.c.key, Integer)).order_by(per_doc.c.d))
            with session.begin():
                session.execute(text(f"SET LOCAL hnsw.ef_search = {max(ef_search, chunk_rows)}"))
                session.execute(statement).all()

        def orm_by_key(q):  # the ORM's own cost: the same 10 rows, found by primary key
            with session.begin():
                session.execute(select(Doc).where(Doc.id.in_(orm_keys[q]))).all()

        def sql_function(q):  # the ORM's statement as a raw-SQL user writes it
            with conn.transaction():
                conn.execute("SELECT d.id, d.tenant, d.title, d.body, s.score FROM semsearch.semantic_search('docs_search', %s, 10) s "
                             "JOIN docs d ON d.id = s.key::integer ORDER BY s.score DESC, d.id",
                             (query_vectors[q],)).fetchall()

        with Session(engine) as s:
            orm_keys = {q: [d.id for d, _ in s.execute(Doc.search.semantic(vector=query_vectors[q], limit=10))]
                        for q in timed_ids}
        kinds = {"orm": orm, "raw": raw, "orm_by_key": orm_by_key, "sql_function": sql_function,
                 "pgvector_orm": pgvector_orm,
                 "semantic": sql("SELECT * FROM semsearch.semantic_search('docs_search', %s, 10)", "v"),
                 "hybrid": sql("SELECT * FROM semsearch.hybrid_search('docs_search', %s, %s, 10)", "q", "v"),
                 "bm25": sql("SELECT * FROM semsearch.keyword_search('docs_search', %s, 10)", "q"),
                 "tsrank": sql(or_query.replace("%(q)s", "%s"), "q"),
                 # more like the query's best row: its stored vectors, no model call
                 "similar": sql("SELECT * FROM semsearch.similar('docs_search', %s, 10)", "k")}
        times: dict[str, list[float]] = {k: [] for k in kinds}

        def timed_run(kind, q):
            started = time.perf_counter()
            kinds[kind](q)
            times[kind].append((time.perf_counter() - started) * 1000)

        # Each kind is timed in a block over all the queries, right after an untimed pass of the same
        # block: every kind is measured on its own warm pages, as in an application that runs it often
        # (the structures together do not fit in shared_buffers, so without the pass a kind would be
        # measured on whatever pages the kind before it left). Blocks rotate over 3 rounds, every kind
        # alike (ts_rank too).
        rotating = list(kinds)
        for rep in range(3):
            for kind in rotating[rep * 2:] + rotating[:rep * 2]:
                for q in timed_ids:
                    kinds[kind](q)
                for q in timed_ids:
                    timed_run(kind, q)
        session.close()
        p50 = {k: statistics.median(v) for k, v in times.items()}
        print("p50 ms: " + ", ".join(f"{k} {v:.2f}" for k, v in p50.items()))
        print(f"the ORM's own cost: {p50['orm_by_key']:.2f} ms to load the same 10 rows by primary key; the ORM "
              f"÷ its statement run as raw SQL through psycopg: {p50['orm'] / p50['sql_function']:.3f}")

        # Accuracy: BM25 reading the best postings per term vs reading them all, on every train query.
        doc_id = {str(i + 1): d["_id"] for i, d in enumerate(corpus_json)}  # keys of the real abstracts

        def keyword_sql(plan):
            text = conn.execute("SELECT semsearch.keyword_sql(semsearch.lookup_index('docs_search'), 'or', %s)",
                                (plan,)).fetchone()[0]
            return re.sub(r"\$(\d)", lambda m: "%(p" + m.group(1) + ")s", text)

        exact, exact_ms = {}, []
        for q in qids:
            ms, rows = timed(conn, keyword_sql("all"), {"p1": queries[q], "p2": 10})
            exact[q] = [doc_id.get(k) for k, *_ in rows]
            exact_ms.append(ms)
        exact_ndcg = statistics.mean(ndcg_at_10(exact[q], qrels[q]) for q in qids)
        print(f"BM25 over {len(qids)} train queries at {args.docs} docs: reading every posting nDCG@10 "
              f"{exact_ndcg:.4f}, p50 {statistics.median(exact_ms):.1f} ms")
        for depth in sorted(set(args.term_depths) | {KEYWORD_TERM_DEPTH}):
            ndcg, ms = [], []
            for q in qids:
                took, rows = timed(conn, keyword_sql("top"), {"p1": queries[q], "p2": 10, "p4": depth, "p6": 100})
                ms.append(took)
                ndcg.append(ndcg_at_10([doc_id.get(k) for k, *_ in rows], qrels[q]))
            print(f"  best {depth} postings per term{' (default)' if depth == KEYWORD_TERM_DEPTH else ''}: "
                  f"nDCG@10 {statistics.mean(ndcg):.4f}, p50 {statistics.median(ms):.1f} ms")

        # Hybrid search's keyword arm reads HYBRID_KEYWORD_TERM_DEPTH postings for the rarest term (rendered
        # into semsearch.hybrid_search); the other depths run a copy of that function, in pg_temp, with
        # only that number changed.
        hybrid_ndcg = {}
        definition = conn.execute("SELECT pg_get_functiondef('semsearch.hybrid_search'::regproc)").fetchone()[0]
        marker = f"{HYBRID_KEYWORD_TERM_DEPTH}, 2 * nk)"
        assert definition.count(marker) == 1, "hybrid_search's keyword depth not found"
        for depth in sorted(set(args.hybrid_depths) | {HYBRID_KEYWORD_TERM_DEPTH}, reverse=True):
            function = "semsearch.hybrid_search"
            if depth != HYBRID_KEYWORD_TERM_DEPTH:
                function = f"pg_temp.hybrid_search_depth{depth}"
                conn.execute(definition.replace("semsearch.hybrid_search(", function + "(", 1)
                             .replace(marker, f"{depth}, 2 * nk)"))
            ndcg, ms = [], []
            for q in qids:
                took, rows = timed(conn, f"SELECT key FROM {function}('docs_search', %s, %s, 10)",
                                   (queries[q], query_vectors[q]))
                ms.append(took)
                ndcg.append(ndcg_at_10([doc_id.get(k) for k, *_ in rows], qrels[q]))
            hybrid_ndcg[depth] = statistics.mean(ndcg)
            print(f"hybrid over {len(qids)} train queries, keyword arm reading {depth} postings for the rarest term"
                  f"{' (default)' if depth == HYBRID_KEYWORD_TERM_DEPTH else ''}: nDCG@10 {hybrid_ndcg[depth]:.4f}, "
                  f"p50 {statistics.median(ms):.1f} ms")

        # Recall of the semantic arm against exact nearest neighbours, unfiltered and 1% filtered.
        recalls, filtered, full = [], [], 0
        exact = "SELECT key FROM semsearch.store_docs_search {} ORDER BY embedding <=> %(v)s LIMIT 10"
        tenant_keys = "ARRAY(SELECT id::text FROM docs WHERE tenant = 7)"
        for q in timed_ids:
            v = query_vectors[q]
            got = {k for k, *_ in conn.execute("SELECT * FROM semsearch.semantic_search('docs_search', %s, 10)", (v,))}
            with conn.transaction():
                conn.execute("SET LOCAL enable_indexscan = off")
                truth = {k for k, in conn.execute(exact.format(""), {"v": v})}
            recalls.append(len(got & truth) / 10)
            got = [k for k, *_ in conn.execute(
                f"SELECT * FROM semsearch.semantic_search('docs_search', %s, 10, {tenant_keys})", (v,))]
            with conn.transaction():
                conn.execute("SET LOCAL enable_indexscan = off")
                truth = {k for k, in conn.execute(exact.format(f"WHERE key = ANY({tenant_keys})"), {"v": v})}
            full += len(got) == 10
            filtered.append(len(set(got) & truth) / 10)
        print(f"filtered searches returning the full 10: {full}/{len(timed_ids)}")
        engine.dispose()
        conn.close()

    for depth, ndcg in hybrid_ndcg.items():
        print(f"hybrid_ndcg10_depth{depth}: {ndcg:.4f}")
    print(f"orm_vs_raw: {p50['orm'] / p50['raw']:.3f}")
    print(f"orm_vs_pgvector_orm: {p50['orm'] / p50['pgvector_orm']:.3f}")
    print(f"sql_function_vs_raw: {p50['sql_function'] / p50['raw']:.3f}")
    print(f"hybrid_vs_semantic: {p50['hybrid'] / p50['semantic']:.3f}")
    print(f"bm25_vs_tsrank: {p50['bm25'] / p50['tsrank']:.3f}")
    print(f"recall_at_10: {statistics.mean(recalls):.3f}")
    print(f"filtered_recall_at_10: {statistics.mean(filtered):.3f}")
    print(f"similar_vs_semantic: {p50['similar'] / p50['semantic']:.3f}")


if __name__ == "__main__":
    main()
