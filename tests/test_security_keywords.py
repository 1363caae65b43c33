"""Row-level security on the KEYWORD arm's tables, with real roles (README, "Row-level security"): two
tenants share a table under a real RLS policy; as tenant A, no keyword search in any syntax (SQL
functions, hybrid, ORM, `semsearch search`) returns, scores or ranks B's rows, and no table of schema
semsearch that A can read at all holds anything of B's rows. The model is not the subject (fake embedder).

B's rows say "shared words" three times, A's once: for a query both match, B's rows outscore A's. So a
keyword table that stopped filtering B's rows shows twice: B's keys in the results, or (where a later
step still filters them, the ORM's join to the table, the exact rescoring from the docs table) A's rows
pushed out of its own full limit."""
import re
import subprocess

import numpy as np
import psycopg
import pytest
from sqlalchemy import create_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from semsearch import SearchIndex
from semsearch.database import sqlalchemy_url
from semsearch.options import KEYWORD_SYNTAXES

from .helpers import drain
from .tenants import CLI, two_tenants

A_KEYS = {str(i) for i in range(1, 13)}          # 12 rows
B_KEYS = {str(i) for i in range(100, 290)}       # 190 rows: more than any arm's default depth of rescored rows
SHARED = "shared words"                          # in every row, B's three times: B's rows score better
B_ONLY = "confidential zeppelin merger"          # only in B's rows (a phrase there too)
B_ONLY_LEXEMES = {"confidenti", "zeppelin", "merger"}
A_ONLY_LEXEMES = {"appl", "pie", "recip"}
VECTOR = [float(v) for v in np.random.default_rng(7).standard_normal(384)]
INDEX = "docs_search"


@pytest.fixture
def tenants(db_url, fake_embedder):
    """docs(id, tenant, body) with RLS tenant = current_user, installed by a non-superuser owner; A owns
    keys 1-12, B keys 100-289; an app grant for each tenant, a worker role that indexes them."""
    with two_tenants(db_url, INDEX,
                     "INSERT INTO docs (id, body) SELECT i, 'shared words apple pie recipe ' || i "
                     "FROM generate_series(1, 12) i",
                     "INSERT INTO docs (id, body) SELECT i, 'shared words shared words shared words "
                     "confidential zeppelin merger ' || i FROM generate_series(100, 289) i") as urls:
        drain(urls["worker"], fake_embedder("all-MiniLM-L6-v2"))
        with psycopg.connect(urls["owner"]) as owner:
            # Everything indexed, and B's rows outrank A's for the shared query in every syntax: without the
            # keyword tables' row-level security B's rows would fill A's limit.
            assert owner.execute(f"SELECT count(*) FROM semsearch.store_{INDEX}_docs").fetchone() == (202,)
            for syntax in KEYWORD_SYNTAXES:
                top = owner.execute("SELECT key FROM semsearch.keyword_search(%s, %s, 100, %s)",
                                    (INDEX, SHARED, syntax)).fetchall()
                assert {k for (k,) in top} <= B_KEYS and len(top) == 100, (syntax, top)
        yield urls


def assert_ranked_among_own_rows(rows, what):
    """(key, score, rank) rows: A's keys only, each ranked 1 + the number of A's rows that score better."""
    assert {k for k, _, _ in rows} <= A_KEYS, (what, rows)
    assert [r for _, _, r in rows] == [1 + sum(other > s for _, other, _ in rows) for _, s, _ in rows], (what, rows)


