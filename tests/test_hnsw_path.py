"""The HNSW index really serves searches: the index's own scan counter (pg_stat_user_indexes.idx_scan of
semsearch.<store_table>_hnsw) rises with each semantic and hybrid search, through the SQL functions and
the ORM alike. (The EXPLAIN tests go through semsearch.explain(), which plans the arm's SQL apart from
the search functions: a semantic arm that always scored the whole store exactly would pass them.)

The store holds 3,000 chunk rows, clustered as real embeddings are: enough that reading it whole is the
slower plan, so the planner's choice of the index is not an accident of a tiny table."""
from __future__ import annotations

import psycopg
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from semsearch import SearchIndex
from semsearch.database import sqlalchemy_url

from .topic_corpus import TOPIC_NAMES, WordVectorEmbedder, document, hnsw_scans_during, load, scratch_database

EMBEDDER = WordVectorEmbedder("word-vectors", dimensions=32)
ROWS = 3000


class PathBase(DeclarativeBase):
    pass


class Entry(PathBase):
    __tablename__ = "entries"
    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str]
    body: Mapped[str]
    search = SearchIndex("title", "body", model="word-vectors", dimensions=32)


QUERY = "telescope orbit report"
VECTOR = EMBEDDER.encode(["telescope orbit comet galaxy"])[0]
FORCE_FLUSH = "SELECT pg_stat_force_next_flush()"  # (PostgreSQL 15+) the statistics go out when the session idles


@pytest.fixture(scope="module")
def entries(server_url):
    with scratch_database(server_url) as url:
        engine = create_engine(sqlalchemy_url(url))
        load(url, engine, Entry, [(i, *document(i, TOPIC_NAMES[i % 10])) for i in range(1, ROWS + 1)], EMBEDDER)
        with psycopg.connect(url) as conn:
            store = conn.execute("SELECT store_table FROM semsearch.indexes WHERE name = 'entries_search'").fetchone()[0]
        yield url, engine, store
        engine.dispose()


def sql_search(statement: str, params):
    def run(url, engine):
        with psycopg.connect(url) as conn:  # one transaction: the flush request, then the search
            conn.execute(FORCE_FLUSH)
            rows = conn.execute(statement, params).fetchall()
        return len(rows)
    return run


def orm_search(query):
    def run(url, engine):
        with Session(engine) as session:
            session.execute(text(FORCE_FLUSH))
            rows = session.execute(query()).all()
            session.commit()
        return len(rows)
    return run


SEARCHES = {
    "semsearch.semantic_search": sql_search(
        "SELECT key FROM semsearch.semantic_search('entries_search', %s::vector, 10)", (str(VECTOR.tolist()),)),
    "semsearch.hybrid_search": sql_search(
        "SELECT key FROM semsearch.hybrid_search('entries_search', %s, %s::vector, 10)", (QUERY, str(VECTOR.tolist()))),
    "Entry.search.semantic": orm_search(lambda: Entry.search.semantic(vector=VECTOR, limit=10)),
    "Entry.search.hybrid": orm_search(lambda: Entry.search.hybrid(QUERY, vector=VECTOR, limit=10)),
}


@pytest.mark.parametrize("search", SEARCHES)
def test_the_hnsw_index_serves_the_search(entries, search):
    url, engine, store = entries
    found = []
    scanned = hnsw_scans_during(url, store, lambda: found.append(SEARCHES[search](url, engine)))
    assert found == [10]
    assert scanned >= 1, f"{search} read the store without its HNSW index"


@pytest.mark.parametrize("store_rows, ef_search", [(3_000, 100), (300_000, 300), (1_900_000, 1000)])
def test_the_candidate_list_grows_with_the_store(entries, store_rows, ef_search):
    """HNSW finds a smaller share of the true nearest rows as its graph grows: the searches' candidate
    list (hnsw.ef_search) grows with the store's row count as the planner knows it (here made to read as
    a large store's), up to pgvector's 1000; a session's own higher setting is kept."""
    url, engine, store = entries
    with psycopg.connect(url) as conn:  # (one transaction: the changed count is never seen by others)
        conn.execute("UPDATE pg_class SET reltuples = %s WHERE oid = %s::regclass", (store_rows, f"semsearch.{store}"))
        assert len(conn.execute("SELECT key FROM semsearch.semantic_search('entries_search', %s::vector, 10)",
                                (str(VECTOR.tolist()),)).fetchall()) == 10
        assert conn.execute("SELECT current_setting('hnsw.ef_search')").fetchone() == (str(ef_search),)
        conn.rollback()
        conn.execute("SET hnsw.ef_search = 1000")
        conn.execute("SELECT key FROM semsearch.hybrid_search('entries_search', 'orbit', %s::vector, 10)",
                     (str(VECTOR.tolist()),)).fetchall()
        assert conn.execute("SELECT current_setting('hnsw.ef_search')").fetchone() == ("1000",)
        conn.rollback()
