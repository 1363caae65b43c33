"""The worker never loses or serves a stale embedding: races, several workers, crashes, bad input."""
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psycopg
import pytest
from pgvector.psycopg import register_vector
from psycopg.rows import namedtuple_row

from semsearch import Worker
from semsearch.registry import load_indexes
from semsearch.worker import WORKER_APPLICATION
from semsearch.embedders import content_hash
from semsearch.options import KNOWN_CHUNK_TOKENS

from .helpers import drain, queue_keys, store_rows
from .models import Base

ROOT = Path(__file__).resolve().parent.parent
MODEL = "all-MiniLM-L6-v2"


def assert_exact(conn, chunk_overlap=32):
    """Every row has embeddings of exactly its current text; nothing else is stored or queued."""
    rows = dict(conn.execute("SELECT id::text, concat_ws(E'\\n\\n', title, body) FROM articles").fetchall())
    stored = dict(conn.execute("SELECT key, content_hash FROM semsearch.store_articles_search WHERE chunk = 0").fetchall())
    failed = {r[0] for r in conn.execute("SELECT key FROM semsearch.failures").fetchall()}
    expected = {k: content_hash(MODEL, KNOWN_CHUNK_TOKENS[MODEL], chunk_overlap, t) for k, t in rows.items() if t.strip()}
    missing = expected.keys() - stored.keys() - failed
    stale = {k for k in expected.keys() & stored.keys() if stored[k] != expected[k]}
    orphans = stored.keys() - rows.keys()
    assert (len(missing), len(stale), len(orphans)) == (0, 0, 0), (missing, stale, orphans)
    # Keywords too: every row's keyword data is from its current text, and the statistics add up.
    missing, stale, orphans = conn.execute(
        "WITH r AS (SELECT id::text AS key, semsearch.keyword_hash('english', ARRAY[1, 1]::float8[], ARRAY[title, body]) AS h "
        "             FROM articles WHERE to_tsvector('english', concat_ws(' ', title, body)) <> ''), "
        "     d AS (SELECT key, content_hash AS h FROM semsearch.store_articles_search_docs) "
        "SELECT count(*) FILTER (WHERE d.key IS NULL), count(*) FILTER (WHERE r.h <> d.h), "
        "       count(*) FILTER (WHERE r.key IS NULL) FROM r FULL JOIN d USING (key)").fetchone()
    assert (missing, stale, orphans) == (0, 0, 0), "keywords"
    assert conn.execute(
        "SELECT (SELECT coalesce(sum(docs), 0) FROM semsearch.store_articles_search_stats) = "
        "       (SELECT count(*) FROM semsearch.store_articles_search_docs) AND NOT EXISTS ("
        "SELECT FROM (SELECT term, sum(df) AS df FROM semsearch.store_articles_search_terms GROUP BY term) t "
        "FULL JOIN (SELECT term, count(*) AS df FROM semsearch.store_articles_search_postings GROUP BY term) p "
        "USING (term) WHERE coalesce(t.df, 0) <> coalesce(p.df, 0))").fetchone() == (True,), "keyword statistics"
    assert queue_keys(conn) == []
    return len(stored)


class BlockingEmbedder:
    """Holds its first encode until released, and records how many encodes ever ran at once."""

    def __init__(self, fake):
        self.fake, self.name, self.dimensions = fake, fake.name, fake.dimensions
        self.started, self.release = threading.Event(), threading.Event()
        self.running, self.most_at_once, self.lock = 0, 0, threading.Lock()

    def chunk(self, texts, chunk_tokens, overlap):
        return self.fake.chunk(texts, chunk_tokens, overlap)

    def encode(self, texts, batch_size=64):
        with self.lock:
            self.running += 1
            self.most_at_once = max(self.most_at_once, self.running)
        try:
            if not self.started.is_set():
                self.started.set()
                assert self.release.wait(30)
            return self.fake.encode(texts)
        finally:
            with self.lock:
                self.running -= 1


