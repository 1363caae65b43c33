"""No mistake on the command line passes silently: each is run as a user runs it, `semsearch` as a subprocess."""
import os
import re
import signal
import subprocess
import sys
import time
from urllib.parse import urlsplit

import psycopg
import pytest
from psycopg import sql
from sqlalchemy import create_engine
from sqlalchemy.orm import Session

from semsearch import NotInstalled, install
from semsearch.database import sqlalchemy_url

from .models import Article, Base

CLI = [sys.executable, "-m", "semsearch.cli"]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1"}
UNKNOWN = 'semsearch index "typo" does not exist'


def semsearch(*args, timeout=120, **kwargs):
    return subprocess.run(CLI + list(args), capture_output=True, text=True, timeout=timeout, env=ENV, **kwargs)


@pytest.mark.parametrize("command", [["worker", "--index", "typo"], ["worker", "--drain", "--index", "typo"],
                                     ["retry-failed", "--index", "typo"]])
def test_a_misspelled_index_exits_2_with_the_message_search_gives(engine, db_url, command):
    Base.metadata.create_all(engine)
    search = semsearch("search", "typo", "anything", "--url", db_url)
    out = semsearch(*command, "--url", db_url, timeout=60)
    assert search.returncode == out.returncode == 2, out.stderr
    assert out.stderr.startswith(f"semsearch: error: {UNKNOWN}")
    assert UNKNOWN in search.stderr
    assert "semsearch status" in out.stderr and "Traceback" not in out.stderr


def _insert_articles(engine, n: int) -> None:
    words = "protein folding membrane receptor binding kinetics enzyme signalling pathway cell".split()
    with Session(engine) as session:
        session.add_all(Article(id=i, title=f"study {i}", body=" ".join(words[(i + j) % 10] for j in range(60)))
                        for i in range(1, n + 1))
        session.commit()


@pytest.mark.parametrize("signum, status", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_an_interrupted_drain_exits_non_zero(engine, conn, db_url, signum, status):
    Base.metadata.create_all(engine)
    _insert_articles(engine, 3000)
    worker = subprocess.Popen(CLI + ["worker", "--drain", "--url", db_url], env=ENV, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while conn.execute("SELECT count(*) FROM semsearch.store_articles_search").fetchone()[0] == 0:
            assert worker.poll() is None and time.monotonic() < deadline, worker.stderr.read()
            time.sleep(0.2)
        worker.send_signal(signum)
        _, err = worker.communicate(timeout=60)
    finally:
        worker.kill()
    assert conn.execute("SELECT count(*) FROM semsearch.queue").fetchone()[0] > 0  # interrupted, not drained
    assert worker.returncode == status, err
    assert f"interrupted by {signal.Signals(signum).name}" in err


def test_a_drain_waits_for_a_database_that_is_not_up_yet(server_url, db_url):
    """--wait-for-database counts for --drain too: the database appears 3 s after the worker starts."""
    late = f"late_{os.getpid()}_{int(time.time())}"
    parts = urlsplit(db_url)
    late_url = parts._replace(path=f"/{late}").geturl()
    worker = subprocess.Popen(CLI + ["worker", "--drain", "--wait-for-database", "60", "--url", late_url], env=ENV,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(3)
        assert worker.poll() is None, worker.stderr.read()
        # Installed under another name, then renamed: the worker never sees it half made.
        installer = create_engine(sqlalchemy_url(db_url))
        install(installer)
        installer.dispose()
        with psycopg.connect(server_url, autocommit=True) as admin:
            admin.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(
                sql.Identifier(parts.path.lstrip("/")), sql.Identifier(late)))
        try:
            _, err = worker.communicate(timeout=90)
            assert worker.returncode == 0, err
        finally:
            with psycopg.connect(server_url, autocommit=True) as admin:
                admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(late)))
    finally:
        worker.kill()


