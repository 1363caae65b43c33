"""Least privilege and row-level security, with real roles: an owner (not a superuser) installs
semsearch, two tenants share a table under a real RLS policy, a separate worker role embeds."""
import subprocess
from urllib.parse import urlsplit

import numpy as np
import psycopg
import pytest
from sqlalchemy import create_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from semsearch import SearchIndex, SemsearchError, Worker
from semsearch.database import sqlalchemy_url

from .tenants import CLI, as_user, two_tenants

A_ROWS, B_ROWS = 12, 190


@pytest.fixture
def tenants(db_url, fake_embedder):
    """docs(id, tenant, body) with RLS tenant = current_user; A owns 12 rows, B 190 (all mention apples)."""
    with two_tenants(db_url, "docs_search",
                     f"INSERT INTO docs (id, body) SELECT i, 'apple pie recipe number ' || i FROM generate_series(1, {A_ROWS}) i",
                     "INSERT INTO docs (id, body) SELECT i, 'apple apple apple confidential B plan ' || i "
                     f"FROM generate_series(100, {99 + B_ROWS}) i") as urls:
        Worker(urls["worker"], poll_interval=0.2,
               embedder_factory=lambda model: fake_embedder(model)).run(drain=True)
        with psycopg.connect(urls["owner"]) as owner:
            assert owner.execute("SELECT count(DISTINCT key) FROM semsearch.store_docs_search").fetchone() == (
                A_ROWS + B_ROWS,)
        yield urls


