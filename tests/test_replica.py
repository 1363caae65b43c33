"""Searches on a read replica: a real streaming standby of the test server (pg_basebackup -R). Every
search path is read-only, so the ORM (a read engine beside the primary's), the SQL functions (psql)
and `semsearch search --read-url` answer there in all three modes, as a tenant under row-level
security; rows written on the primary become searchable there once replayed."""
from __future__ import annotations

import os
import subprocess
import sys
import time

import psycopg
import pytest
from sqlalchemy import create_engine
from sqlalchemy.orm import Session

from semsearch import Worker
from semsearch.database import read_url, sqlalchemy_url
from semsearch.query import embed_query

from .psql import psql
from .standby import caught_up, socket_dir, streaming_standby
from .tenants import CLI, two_tenants
from .test_security import docs_model

TEXTS_A = ["The office printer jams on double-sided pages.", "The VPN drops every hour when working from home.",
           "I cannot reset my password: the email never arrives.", "My laptop battery drains in two hours."]


@pytest.fixture(scope="module")
def standby(server_url):
    if os.environ.get("SEMSEARCH_TEST_DATABASE_URL") or socket_dir(server_url) is None:
        pytest.skip("a streaming standby is made from the embedded test server's binaries and data")
    with streaming_standby(server_url) as on_standby:
        yield on_standby


@pytest.fixture
def replicated_tenants(db_url, standby):
    rows_a = "INSERT INTO docs (id, body) VALUES " + ", ".join(f"({i + 1}, '{t}')" for i, t in enumerate(TEXTS_A))
    rows_b = ("INSERT INTO docs (id, body) SELECT i, 'confidential printer plan of tenant B ' || i "
              "FROM generate_series(100, 139) i")
    with two_tenants(db_url, "docs_search", rows_a, rows_b) as urls:
        Worker(urls["worker"], poll_interval=0.2).run(drain=True)
        with psycopg.connect(db_url, autocommit=True) as primary, \
                psycopg.connect(standby(db_url), autocommit=True) as replica:
            caught_up(primary, replica)
            assert replica.execute("SELECT pg_is_in_recovery()").fetchone() == (True,)
        yield urls, {role: standby(url) for role, url in urls.items()}


def search_cli(url: str, query: str, mode: str, env_read_url: str | None = None) -> list[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("SEMSEARCH_READ_URL", "SEMSEARCH_DATABASE_URL")}
    args = ["search", "docs_search", query, "--mode", mode, "--limit", "3"]
    if env_read_url:
        env["SEMSEARCH_READ_URL"] = env_read_url
    else:
        args += ["--read-url", url]
    out = subprocess.run(CLI + args, capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stderr
    return [line.split("key=")[1].split()[0] for line in out.stdout.splitlines()]


def test_orm_sql_and_cli_search_a_standby_as_a_tenant(replicated_tenants, db_url):
    urls, replica = replicated_tenants
    Base, Doc = docs_model()
    read_engine = create_engine(sqlalchemy_url(replica["tenant_a"]))
    write_engine = create_engine(sqlalchemy_url(urls["tenant_a"]))
    try:
        with Session(read_engine) as s:
            for mode in ("semantic", "keyword", "hybrid"):
                rows = s.execute(getattr(Doc.search, mode)("my password reset email never came", limit=3)).all()
                assert rows and rows[0][0].id == 3, (mode, rows)
                assert all(doc.tenant == urls["tenant_a"].split("//")[1].split("@")[0] for doc, _ in rows)
            # Composes with a where() on the standby too.
            rows = s.execute(Doc.search.hybrid("printer", limit=10).where(Doc.id > 1)).all()
            assert rows and all(doc.id in (2, 3, 4) for doc, _ in rows)
            # Nothing of tenant B's, whatever the query.
            assert not s.execute(Doc.search.keyword("confidential plan of tenant B", limit=10)).all()

        # SQL functions through psql, on the standby.
        vector = "[" + ",".join(map(str, embed_query(Doc.search, "laptop battery life"))) + "]"
        out = psql(replica["tenant_a"], "-At", "-c",
                   f"SELECT 's', key FROM semsearch.semantic_search('docs_search', '{vector}', 1) UNION ALL "
                   "SELECT 'k', key FROM semsearch.keyword_search('docs_search', 'battery drains', 1) UNION ALL "
                   f"SELECT 'h', key FROM semsearch.hybrid_search('docs_search', 'battery', '{vector}', 1)")
        assert out.returncode == 0, out.stderr
        assert sorted(out.stdout.split()) == ["h|4", "k|4", "s|4"]

        # The CLI, with --read-url and with SEMSEARCH_READ_URL.
        for mode in ("semantic", "keyword", "hybrid"):
            assert search_cli(replica["tenant_a"], "vpn drops when working from home", mode)[0] == "2"
        assert search_cli(replica["tenant_a"], "printer jams", "hybrid", env_read_url=replica["tenant_a"])[0] == "1"

        # A row written on the primary is searchable on the standby once the worker has embedded it
        # there and the standby has replayed it.
        with Session(write_engine) as s:
            s.add(Doc(id=5, tenant=urls["tenant_a"].split("//")[1].split("@")[0],
                      body="The coffee machine in the kitchen leaks water."))
            s.commit()
        Worker(urls["worker"], poll_interval=0.2).run(drain=True)
        with psycopg.connect(db_url, autocommit=True) as primary, \
                psycopg.connect(replica["owner"], autocommit=True) as standby_conn:
            caught_up(primary, standby_conn)
        with Session(read_engine) as s:
            for mode in ("semantic", "keyword", "hybrid"):
                rows = s.execute(getattr(Doc.search, mode)("coffee machine leaking", limit=1)).all()
                assert rows[0][0].id == 5, mode
    finally:
        read_engine.dispose()
        write_engine.dispose()


def test_a_table_renamed_on_the_primary_is_searched_on_the_standby_without_writing(replicated_tenants, db_url):
    """After a rename that no worker pass has followed yet, a search on the primary would repair the
    index's visibility function; a standby cannot write: a role without row-level security on the store
    still gets its answer, a tenant a clear error until the primary has repaired it."""
    urls, replica = replicated_tenants
    with psycopg.connect(urls["owner"], autocommit=True) as owner:
        owner.execute("ALTER TABLE docs RENAME TO tickets")
    search = "SELECT key FROM semsearch.keyword_search('docs_search', 'printer jams', 3)"
    with psycopg.connect(db_url, autocommit=True) as primary, \
            psycopg.connect(replica["tenant_a"], autocommit=True) as a, \
            psycopg.connect(replica["owner"], autocommit=True) as owner:
        caught_up(primary, a)
        assert owner.execute(search).fetchone() == ("1",)
        with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState, match="changed on the primary") as error:
            a.execute(search)
        assert "worker" in error.value.diag.message_hint
        # The worker's pass on the primary repairs it; once replayed, the tenant's search answers.
        Worker(urls["worker"], poll_interval=0.2).run(drain=True)
        caught_up(primary, a)
        assert a.execute(search).fetchall()[0] == ("1",)
        assert a.execute("SELECT count(*) FROM tickets").fetchone() == (len(TEXTS_A),)