@pytest.mark.parametrize("concurrency", [1, 4])
def test_update_during_embedding_never_leaves_the_old_text(engine, conn, db_url, fake_embedder, concurrency):
    """The re-queued key waits for the batch that holds it, whether another worker or another of the
    same worker's lanes (--concurrency) finds it."""
    Base.metadata.create_all(engine)
    embedder = BlockingEmbedder(fake_embedder(MODEL))
    conn.execute("INSERT INTO articles (id, title, body, views) VALUES (1, 'old', 'text', 0)")
    errors = []

    def first_worker():
        try:
            drain(db_url, embedder, concurrency=concurrency)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    first = threading.Thread(target=first_worker, daemon=True)  # a failure must not hang pytest
    first.start()
    assert embedder.started.wait(30)  # the worker is embedding 'old'
    conn.execute("UPDATE articles SET title = 'new' WHERE id = 1")
    # A second worker finds the key locked and leaves it queued.
    second = Worker(db_url, embedder_factory=lambda m: embedder)
    with psycopg.connect(db_url, row_factory=namedtuple_row) as c2:
        register_vector(c2)
        ix = load_indexes(c2)[0]
        c2.commit()
        assert second.process_batch(c2, ix) == 0
    embedder.release.set()
    first.join(30)
    assert not first.is_alive() and errors == []
    # The first worker took the re-queued key after its batch: no other drain ran.
    assert store_rows(conn) == {"1": ["new\n\ntext"]}
    assert embedder.most_at_once == 1  # the second worker never encoded while the key was held
    assert_exact(conn)


def _start_workers(db_url, n, batch_size=16, report=False, delay=0.0, concurrency=1):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "FAKE_ENCODE_DELAY": str(delay), "FAKE_CONCURRENCY": str(concurrency)}
    extra = ["--report"] if report else []
    return [subprocess.Popen([sys.executable, "-m", "tests.fake_worker", db_url, str(batch_size), *extra], cwd=ROOT,
                             env=env, stdout=subprocess.PIPE if report else subprocess.DEVNULL, stderr=subprocess.PIPE,
                             text=True) for _ in range(n)]


def test_several_worker_processes_share_the_queue(engine, conn, db_url):
    Base.metadata.create_all(engine)
    workers = _start_workers(db_url, 3, report=True)
    try:
        for i in range(20):
            conn.execute("INSERT INTO articles (id, title, body, views) SELECT g, 'title ' || g, %s, 0 "
                         "FROM generate_series(%s::int, %s::int) g", (f"round {i}", i * 100 + 1, i * 100 + 100))
            conn.execute("UPDATE articles SET body = body || ' edited' WHERE id %% 7 = %s::int", (i % 7,))
        deadline = time.time() + 120
        while queue_keys(conn) and time.time() < deadline:
            time.sleep(0.2)
    finally:
        for w in workers:
            w.send_signal(signal.SIGTERM)
        outputs = [w.communicate(timeout=30) for w in workers]
    errors = [err for _, err in outputs]
    assert all(w.returncode == 0 for w in workers), errors
    assert not any("deadlock" in e for e in errors)
    assert assert_exact(conn) == 2000
    encoded = [out.splitlines() for out, _ in outputs]
    assert all(len(texts) > 100 for texts in encoded), [len(t) for t in encoded]  # the work was shared
    every = [t for texts in encoded for t in texts]
    assert len(every) == len(set(every))  # no text was embedded twice


def _holding_batch(conn, worker) -> bool:
    """Does this worker process hold claimed keys right now (its per-key advisory locks)?"""
    return conn.execute(
        "SELECT EXISTS (SELECT 1 FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
        "WHERE l.locktype = 'advisory' AND l.objsubid = 2 AND a.application_name = %s)",
        (f"{WORKER_APPLICATION} pid {worker.pid}",)).fetchone()[0]


