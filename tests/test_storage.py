"""halfvec storage: the store keeps float2 vectors (half the size), its HNSW index is built on them and
searches use it, with the same results as float4 storage; through create_all, the worker and the ORM."""
from __future__ import annotations

import os
import subprocess
import sys

from sqlalchemy import create_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from semsearch import SearchIndex
from semsearch.database import sqlalchemy_url

from .helpers import drain
from .psql import psql

TOPICS = ["The office printer jams on double-sided pages.", "The VPN drops every hour when working from home.",
          "I cannot reset my password: the email never arrives.", "My laptop battery drains in two hours."]


class Base(DeclarativeBase):
    pass


class Full(Base):
    __tablename__ = "storage_full"
    id: Mapped[int] = mapped_column(primary_key=True)
    body: Mapped[str]
    search = SearchIndex("body")


class Half(Base):
    __tablename__ = "storage_half"
    id: Mapped[int] = mapped_column(primary_key=True)
    body: Mapped[str]
    search = SearchIndex("body", storage="halfvec")


def test_halfvec_store_is_half_the_size_and_searches_alike(db_url, conn):
    engine = create_engine(sqlalchemy_url(db_url))
    Base.metadata.create_all(engine)
    with Session(engine) as s:
        for model in (Full, Half):
            s.add_all(model(id=i, body=f"{TOPICS[i % 4]} Ticket {i} of the help desk queue.") for i in range(1, 401))
        s.commit()
    drain(db_url)
    assert conn.execute("SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attname = 'embedding' "
                        "AND attrelid = 'semsearch.store_storage_half_search'::regclass").fetchone() == ("halfvec(384)",)
    assert "halfvec_cosine_ops" in conn.execute(
        "SELECT indexdef FROM pg_indexes WHERE indexname = 'store_storage_half_search_hnsw'").fetchone()[0]
    vector = "[" + ",".join(["0.05"] * 384) + "]"
    # Whether the HNSW index serves the query at all: on 400 rows, once autovacuum has analysed the store,
    # a sequential scan can cost less, so take that choice away.
    conn.execute("SET enable_seqscan = off")
    plan = "\n".join(r[0] for r in conn.execute(
        "SELECT * FROM semsearch.explain('storage_half_search', 'semantic', 'x', %s::vector)", (vector,)))
    assert "Index Scan using store_storage_half_search_hnsw" in plan, plan

    with Session(engine) as s:
        for query in ("my password reset email", "printer jams", "battery life"):
            full = [(t.id, round(score, 2)) for t, score in s.execute(Full.search.semantic(query, limit=8))]
            half = [(t.id, round(score, 2)) for t, score in s.execute(Half.search.semantic(query, limit=8))]
            assert {i % 4 for i, _ in half} == {i % 4 for i, _ in full} and len({i % 4 for i, _ in half}) == 1
            assert [score for _, score in half] == [score for _, score in full]
            assert [t.id for t, *_ in s.execute(Half.search.hybrid(query, limit=5))] == \
                [t.id for t, *_ in s.execute(Full.search.hybrid(query, limit=5))]
    vectors = dict(conn.execute(
        "SELECT index_name, pg_relation_size(format('semsearch.store_%s_hnsw', index_name)::regclass) "
        "FROM semsearch.status").fetchall())
    assert vectors["storage_half_search"] < 0.7 * vectors["storage_full_search"]
    engine.dispose()


def semsearch_cli(db_url, *args):
    out = subprocess.run([sys.executable, "-m", "semsearch.cli", *args], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "SEMSEARCH_DATABASE_URL": db_url})
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_an_index_on_a_table_with_rows_fills_its_store_first_and_builds_its_hnsw_index_once(db_url, conn):
    """A raw SQL user indexes a table that already has rows: the store fills without its HNSW index
    (COPY speed), searches work meanwhile, and the worker builds the index once at the end."""
    conn.execute("CREATE TABLE filled (id int PRIMARY KEY, body text)")
    conn.execute("INSERT INTO filled SELECT i, (%s::text[])[1 + i %% 4] || ' Ticket ' || i FROM generate_series(1, 300) i",
                 (TOPICS,))
    conn.commit()
    semsearch_cli(db_url, "install")
    out = psql(db_url, "-c", "SELECT semsearch.create_index('filled_search', 'filled', ARRAY['body'])")
    assert out.returncode == 0, out.stderr

    def hnsw() -> bool:
        return conn.execute("SELECT count(*) FROM pg_indexes WHERE indexname = 'store_filled_search_hnsw'").fetchone()[0] == 1

    def postings_indexes() -> int:
        return conn.execute("SELECT count(*) FROM pg_indexes WHERE tablename = 'store_filled_search_postings'").fetchone()[0]

    assert not hnsw(), "a first fill goes into a store without its HNSW index"
    assert postings_indexes() == 0, "... and keyword postings without their indexes"
    assert "first fill, HNSW index at its end" in semsearch_cli(db_url, "status")
    early = subprocess.run([sys.executable, "-m", "semsearch.cli", "search", "filled_search", "printer"],
                           capture_output=True, text=True, timeout=300, env={**os.environ, "SEMSEARCH_DATABASE_URL": db_url})
    assert early.returncode == 0 and early.stdout == "", early.stderr
    assert "no results in filled_search yet: it holds 0 documents and its table's rows wait for a worker" in early.stderr

    semsearch_cli(db_url, "worker", "--drain")
    assert hnsw(), "the worker builds the HNSW index once the backfill is through"
    assert postings_indexes() == 2, "... and the postings' indexes"
    assert "printer" in semsearch_cli(db_url, "search", "filled_search", "printer jams", "--mode", "keyword", "--limit", "1")
    assert conn.execute("SELECT count(DISTINCT key), bool_or(first_fill) FROM semsearch.store_filled_search, "
                        "semsearch.status WHERE index_name = 'filled_search'").fetchone() == (300, False)
    assert "first fill" not in semsearch_cli(db_url, "status")
    assert "printer" in semsearch_cli(db_url, "search", "filled_search", "my printer keeps jamming", "--mode", "semantic",
                                      "--limit", "1")

    conn.execute("INSERT INTO filled VALUES (301, 'The coffee machine in the kitchen leaks water.')")
    conn.commit()
    semsearch_cli(db_url, "worker", "--drain")  # incremental from now on, into the indexed store
    assert conn.execute("SELECT count(DISTINCT key) FROM semsearch.store_filled_search").fetchone()[0] == 301
    conn.execute("SET enable_seqscan = off")
    plan = "\n".join(r[0] for r in conn.execute(
        "SELECT * FROM semsearch.explain('filled_search', 'semantic', 'x', %s::vector)", ("[" + ",".join(["0.05"] * 384) + "]",)))
    assert "Index Scan using store_filled_search_hnsw" in plan, plan