def test_keyword_and_hybrid_search_in_every_syntax_never_return_score_or_rank_another_tenants_rows(tenants):
    vector = str(VECTOR)
    few_keys = sorted(B_KEYS)[:20] + sorted(A_KEYS)               # scored row by row from the docs table
    many_keys = [str(i) for i in range(1, 700)]                    # more than 500: read from the postings
    with psycopg.connect(tenants["tenant_a"], autocommit=True) as a:
        for syntax in KEYWORD_SYNTAXES:
            # Words only B's rows hold: nothing, whether unfiltered or filtered to B's keys.
            for filter_keys in (None, few_keys, many_keys):
                rows = a.execute("SELECT key, score, rank FROM semsearch.keyword_search(%s, %s, 10, %s, %s)",
                                 (INDEX, B_ONLY, syntax, filter_keys)).fetchall()
                assert rows == [], (syntax, filter_keys and len(filter_keys), rows)
            # Words every row holds: A's full limit of its own rows, ranked among A's rows only.
            for filter_keys in (None, few_keys, many_keys):
                rows = a.execute("SELECT key, score, rank FROM semsearch.keyword_search(%s, %s, 10, %s, %s)",
                                 (INDEX, SHARED, syntax, filter_keys)).fetchall()
                assert len(rows) == 10, (syntax, filter_keys and len(filter_keys), rows)
                assert_ranked_among_own_rows(rows, (syntax, filter_keys and len(filter_keys)))
            for fusion in ("rrf", "minmax", "zscore"):
                # B's words: the semantic arm's rows (A's) only, and no keyword rank or score for any of them.
                rows = a.execute("SELECT key, keyword_rank, keyword_score FROM semsearch.hybrid_search(%s, %s, %s::vector, "
                                 "10, keyword_syntax => %s, fusion => %s)", (INDEX, B_ONLY, vector, syntax, fusion)).fetchall()
                assert len(rows) == 10 and {k for k, _, _ in rows} <= A_KEYS, (syntax, fusion, rows)
                assert all(rank is None and not score for _, rank, score in rows), (syntax, fusion, rows)
                # Shared words: every row A's, its keyword rank among A's 12 rows.
                rows = a.execute("SELECT key, keyword_rank FROM semsearch.hybrid_search(%s, %s, %s::vector, 10, "
                                 "keyword_syntax => %s, fusion => %s, semantic_weight => 0.01)",
                                 (INDEX, SHARED, vector, syntax, fusion)).fetchall()
                assert len(rows) == 10 and {k for k, _ in rows} <= A_KEYS, (syntax, fusion, rows)
                assert all(rank is not None and rank <= len(A_KEYS) for _, rank in rows), (syntax, fusion, rows)


def docs_model():
    class Base(DeclarativeBase):
        pass

    class Doc(Base):
        __tablename__ = "docs"
        id: Mapped[int] = mapped_column(primary_key=True)
        tenant: Mapped[str]
        body: Mapped[str]
        search = SearchIndex("body", name=INDEX)

    return Doc