def test_reindex_wait_without_a_worker_says_so_and_times_out(engine, db_url):
    Base.metadata.create_all(engine)
    _insert_articles(engine, 5)
    started = time.monotonic()
    out = semsearch("reindex", "articles_search", "--chunk-tokens", "64", "--timeout", "5", "--url", db_url)
    assert out.returncode == 1, out.stderr
    assert time.monotonic() - started < 60
    assert out.stderr.count("no `semsearch worker` is connected") == 1
    assert "nothing happens until one runs" in out.stderr and "timed out after 5s" in out.stderr
    assert re.search(r"(5 rows of|the rows of) articles_search (still )?wait", out.stderr), out.stderr


def test_install_with_a_bad_url_gives_the_hint(tmp_path):
    out = semsearch("install", "--url", f"postgresql://nobody@/nowhere?host={tmp_path}")
    assert out.returncode == 2
    assert "Check that the server is running and the URL is right" in out.stderr
    assert "leave both out" in out.stderr and "Traceback" not in out.stderr
    unreadable = semsearch("install", "--url", "notaurl")
    assert unreadable.returncode == 2 and "Check that the server is running" in unreadable.stderr


def test_an_orm_search_where_semsearch_is_not_installed_says_what_to_run(db_url):
    plain = create_engine(sqlalchemy_url(db_url))
    Article.__table__.create(plain)  # the application's own migration, without semsearch's operations
    with Session(plain) as session:
        for query in (Article.search.keyword("protein"), Article.search.hybrid("protein", vector=[0.1] * 384)):
            with pytest.raises(NotInstalled, match="(?s)not installed in database .*create_all.*semsearch install"):
                session.execute(query).all()
            session.rollback()
    plain.dispose()


COMMANDS = ["install", "grant", "worker", "status", "search", "backfill", "reindex", "retry-failed", "similar", "duplicates",
            "outliers", "clusters", "demo", "server"]


def test_every_option_in_help_has_a_description_and_its_default():
    from semsearch.cli import build_parser

    parsers = {None: build_parser()}
    parsers.update(parsers[None]._subparsers._group_actions[0].choices)
    assert sorted(k for k in parsers if k) == sorted(COMMANDS)
    for name, parser in parsers.items():
        out = semsearch(*([name] if name else []), "--help", timeout=60)
        assert out.returncode == 0, out.stderr
        entries, current = {}, None  # each option's entry in the help: its flags' line and the lines under it
        for line in out.stdout.splitlines():
            if re.match(r"  -", line):
                current = line.split()[0].rstrip(",")
                entries[current] = line
            elif current and line.startswith("    "):
                entries[current] += " " + line.strip()
            else:
                current = None
        for action in parser._actions:
            assert action.help, f"semsearch {name} {action.option_strings or action.dest} has no description"
            if action.option_strings and action.default not in (None, False, "==SUPPRESS=="):
                entry = " ".join(entries[action.option_strings[0]].split())
                assert f"(default: {action.default})" in entry, f"semsearch {name} --help: {entry}"


def test_demo_reports_what_it_did_on_a_second_run(db_url):
    first = semsearch("demo", "--limit", "40", "--url", db_url, timeout=300)
    assert first.returncode == 0, first.stderr
    assert "embedded and keyword-indexed 40 new or changed documents" in first.stdout
    second = semsearch("demo", "--limit", "40", "--url", db_url, timeout=300)
    assert second.returncode == 0, second.stderr
    assert "nothing to embed: every document is unchanged" in second.stdout
    assert "embedded and keyword-indexed" not in second.stdout
    fewer = semsearch("demo", "--limit", "30", "--url", db_url, timeout=300)
    assert "removed 10 documents from the index in" in fewer.stdout and "keyword-indexed" not in fewer.stdout


def test_search_limit_out_of_range_is_a_usage_error(db_url):
    out = semsearch("search", "articles_search", "anything", "--limit", "0", "--url", db_url)
    assert out.returncode == 2 and out.stderr.strip() == "semsearch: error: --limit must be a whole number from 1 to 10000, not 0"