def test_searches_never_show_score_or_rank_another_tenants_rows(tenants):
    vector = "[" + ",".join(str(v) for v in np.random.default_rng(1).standard_normal(384)) + "]"
    a_keys = {str(i) for i in range(1, A_ROWS + 1)}
    with psycopg.connect(tenants["tenant_a"]) as a:
        keyword = a.execute("SELECT key, score, rank FROM semsearch.keyword_search('docs_search', 'apple', 10)").fetchall()
        assert len(keyword) == 10 and {k for k, _, _ in keyword} <= a_keys
        # Ranked among A's rows only: a rank is 1 + the number of A's rows that score better (ties share it).
        assert [r for _, _, r in keyword] == [1 + sum(other > s for _, other, _ in keyword) for _, s, _ in keyword]
        semantic = a.execute("SELECT key FROM semsearch.semantic_search('docs_search', %s::vector, 10)", (vector,)).fetchall()
        assert len(semantic) == 10 and {k for (k,) in semantic} <= a_keys
        hybrid = a.execute("SELECT key, semantic_rank, keyword_rank FROM semsearch.hybrid_search("
                           "'docs_search', 'confidential apple plan', %s::vector, 10)", (vector,)).fetchall()
        assert len(hybrid) == 10 and {k for k, _, _ in hybrid} <= a_keys
        assert max(r for _, r, _ in hybrid if r) <= A_ROWS and max(r for _, _, r in hybrid if r) <= A_ROWS
        # A direct read of the store shows A's rows and nothing else.
        assert a.execute("SELECT count(*) FROM semsearch.store_docs_search").fetchone() == (A_ROWS,)
        assert a.execute("SELECT count(*) FROM semsearch.store_docs_search WHERE content LIKE '%confidential%'"
                         ).fetchone() == (0,)
        # Under a pinned search_path the functions still find vector's operators.
        a.execute("SET search_path = pg_catalog")
        assert len(a.execute("SELECT * FROM semsearch.hybrid_search('docs_search', 'apple', %s::public.vector, 5)",
                             (vector,)).fetchall()) == 5
        a.rollback()
        for forbidden in ("SELECT * FROM semsearch.queue", "SELECT * FROM semsearch.indexes",
                          "SELECT * FROM semsearch.failures", "SELECT * FROM semsearch.read_source(1, ARRAY['100'])",
                          "DELETE FROM semsearch.queue", "SELECT semsearch.backfill_step('docs_search')"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                a.execute(forbidden)
            a.rollback()


def docs_model(index_name="docs_search"):
    """The tenants' table as an application maps it."""

    class Base(DeclarativeBase):
        pass

    class Doc(Base):
        __tablename__ = "docs"
        id: Mapped[int] = mapped_column(primary_key=True)
        tenant: Mapped[str]
        body: Mapped[str]
        search = SearchIndex("body", name=index_name)

    return Base, Doc


def test_cli_and_orm_as_a_tenant(tenants):
    out = subprocess.run(CLI + ["search", "docs_search", "apple confidential", "--mode", "keyword", "--limit", "10",
                                "--url", tenants["tenant_a"]], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 10 and "confidential" not in out.stdout, out.stdout

    Base, Doc = docs_model()
    engine = create_engine(sqlalchemy_url(tenants["tenant_a"]))
    with Session(engine) as session:
        rows = session.execute(Doc.search.keyword("apple confidential plan", limit=10)).all()
        assert len(rows) == 10 and all(doc.id <= A_ROWS for doc, _ in rows)
        rows = session.execute(Doc.search.hybrid("apple", vector=[0.1] * 384, limit=10)).all()
        assert len(rows) == 10 and all(doc.id <= A_ROWS for doc, _ in rows)
    engine.dispose()


def test_worker_refuses_a_table_it_cannot_fully_see_and_deletes_nothing(tenants, fake_embedder):
    with psycopg.connect(tenants["owner"], autocommit=True) as owner:
        owner.execute("ALTER TABLE docs FORCE ROW LEVEL SECURITY")  # now RLS hides B's rows from the owner too
    with psycopg.connect(tenants["tenant_b"], autocommit=True) as b:
        b.execute("UPDATE docs SET body = body || ' updated'")
    with pytest.raises(SemsearchError, match="row-level security on public.docs hides rows"):
        Worker(tenants["worker"], poll_interval=0.2, embedder_factory=lambda m: fake_embedder(m)).run(drain=True)
    with psycopg.connect(tenants["owner"]) as owner:
        owner.execute("ALTER TABLE docs NO FORCE ROW LEVEL SECURITY")
        owner.commit()
        assert owner.execute("SELECT count(DISTINCT key) FROM semsearch.store_docs_search").fetchone() == (A_ROWS + B_ROWS,)
        assert owner.execute("SELECT count(*) FROM semsearch.failures").fetchone() == (0,)
        assert "row-level security" in owner.execute("SELECT problem FROM semsearch.status").fetchone()[0]
    Worker(tenants["worker"], poll_interval=0.2, embedder_factory=lambda m: fake_embedder(m)).run(drain=True)
    with psycopg.connect(tenants["owner"]) as owner:
        assert owner.execute("SELECT count(*) FROM semsearch.store_docs_search WHERE content LIKE '%updated'"
                             ).fetchone() == (B_ROWS,)
        assert owner.execute("SELECT problem FROM semsearch.status").fetchone() == (None,)


def test_an_application_role_runs_create_all_at_start_up(tenants):
    """Its tables and indexes exist (the owner's migrations made them): create_all checks, changes nothing."""

    Base, Doc = docs_model()
    engine = create_engine(sqlalchemy_url(tenants["tenant_a"]))
    Base.metadata.create_all(engine)

    Other, _ = docs_model("missing_search")
    with pytest.raises(SemsearchError, match="'missing_search' does not exist, and role .* cannot create it"):
        Other.metadata.create_all(engine)
    engine.dispose()


def test_key_rename_and_table_rename_keep_searches_working(tenants):
    with psycopg.connect(tenants["owner"], autocommit=True) as owner:
        owner.execute("ALTER TABLE docs RENAME COLUMN id TO doc_id")
        owner.execute("ALTER TABLE docs RENAME TO documents")
    with psycopg.connect(tenants["tenant_a"]) as a:
        rows = a.execute("SELECT key FROM semsearch.keyword_search('docs_search', 'apple', 5)").fetchall()
        assert len(rows) == 5 and all(int(k) <= A_ROWS for (k,) in rows)
    out = subprocess.run(CLI + ["install", "--url", tenants["owner"]], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr


def test_column_privileges_are_honoured(tenants, db_url):
    with psycopg.connect(db_url, autocommit=True) as su:
        su.execute(f"CREATE ROLE viewer_{urlsplit(db_url).path[-8:]} LOGIN")
    viewer = f"viewer_{urlsplit(db_url).path[-8:]}"
    with psycopg.connect(tenants["owner"], autocommit=True) as owner:
        owner.execute("ALTER TABLE docs DISABLE ROW LEVEL SECURITY")
        owner.execute(f"GRANT SELECT (id, tenant) ON docs TO {viewer}")  # not body, the indexed column
        owner.execute(f"SELECT semsearch.grant_app_role('{viewer}')")
    with psycopg.connect(as_user(db_url, viewer)) as v:
        assert v.execute("SELECT count(*) FROM semsearch.store_docs_search").fetchone() == (0,)
        assert v.execute("SELECT * FROM semsearch.keyword_search('docs_search', 'apple', 5)").fetchall() == []
    with psycopg.connect(db_url, autocommit=True) as su:
        su.execute(f"DROP OWNED BY {viewer} CASCADE")
        su.execute(f"DROP ROLE {viewer}")


def test_a_small_tenant_among_many_rows_gets_its_full_limit(tenants):
    """12 of A's rows among 30,000 of B's: the semantic arm's HNSW scan goes on (iterative scan) until it
    has found A's rows, where pgvector's default scan limits would stop it short; the keyword arm reads
    deeper into each term's postings until A's rows fill the limit."""
    with psycopg.connect(tenants["owner"], autocommit=True) as owner:
        b = owner.execute("SELECT tenant FROM docs WHERE id = 100").fetchone()[0]
        owner.execute("INSERT INTO docs (id, tenant, body) SELECT g, %s, 'apple bulk ' || g FROM generate_series(1000, 30999) g",
                      (b,))
        # B's short rows rank first for "apple": A's rows sit at the very end of the term's postings.
        owner.execute("SELECT semsearch.index_keywords((semsearch.lookup_index('docs_search')).id, "
                      "ARRAY(SELECT g::text FROM generate_series(1000, 30999) g))")
        owner.execute("DROP INDEX semsearch.store_docs_search_hnsw")
        owner.execute("INSERT INTO semsearch.store_docs_search (key, chunk, content, embedding, model, content_hash) "
                      "SELECT g::text, 0, 'bulk ' || g, (SELECT array_agg(random()::real - 0.5) "
                      "FROM generate_series(1, 384) WHERE g > 0)::vector, 'm', '' FROM generate_series(1000, 30999) g")
        owner.execute("SELECT semsearch.build_hnsw(semsearch.lookup_index('docs_search'))")
        owner.execute("ANALYZE semsearch.store_docs_search")
    vector = "[" + ",".join(str(v) for v in np.random.default_rng(2).standard_normal(384)) + "]"
    with psycopg.connect(tenants["tenant_a"]) as a:
        keys = [k for (k,) in a.execute("SELECT key FROM semsearch.semantic_search('docs_search', %s::vector, 10)",
                                        (vector,)).fetchall()]
        assert len(keys) == 10 and all(int(k) <= A_ROWS for k in keys), keys
        plan = "\n".join(r[0] for r in a.execute(
            "SELECT * FROM semsearch.explain('docs_search', 'semantic', 'x', %s::vector, 10)", (vector,)))
        assert "store_docs_search_hnsw" in plan, plan
        # The keyword arm reads past the other tenant's postings until A's own rows fill the limit.
        keys = [k for (k,) in a.execute("SELECT key FROM semsearch.keyword_search('docs_search', 'apple', 10)")]
        assert len(keys) == 10 and all(int(k) <= A_ROWS for k in keys), keys
        rows = a.execute("SELECT key, keyword_rank FROM semsearch.hybrid_search('docs_search', 'apple', %s::vector, 10)",
                         (vector,)).fetchall()
        assert len(rows) == 10 and all(int(k) <= A_ROWS and rank is not None for k, rank in rows), rows