def test_orm_and_cli_keyword_searches_in_every_syntax_give_a_tenant_its_full_limit_of_its_own_rows(tenants):
    """The ORM joins the function's keys to the table (under A's own policy), so B's keys could never
    come back through it: a leak shows as A's rows pushed out of A's limit by B's better-scoring rows."""
    Doc = docs_model()
    engine = create_engine(sqlalchemy_url(tenants["tenant_a"]))
    try:
        with Session(engine) as session:
            for syntax in KEYWORD_SYNTAXES:
                rows = session.execute(Doc.search.keyword(SHARED, limit=10, syntax=syntax)).all()
                assert len(rows) == 10 and {str(d.id) for d, _ in rows} <= A_KEYS, (syntax, rows)
                assert session.execute(Doc.search.keyword(B_ONLY, limit=10, syntax=syntax)).all() == []
                rows = session.execute(Doc.search.hybrid(SHARED, vector=VECTOR, limit=10, keyword_syntax=syntax,
                                                         semantic_weight=0.01, arm_scores=True)).all()
                assert len(rows) == 10 and {str(r[0].id) for r in rows} <= A_KEYS, (syntax, rows)
                assert all(r.keyword_rank is not None and r.keyword_rank <= len(A_KEYS) for r in rows), (syntax, rows)
                rows = session.execute(Doc.search.hybrid(B_ONLY, vector=VECTOR, limit=10, keyword_syntax=syntax,
                                                         arm_scores=True)).all()
                assert all(r.keyword_rank is None for r in rows), (syntax, rows)
    finally:
        engine.dispose()
    for syntax in KEYWORD_SYNTAXES:
        out = subprocess.run(CLI + ["search", INDEX, SHARED, "--mode", "keyword", "--syntax", syntax, "--limit", "10",
                                    "--url", tenants["tenant_a"]], capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        keys = re.findall(r"key=(\S+)", out.stdout)
        assert len(keys) == 10 and set(keys) <= A_KEYS and "zeppelin" not in out.stdout, (syntax, out.stdout)


# The keyword tables that hold no row's key, only corpus-wide counts: what BM25's IDF and average length
# need. Their columns, exactly. A tenant reads them whole, so it can learn that some rows it cannot read
# hold a term and how many do (document frequency per term, and the corpus size), but never which rows,
# their text, or their scores: no column here can carry a key, a text, a term list or a vector. A new
# readable table without a key column fails the test until it is examined and named here.
AGGREGATE_TABLES = {f"store_{INDEX}_terms": ["term", "shard", "df"], f"store_{INDEX}_stats": ["shard", "docs", "length"]}


def test_every_semsearch_table_a_tenant_can_read_holds_only_its_own_rows(tenants):
    """Every relation of schema semsearch that A may SELECT at all (table privilege or any column's),
    read whole: where it has a key column, only A's keys and none of B's words (a term of B's rows never
    appears beside a key, even an A key); else it is one of AGGREGATE_TABLES, with exactly their columns.
    The queue, the failures and the registry A cannot read or write at all, nor write the keyword tables."""
    with psycopg.connect(tenants["tenant_a"], autocommit=True) as a:
        reachable = [r for (r,) in a.execute(
            "SELECT c.relname FROM pg_class c WHERE c.relnamespace = 'semsearch'::regnamespace "
            "AND c.relkind IN ('r', 'p', 'v', 'm', 'f') "
            "AND (has_table_privilege(current_user, c.oid, 'SELECT') "
            "     OR has_any_column_privilege(current_user, c.oid, 'SELECT')) ORDER BY 1")]
        keyed = {f"store_{INDEX}", f"store_{INDEX}_docs", f"store_{INDEX}_postings"}
        assert keyed | set(AGGREGATE_TABLES) <= set(reachable), reachable
        for name in reachable:
            cur = a.execute(f'SELECT t::text AS row_text, t.* FROM semsearch."{name}" t')
            columns = [d.name for d in cur.description][1:]
            rows = cur.fetchall()
            if "key" not in columns:
                assert AGGREGATE_TABLES.get(name) == columns, (
                    f"semsearch.{name} is readable by an application role and names no key: examine what it "
                    f"reveals of other tenants' rows, then add it to AGGREGATE_TABLES ({columns})")
                continue
            keys = {row[1 + columns.index("key")] for row in rows}
            assert keys <= A_KEYS, (name, sorted(keys - A_KEYS)[:10])
            if name in keyed:
                assert keys == A_KEYS, (name, sorted(keys))  # A does see its own rows: not vacuous
            leaked = [row[0] for row in rows if any(w in row[0] for w in B_ONLY_LEXEMES | {"confidential"})]
            assert leaked == [], (name, leaked[:3])
        # The postings of a term only B's rows hold: none, even asked for by term.
        assert a.execute(f"SELECT count(*) FROM semsearch.store_{INDEX}_postings WHERE term = ANY(%s)",
                         (list(B_ONLY_LEXEMES),)).fetchone() == (0,)
        assert a.execute(f"SELECT count(*) FROM semsearch.store_{INDEX}_docs WHERE terms && %s::text[]",
                         (list(B_ONLY_LEXEMES),)).fetchone() == (0,)
        assert a.execute(f"SELECT count(*) FROM semsearch.store_{INDEX}_docs WHERE terms && %s::text[]",
                         (list(A_ONLY_LEXEMES),)).fetchone() == (12,)
        forbidden = ["SELECT * FROM semsearch.queue", "SELECT * FROM semsearch.failures", "SELECT * FROM semsearch.indexes",
                     "DELETE FROM semsearch.queue", "DELETE FROM semsearch.failures",
                     "UPDATE semsearch.indexes SET problem = NULL",
                     f"DELETE FROM semsearch.store_{INDEX}_docs", f"DELETE FROM semsearch.store_{INDEX}_postings",
                     f"UPDATE semsearch.store_{INDEX}_terms SET df = 0", f"UPDATE semsearch.store_{INDEX}_stats SET docs = 0"]
        for statement in forbidden:
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                a.execute(statement)
