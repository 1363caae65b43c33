"""Hostile and extreme input: clear errors (SemsearchError; the CLI exits 2 with one line), nothing lost."""
import math
import subprocess
import sys

import psycopg
import pytest
from sqlalchemy.orm import Session

from semsearch import SemsearchError, Worker
from semsearch.errors import InvalidQuery

from .helpers import drain, store_rows
from .models import Article, Base

CLI = [sys.executable, "-m", "semsearch.cli"]
VECTOR = [0.1] * 384


@pytest.fixture
def indexed(engine, db_url, conn, fake_embedder):
    Base.metadata.create_all(engine)
    conn.execute("INSERT INTO articles (id, title, body, views) VALUES (1, 'apples', 'red apples', 0), "
                 "(2, 'pears', 'green pears', 0)")
    drain(db_url, fake_embedder("all-MiniLM-L6-v2"))
    return engine


def test_query_text_is_cleaned_not_rejected(indexed):
    with Session(indexed) as session:
        for text in ("app\x00les", "apples \ud800 lone surrogate", "apples " + "word " * 250_000):
            rows = session.execute(Article.search.keyword(text)).all()
            assert [a.id for a, _ in rows] == [1], text[:30]
            rows = session.execute(Article.search.hybrid(text, vector=VECTOR)).all()
            assert 1 in [a.id for a, _ in rows]


@pytest.mark.parametrize("call, message", [
    (lambda: Article.search.hybrid("x", vector=VECTOR, rrf_k=0), "rrf_k must be an integer from 1"),
    (lambda: Article.search.hybrid("x", vector=VECTOR, rrf_k=2.5), "rrf_k must be an integer from 1"),
    (lambda: Article.search.hybrid("x", vector=VECTOR, rrf_k=1_000_001), "rrf_k must be an integer from 1 to 1000000"),
    (lambda: Article.search.keyword("x", limit=True), "limit must be an integer"),
    (lambda: Article.search.hybrid("x", vector=VECTOR, semantic_weight=-1), "semantic_weight must be"),
    (lambda: Article.search.hybrid("x", vector=VECTOR, semantic_weight=0, keyword_weight=0), "cannot both be 0"),
    (lambda: Article.search.keyword("x", limit=10**9), "limit must be an integer from 1 to 10000"),
    (lambda: Article.search.keyword("x", candidates=10**9), "candidates must be"),
    (lambda: Article.search.semantic(vector=[0.0] * 384), "all zeros"),
    (lambda: Article.search.semantic(vector=[math.nan] * 384), "NaN"),
    (lambda: Article.search.semantic(vector=[1.0] * 3), "384-dimensional"),
    (lambda: Article.search.keyword(None), "give the query text"),
])
def test_bad_search_arguments_raise_invalid_query(call, message):
    with pytest.raises(InvalidQuery, match=message) as info:
        call()
    assert isinstance(info.value, SemsearchError)


def test_sql_functions_check_their_arguments(indexed, conn):
    vector = "[" + ",".join(["0.1"] * 384) + "]"
    zeros = "[" + ",".join(["0"] * 384) + "]"
    for query, message in [
        (f"SELECT * FROM semsearch.hybrid_search('articles_search', 'x', '{vector}', 10, NULL, 0)", "rrf_k must be from 1 to 1000000"),
        (f"SELECT * FROM semsearch.hybrid_search('articles_search', 'x', '{vector}', 10, NULL, 60, -1, 1)", "weights must be"),
        ("SELECT * FROM semsearch.keyword_search('articles_search', 'x', 1000000000)", "match_count must be from 1 to 10000"),
        (f"SELECT * FROM semsearch.hybrid_search('articles_search', 'x', '{vector}', 10, NULL, 60, 'Infinity', 1)",
         "weights must be finite"),
        (f"SELECT * FROM semsearch.semantic_search('articles_search', '{zeros}', 5)", "all zeros"),
    ]:
        with pytest.raises(psycopg.errors.DataException, match=message):
            conn.execute(query)
    long_query = "apples " + "word " * 250_000
    assert conn.execute("SELECT key FROM semsearch.keyword_search('articles_search', %s, 5)", (long_query,)
                        ).fetchall() == [("1",)]


def test_cli_reports_bad_arguments_in_one_line(indexed, db_url):
    out = subprocess.run(CLI + ["search", "articles_search", "apples", "--mode", "keyword", "--limit", "1000000000",
                                "--url", db_url], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "--limit must be a whole number from 1 to 10000" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and "Traceback" not in out.stderr


def test_huge_documents_are_chunked_or_refused_with_bounded_memory(engine, db_url, conn):
    """The real tokenizer keeps a long unknown "word" as one token: it is cut by characters; a text over
    max_text_chars is recorded as a failure without being tokenized."""
    Base.metadata.create_all(engine)
    word = "x" * 300_000
    conn.execute("INSERT INTO articles (id, title, body, views) VALUES (1, 'w', %s, 0), (2, 'big', %s, 0)",
                 (word, "y" * 2_500_000))
    Worker(db_url, poll_interval=0.2, max_text_chars=2_000_000).run(drain=True)
    chunks = store_rows(conn)["1"]
    assert len(chunks) > 50 and max(len(c) for c in chunks) <= 254 * 16
    assert "".join(chunks).replace("\n", "") == "w" + word
    failures = conn.execute("SELECT key, error FROM semsearch.failures").fetchall()
    assert [k for k, _ in failures] == ["2"] and "text too long: 2500005 characters" in failures[0][1]


def test_documents_over_max_chunks_are_recorded_not_embedded(engine, db_url, conn, fake_embedder):
    Base.metadata.create_all(engine)
    conn.execute("INSERT INTO articles (id, title, body, views) VALUES (1, 'short', 'a few words', 0), "
                 "(2, 'long', %s, 0)", (" ".join(f"word{i}" for i in range(5000)),))
    drain(db_url, fake_embedder("all-MiniLM-L6-v2"), max_chunks=10)
    assert list(store_rows(conn)) == ["1"]
    failures = conn.execute("SELECT key, error FROM semsearch.failures").fetchall()
    assert [k for k, _ in failures] == ["2"] and "over the worker's max_chunks (10)" in failures[0][1]
