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
from pgvector.psycopg import register_vector
from psycopg.rows import namedtuple_row

from semsearch import Worker
from semsearch.worker import load_indexes
from semsearch.embedder import content_hash

from .helpers import drain, queue_keys, store_rows
from .models import Base

ROOT = Path(__file__).resolve().parent.parent
MODEL = "all-MiniLM-L6-v2"


def assert_exact(conn, chunk_overlap=32):
    """Every row has embeddings of exactly its current text; nothing else is stored or queued."""
    rows = dict(conn.execute("SELECT id::text, concat_ws(E'\\n\\n', title, body) FROM articles").fetchall())
    stored = dict(conn.execute("SELECT key, content_hash FROM semsearch.store_articles_search WHERE chunk = 0").fetchall())
    failed = {r[0] for r in conn.execute("SELECT key FROM semsearch.failures").fetchall()}
    expected = {k: content_hash(MODEL, None, chunk_overlap, t) for k, t in rows.items() if t.strip()}
    missing = expected.keys() - stored.keys() - failed
    stale = {k for k in expected.keys() & stored.keys() if stored[k] != expected[k]}
    orphans = stored.keys() - rows.keys()
    assert (len(missing), len(stale), len(orphans)) == (0, 0, 0), (missing, stale, orphans)
    assert queue_keys(conn) == []
    return len(stored)


class BlockingEmbedder:
    """Holds its first encode until released, and records any two encodes of one key at once."""

    def __init__(self, fake):
        self.fake, self.name, self.dimensions = fake, fake.name, fake.dimensions
        self.started, self.release = threading.Event(), threading.Event()
        self.active, self.overlaps, self.lock = set(), [], threading.Lock()

    def chunk(self, texts, chunk_tokens, overlap):
        return self.fake.chunk(texts, chunk_tokens, overlap)

    def encode(self, texts, batch_size=64):
        with self.lock:
            self.overlaps += [t for t in texts if t in self.active]
            self.active.update(texts)
        if not self.started.is_set():
            self.started.set()
            assert self.release.wait(30)
        with self.lock:
            self.active.difference_update(texts)
        return self.fake.encode(texts)


def test_update_during_embedding_never_leaves_the_old_text(engine, conn, db_url, fake_embedder):
    Base.metadata.create_all(engine)
    embedder = BlockingEmbedder(fake_embedder(MODEL))
    conn.execute("INSERT INTO articles (id, title, body, views) VALUES (1, 'old', 'text', 0)")
    first = threading.Thread(target=drain, args=(db_url, embedder))
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
    drain(db_url, embedder)
    assert store_rows(conn) == {"1": ["new\n\ntext"]}
    assert embedder.overlaps == []
    assert_exact(conn)


def _start_workers(db_url, n, batch_size=16):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return [subprocess.Popen([sys.executable, "-m", "tests.fake_worker", db_url, str(batch_size)], cwd=ROOT, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for _ in range(n)]


def test_several_worker_processes_share_the_queue(engine, conn, db_url):
    Base.metadata.create_all(engine)
    workers = _start_workers(db_url, 3)
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
        errors = [w.communicate(timeout=30)[1] for w in workers]
    assert all(w.returncode == 0 for w in workers), errors
    assert not any("deadlock" in e for e in errors)
    assert assert_exact(conn) == 2000


def test_chaos_kills_and_a_database_restart_lose_nothing(engine, conn, db_url, restart_server):
    Base.metadata.create_all(engine)
    rng = random.Random(7)
    workers = _start_workers(db_url, 3, batch_size=8)

    app = psycopg.connect(db_url, autocommit=True)
    next_id, restarted, kills = 1, False, 0
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
                app = psycopg.connect(db_url, autocommit=True)  # the database restart
            if step % 150 == 75:
                victim = rng.randrange(len(workers))
                workers[victim].kill()  # SIGKILL mid-batch
                workers[victim].wait()
                workers[victim] = _start_workers(db_url, 1, batch_size=8)[0]
                kills += 1
            if step == 1500 and not restarted:
                restart_server()
                restarted = True
                app = psycopg.connect(db_url, autocommit=True)
        deadline = time.time() + 180
        while time.time() < deadline:
            with psycopg.connect(db_url) as c:
                if c.execute("SELECT count(*) FROM semsearch.queue").fetchone()[0] == 0:
                    break
            time.sleep(0.3)
    finally:
        for w in workers:
            w.send_signal(signal.SIGTERM)
        for w in workers:
            w.communicate(timeout=30)
        app.close()
    assert kills >= 15
    with psycopg.connect(db_url, autocommit=True) as c:
        assert assert_exact(c) > 100


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