def test_the_workers_last_batch_reaches_the_standby_at_once(replicated_tenants, db_url, server_url):
    """The worker commits asynchronously, except its batch that empties the queue: flushed at once, a
    standby streams it without waiting for the WAL writer (here made to wait 10 s)."""
    urls, replica = replicated_tenants
    with psycopg.connect(server_url, autocommit=True) as su:
        su.execute("ALTER SYSTEM SET wal_writer_delay = '10s'")
        su.execute("SELECT pg_reload_conf()")
        try:
            time.sleep(0.5)
            with psycopg.connect(urls["tenant_a"], autocommit=True) as a:
                a.execute("INSERT INTO docs (id, body) VALUES (6, 'The lift to the third floor is out of order.')")
            with psycopg.connect(db_url, autocommit=True) as primary, \
                    psycopg.connect(replica["owner"], autocommit=True) as standby_conn:
                caught_up(primary, standby_conn)
                Worker(urls["worker"], poll_interval=0.2).run(drain=True)
                deadline = time.monotonic() + 3
                while not standby_conn.execute("SELECT 1 FROM semsearch.store_docs_search WHERE key = '6'").fetchone():
                    assert time.monotonic() < deadline, "the worker's last batch did not reach the standby within 3 s"
                    time.sleep(0.01)
        finally:
            su.execute("ALTER SYSTEM RESET wal_writer_delay")
            su.execute("SELECT pg_reload_conf()")


def test_read_url_falls_back_to_the_database(monkeypatch, db_url):
    monkeypatch.setenv("SEMSEARCH_DATABASE_URL", db_url)
    monkeypatch.delenv("SEMSEARCH_READ_URL", raising=False)
    assert read_url() == db_url
    monkeypatch.setenv("SEMSEARCH_READ_URL", "postgresql+psycopg://replica/app")
    assert read_url() == "postgresql://replica/app"
    # `semsearch search` without --read-url reads SEMSEARCH_READ_URL: a replica that is not there fails
    # with its own address, not the primary's.
    out = subprocess.run([sys.executable, "-m", "semsearch.cli", "search", "docs_search", "x"],
                         capture_output=True, text=True, timeout=60,
                         env={**os.environ, "SEMSEARCH_DATABASE_URL": db_url,
                              "SEMSEARCH_READ_URL": "postgresql://nobody@/app?host=/nonexistent"})
    assert out.returncode != 0 and "/nonexistent" in out.stderr, out.stderr
