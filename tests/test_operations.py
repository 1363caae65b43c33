"""Install and DDL never stall a live application; clear messages where semsearch is missing; SQL
callers get errors, not arbitrary rows; each new row is queued once."""
import os
import re
import subprocess
import sys
import time

import psycopg
import pytest
from sqlalchemy import text

from semsearch import install

from .models import Base
from .psql import psql

CLI = [sys.executable, "-m", "semsearch.cli"]
FAKE_WORKER = [sys.executable, "-m", "tests.fake_worker"]
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_install_and_create_all_do_not_wait_for_an_open_write_transaction(engine, db_url):
    Base.metadata.create_all(engine)
    with psycopg.connect(db_url) as writer:
        writer.execute("INSERT INTO articles (id, title, body, views) VALUES (1, 'open', 'transaction', 0)")
        # The writer's transaction stays open (RowExclusiveLock on articles) for the whole block.
        started = time.monotonic()
        install(engine)
        Base.metadata.create_all(engine)
        out = subprocess.run(CLI + ["install", "--url", db_url], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        assert time.monotonic() - started < 30  # generous: they must not wait for the writer at all

        # A change that needs the table's lock gives up after the lock timeout, naming the table.
        with engine.connect() as conn:
            conn.execute(text("CREATE TABLE IF NOT EXISTS other (id int PRIMARY KEY)"))
            conn.commit()
            conn.execute(text("SET statement_timeout = '30s'"))  # the test's own bound, should semsearch wait
            started = time.monotonic()
            with pytest.raises(Exception) as info:
                conn.execute(text("SELECT semsearch.create_index('articles_title', 'articles', ARRAY['title'], "
                                  "'all-MiniLM-L6-v2', 384)"))
            waited = time.monotonic() - started
            conn.rollback()
        message = str(info.value)
        assert "could not lock table public.articles" in message and "another transaction" in message, message
        assert 4 <= waited < 20, waited
        writer.commit()


def test_a_trigger_is_recreated_only_when_missing_or_changed(engine, conn):
    Base.metadata.create_all(engine)
    before = conn.execute("SELECT oid, xmin::text FROM pg_trigger WHERE tgname LIKE 'semsearch_%' ORDER BY oid").fetchall()
    function = conn.execute("SELECT xmin::text FROM pg_proc WHERE proname = 'enqueue_articles_search'").fetchone()
    install(engine)
    Base.metadata.create_all(engine)
    assert conn.execute("SELECT oid, xmin::text FROM pg_trigger WHERE tgname LIKE 'semsearch_%' ORDER BY oid"
                        ).fetchall() == before
    assert conn.execute("SELECT xmin::text FROM pg_proc WHERE proname = 'enqueue_articles_search'").fetchone() == function
    conn.execute("DROP TRIGGER semsearch_articles_search_delete ON articles")
    install(engine)
    assert conn.execute("SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'semsearch_%'").fetchone() == (4,)


def test_cli_on_a_database_without_semsearch_says_what_to_run(db_url):
    for command in (["status"], ["worker", "--drain"], ["search", "x", "y"]):
        out = subprocess.run(CLI + command + ["--url", db_url], capture_output=True, text=True, timeout=120)
        assert out.returncode == 2, (command, out.stderr)
        assert "semsearch is not installed" in out.stderr and "semsearch install" in out.stderr, out.stderr
        assert "Traceback" not in out.stderr and "does not exist" not in out.stderr


def test_worker_started_before_the_migrations_waits_for_the_schema(engine, db_url, conn):
    worker = subprocess.Popen(FAKE_WORKER + [db_url], cwd=ROOT, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(3)
        assert worker.poll() is None, worker.stderr.read()
        Base.metadata.create_all(engine)
        conn.execute("INSERT INTO articles (id, title, body, views) VALUES (1, 'late', 'schema', 0)")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if conn.execute("SELECT count(*) FROM semsearch.store_articles_search").fetchone()[0]:
                break
            time.sleep(0.2)
        else:
            pytest.fail("the waiting worker never embedded the row")
    finally:
        worker.terminate()
        _, err = worker.communicate(timeout=30)
    assert err.count("not installed") == 1, err  # logged once, not once per poll


def test_rows_written_right_after_create_all_are_queued_once_and_progress_is_true(engine, db_url, conn):
    Base.metadata.create_all(engine)
    conn.execute("INSERT INTO articles (id, title, body, views) "
                 "SELECT i, 'title ' || i, 'body ' || i, 0 FROM generate_series(1, 150) i")
    assert conn.execute("SELECT count(*), count(DISTINCT k) FROM semsearch.queue, unnest(keys) k").fetchone() == (150, 150)
    assert conn.execute("SELECT backfill_pending FROM semsearch.indexes").fetchone() == (False,)
    out = subprocess.run(CLI + ["worker", "--drain", "--url", db_url], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert out.returncode == 0, out.stderr
    assert re.search(r"processing: 100%.* 150/150 ", out.stderr), out.stderr


def test_sql_callers_get_errors_for_bad_vectors_and_no_notices(engine, db_url):
    Base.metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO articles (id, title, body, views) VALUES (1, 'cats', 'purr', 0)"))
    out = psql(db_url, "-c", "SELECT * FROM semsearch.semantic_search('articles_search', NULL, 3)")
    assert out.returncode != 0 and "query embedding is NULL" in out.stderr, out.stderr
    out = psql(db_url, "-c", "SELECT * FROM semsearch.hybrid_search('articles_search', 'cats', NULL, 3)")
    assert out.returncode != 0 and "query embedding is NULL" in out.stderr, out.stderr
    out = psql(db_url, "-c", "SELECT * FROM semsearch.semantic_search('articles_search', '[1,2,3]', 3)")
    assert out.returncode != 0 and "holds 384 dimensions, the query embedding has 3" in out.stderr, out.stderr
    zeros = "[" + ",".join(["0"] * 384) + "]"
    out = psql(db_url, "-c", f"SELECT * FROM semsearch.semantic_search('articles_search', '{zeros}', 3)")
    assert out.returncode != 0 and "all zeros, which has no cosine distance" in out.stderr, out.stderr
    out = psql(db_url, "-c", f"SELECT * FROM semsearch.semantic_search('articles_search', '{zeros[:-2]}1]', 3)")
    assert out.returncode == 0, out.stderr  # one non-zero value is a direction
    # Keyword searches, even of stop words only, print no NOTICE.
    out = psql(db_url, "-c", "SELECT * FROM semsearch.keyword_search('articles_search', 'cats', 3)",
               "-c", "SELECT * FROM semsearch.keyword_search('articles_search', 'the of and', 3)",
               "-c", "SELECT * FROM semsearch.keyword_search('articles_search', '', 3)")
    assert out.returncode == 0, out.stderr
    assert "NOTICE" not in out.stderr, out.stderr