@pytest.mark.parametrize("concurrency", [1, 4])
def test_chaos_kills_and_a_database_restart_lose_nothing(engine, conn, db_url, restart_server, concurrency):
    """Three worker processes (each with `concurrency` batches in flight) killed mid-batch, a clean
    restart and a crash of the server: every row ends embedded from its current text."""
    Base.metadata.create_all(engine)
    rng = random.Random(7)
    workers = _start_workers(db_url, 3, batch_size=8, delay=0.02, concurrency=concurrency)

    app = psycopg.connect(db_url, autocommit=True)
    watch = psycopg.connect(db_url, autocommit=True)
    next_id, kills, kills_holding, restarts = 1, 0, 0, []
    try:
        for step in range(3000):
            op = rng.random()
            try:
                if op < 0.45 or next_id < 50:
                    app.execute("INSERT INTO articles (id, title, body, views) VALUES (%s, %s, %s, 0)",
                                (next_id, f"title {next_id}", f"body {rng.random()}"))
                    next_id += 1
                elif op < 0.8:
                    app.execute("UPDATE articles SET body = %s WHERE id = %s", (f"body {rng.random()}", rng.randrange(1, next_id)))
                elif op < 0.9:
                    app.execute("UPDATE articles SET views = views + 1 WHERE id = %s", (rng.randrange(1, next_id),))
                else:
                    app.execute("DELETE FROM articles WHERE id = %s", (rng.randrange(1, next_id),))
            except psycopg.OperationalError:
                app = psycopg.connect(db_url, autocommit=True)  # after a restart
            if step % 120 == 60:
                # Kill a worker in the middle of a batch: wait until one holds claimed keys.
                deadline, victim = time.time() + 3, None
                while victim is None and time.time() < deadline:
                    try:
                        victim = next((i for i, w in enumerate(workers) if _holding_batch(watch, w)), None)
                    except psycopg.OperationalError:
                        watch = psycopg.connect(db_url, autocommit=True)
                    if victim is None:
                        time.sleep(0.005)
                if victim is None:
                    victim = rng.randrange(len(workers))
                else:
                    kills_holding += 1
                workers[victim].kill()  # SIGKILL mid-batch
                workers[victim].wait()
                workers[victim] = _start_workers(db_url, 1, batch_size=8, delay=0.02, concurrency=concurrency)[0]
                kills += 1
            if step in (1000, 2000):
                mode = "fast" if step == 1000 else "immediate"  # a clean restart, then a crash
                restart_server(mode)
                restarts.append(mode)
                app = psycopg.connect(db_url, autocommit=True)
                watch = psycopg.connect(db_url, autocommit=True)
        deadline = time.time() + 180
        while time.time() < deadline:
            with psycopg.connect(db_url) as c:
                if c.execute("SELECT count(*) FROM semsearch.queue").fetchone()[0] == 0:
                    break
            time.sleep(0.3)
    finally:
        for w in workers:
            w.send_signal(signal.SIGTERM)
        outputs = [w.communicate(timeout=30) for w in workers]
        app.close()
        watch.close()
    assert [w.returncode for w in workers] == [0, 0, 0], "\n---\n".join("\n".join(err.splitlines()[-12:]) for _, err in outputs)
    assert kills >= 20 and kills_holding >= 10, (kills, kills_holding)
    assert restarts == ["fast", "immediate"]
    with psycopg.connect(db_url, autocommit=True) as c:
        assert assert_exact(c) > 100
        assert c.execute("SELECT count(*) FROM semsearch.failures").fetchone() == (0,)
        # Stored text is the current text (every row here fits one chunk).
        mismatched = c.execute(
            "SELECT count(*) FROM articles a JOIN semsearch.store_articles_search s ON s.key = a.id::text "
            "WHERE s.content <> concat_ws(E'\\n\\n', a.title, a.body)").fetchone()[0]
        assert mismatched == 0


BAD_INPUTS = {
    1: (None, None),
    2: ("", ""),
    3: ("   ", "\t\n "),
    4: ("emoji 😀🎉 and CJK 中文字符 and RTL עברית العربية", "mixed"),
    5: ("control \x01\x02\x1b[31m chars", "bell \x07"),
    6: ("'); DROP TABLE articles; --", "SELECT * FROM pg_shadow WHERE '1'='1'"),
    7: ("10 MB", "lorem ipsum dolor " * 600_000),
    8: ("normal", "a perfectly ordinary row"),
}


def test_bad_input_is_embedded_or_recorded_with_a_reason(engine, conn, db_url):
    conn.execute("CREATE TABLE articles (id int PRIMARY KEY, title text, body text, views int NOT NULL DEFAULT 0)")
    Base.metadata.create_all(engine)
    for key, (title, body) in BAD_INPUTS.items():
        conn.execute("INSERT INTO articles (id, title, body) VALUES (%s, %s, %s)", (key, title, body))
    drain(db_url, max_chunks=200)  # the real model
    stored = store_rows(conn)
    failures = dict(conn.execute("SELECT key, error FROM semsearch.failures").fetchall())
    assert set(stored) == {"4", "5", "6", "8"}
    assert stored["6"] == ["'); DROP TABLE articles; --\n\nSELECT * FROM pg_shadow WHERE '1'='1'"]
    for key in ("1", "2", "3"):
        assert failures[key].startswith("nothing to embed")
    assert "text too long" in failures["7"] and ("max_chunks" in failures["7"] or "max_text_chars" in failures["7"])
    assert conn.execute("SELECT count(*) FROM articles").fetchone() == (8,)
