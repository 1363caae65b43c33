"""Changing an index's model without downtime, the way users do it: the model's declaration changes and
create_all runs (or `semsearch reindex`, or a migration), while `semsearch worker` runs as a process,
the application keeps writing and its users keep searching through the ORM.

The second model is real: the bundled all-MiniLM-L6-v2 with a fixed random projection to 256
dimensions on top, saved as a sentence-transformers folder, so the switch also changes dimensions.
"""
from __future__ import annotations

import logging
import os
import random
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import psycopg
import pytest
from sqlalchemy import Text, create_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from semsearch import SearchIndex
from semsearch.database import sqlalchemy_url
from semsearch.embedders import get_embedder, model_id
from semsearch.query import serving_model

WORDS = ("glacier", "volcano", "reef", "desert", "tundra", "canyon", "delta", "prairie", "fjord", "atoll")


@pytest.fixture(scope="session")
def projected_model(tmp_path_factory):
    """A 256-dimensional model folder: the bundled model and a seeded Dense projection."""
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Dense

    from semsearch.embedders import resolve_model_path

    folder = tmp_path_factory.mktemp("models") / "minilm-256"
    base = SentenceTransformer(resolve_model_path("all-MiniLM-L6-v2"), device="cpu")
    torch.manual_seed(7)
    dense = Dense(in_features=384, out_features=256, bias=False, activation_function=torch.nn.Identity())
    SentenceTransformer(modules=[*base, dense], device="cpu").save(str(folder))
    return str(folder)


def declare(model: str | None = None, dimensions: int | None = None):
    class Base(DeclarativeBase):
        pass

    options = {"model": model, "dimensions": dimensions} if model else {}

    class Place(Base):
        __tablename__ = "places"
        id: Mapped[int] = mapped_column(primary_key=True)
        body: Mapped[str] = mapped_column(Text)
        search = SearchIndex("body", name="places_search", **options)

    return Base, Place


def worker_process(db_url, *args):
    return subprocess.Popen([sys.executable, "-m", "semsearch.cli", "worker", "--poll-interval", "0.5", *args],
                            env={**os.environ, "SEMSEARCH_DATABASE_URL": db_url},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait_for(condition, timeout: float, what: str, worker=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.2)
    if worker is not None:
        worker.send_signal(signal.SIGINT)
        what += ":\n" + worker.communicate(timeout=60)[0][-5000:]
    raise AssertionError(f"timed out waiting for {what}")


def text_of(i: int, version: int = 0) -> str:
    return f"place {i}: a {WORDS[i % len(WORDS)]} seen on trip {version}"


def test_a_live_index_changes_model_while_rows_are_written_and_searched(db_url, conn, projected_model, caplog):
    OldBase, OldPlace = declare()
    engine = create_engine(sqlalchemy_url(db_url))
    OldBase.metadata.create_all(engine)
    texts = {i: text_of(i) for i in range(1, 151)}
    with Session(engine) as s:
        s.add_all(OldPlace(id=i, body=t) for i, t in texts.items())
        s.commit()
    worker = worker_process(db_url)
    try:
        wait_for(lambda: conn.execute("SELECT documents, pending FROM semsearch.status").fetchone() == (150, 0),
                 120, "the first model to embed every row", worker)

        # The application's next release declares the new model; its create_all starts the build.
        NewBase, Place = declare(projected_model, 256)
        stop = threading.Event()
        searches, failures, empty, served = [], [], [], set()

        def write():
            rng = random.Random(1)
            next_id, version = 151, 1
            with psycopg.connect(db_url, autocommit=True) as writer:
                while not stop.is_set():
                    if rng.random() < 0.5:
                        writer.execute("INSERT INTO places (id, body) VALUES (%s, %s)", (next_id, text_of(next_id)))
                        texts[next_id] = text_of(next_id)
                        next_id += 1
                    else:
                        i = rng.choice(list(texts))
                        writer.execute("UPDATE places SET body = %s WHERE id = %s", (text_of(i, version), i))
                        texts[i] = text_of(i, version)
                        version += 1
                    time.sleep(0.02)

        def search():  # a session per request, as a web application has
            while not stop.is_set():
                word = random.choice(WORDS)
                try:
                    for query in (Place.search.hybrid(f"a {word}", limit=5), Place.search.semantic(word, limit=5)):
                        with Session(engine) as s:
                            rows = s.execute(query).all()
                        searches.append(time.monotonic())
                        served.add(serving_model(Place.search)[0])
                        if not rows:
                            empty.append(word)
                except Exception as exc:  # any failure fails the test
                    failures.append(repr(exc))

        threads = [threading.Thread(target=write), threading.Thread(target=search)]
        for t in threads:
            t.start()
        time.sleep(1)
        with caplog.at_level(logging.WARNING, logger="semsearch"):
            NewBase.metadata.create_all(engine)
        assert (f"create_all started building version 2 of search index places_search with model {projected_model} "
                "(256 dimensions), as declared; it serves all-MiniLM-L6-v2 until") in caplog.text
        caplog.clear()
        assert conn.execute("SELECT model, dimensions FROM semsearch.indexes").fetchone() == ("all-MiniLM-L6-v2", 384)
        build = conn.execute("SELECT build FROM semsearch.status").fetchone()[0]
        assert build.startswith(f"v2 ({projected_model}, 256 dims)"), build
        with caplog.at_level(logging.WARNING, logger="semsearch"):
            NewBase.metadata.create_all(engine)  # the same declaration again (another process starting): no new build
        assert conn.execute("SELECT version FROM semsearch.builds").fetchone() == (2,)
        assert "create_all" not in caplog.text

        wait_for(lambda: conn.execute("SELECT version, build FROM semsearch.status").fetchone() == (2, None),
                 240, "the switch to the new model", worker)
        switched_at = time.monotonic()
        time.sleep(7)  # searches go on across the switch (processes notice it within 5 s)
        stop.set()
        for t in threads:
            t.join(30)
        wait_for(lambda: conn.execute("SELECT pending, in_flight FROM semsearch.status").fetchone() == (0, 0),
                 120, "the worker to catch up", worker)
    finally:
        if worker.returncode is None:
            worker.send_signal(signal.SIGINT)
            output = worker.communicate(timeout=60)[0]
    assert worker.returncode == 0, output

    assert not failures, failures[:5]
    assert not empty, f"{len(empty)} empty results"
    assert sum(1 for t in searches if t < switched_at) > 10 and sum(1 for t in searches if t > switched_at) > 10
    assert served == {"all-MiniLM-L6-v2", projected_model}  # each search embedded with the model the index served

    # Every row embedded by the new model exactly once, from its current text; the old store retired.
    embedder = get_embedder(projected_model)
    rows = conn.execute("SELECT key::int, content, embedding::real[], model, count(*) OVER (PARTITION BY key) "
                        "FROM semsearch.store_places_search_v2 ORDER BY key::int").fetchall()
    assert {r[0]: r[1] for r in rows} == texts
    assert all(r[4] == 1 for r in rows) and {r[3] for r in rows} == {model_id(embedder)}
    sample = random.Random(2).sample(rows, 20)
    expected = embedder.encode([r[1] for r in sample])
    stored = np.array([r[2] for r in sample], dtype=np.float32)
    cosines = (expected * stored).sum(1) / np.linalg.norm(expected, axis=1) / np.linalg.norm(stored, axis=1)
    assert cosines.min() > 0.999, cosines.min()
    assert conn.execute("SELECT store_table, model FROM semsearch.retired_stores").fetchall() == [
        ("store_places_search", "all-MiniLM-L6-v2")]
    assert conn.execute("SELECT count(*) FROM semsearch.failures").fetchone() == (0,)

    # A vector of the old model is still served from the retired store until it is dropped.
    old = get_embedder("all-MiniLM-L6-v2").encode(["a glacier"])[0]
    assert conn.execute("SELECT count(*) FROM semsearch.semantic_search('places_search', %s::real[]::vector, 5, NULL, "
                        "'all-MiniLM-L6-v2')", (old.tolist(),)).fetchone() == (5,)
    conn.execute("UPDATE semsearch.retired_stores SET retired_at = now() - interval '2 minutes'")
    # A worker drops it when it finds the store free: a search still holding it makes it wait for a later pass.
    for _ in range(5):
        out = subprocess.run([sys.executable, "-m", "semsearch.cli", "worker", "--drain"], capture_output=True,
                             text=True, timeout=300, env={**os.environ, "SEMSEARCH_DATABASE_URL": db_url})
        assert out.returncode == 0, out.stderr
        if conn.execute("SELECT to_regclass('semsearch.store_places_search')").fetchone() == (None,):
            break
    assert conn.execute("SELECT to_regclass('semsearch.store_places_search')").fetchone() == (None,)
    assert conn.execute("SELECT count(*) FROM semsearch.retired_stores").fetchone() == (0,)
    with pytest.raises(Exception, match="holds vectors of model"):
        conn.execute("SELECT * FROM semsearch.semantic_search('places_search', %s::real[]::vector, 5, NULL, "
                     "'all-MiniLM-L6-v2')", (old.tolist(),))
    engine.dispose()


def cli(db_url, *args, timeout=300):
    return subprocess.run([sys.executable, "-m", "semsearch.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "SEMSEARCH_DATABASE_URL": db_url})


def test_reindex_refuses_wrong_models_and_keeps_serving(db_url, conn, projected_model):
    Base, Place = declare()
    engine = create_engine(sqlalchemy_url(db_url))
    Base.metadata.create_all(engine)
    with Session(engine) as s:
        s.add_all(Place(id=i, body=text_of(i)) for i in range(1, 41))
        s.commit()
    assert cli(db_url, "worker", "--drain").returncode == 0

    def search_works():
        with Session(engine) as s:
            return len(s.execute(Place.search.hybrid("a glacier", limit=3)).all()) == 3

    # Refused when declared: what the model makes is known, or must be given; a bad memory size.
    for args, message in ((["--model", "all-MiniLM-L6-v2", "--dimensions", "768"], "makes 384-dimensional vectors"),
                          (["--model", projected_model], "give --dimensions N"),
                          (["--model", projected_model, "--dimensions", "256", "--maintenance-work-mem", "lots"],
                           "give a size with its unit"),
                          (["--model", projected_model, "--dimensions", "256", "--maintenance-work-mem", "1"],
                           "give a size with its unit"),
                          (["--model", "/nonexistent/model", "--dimensions", "256"], "no such model folder"),
                          (["--storage", "float8"], "invalid choice"),
                          (["--modle", projected_model], "usage: semsearch reindex"),
                          # The index's overlap is the default 32: a chunk of 16 would advance one token at a time.
                          (["--chunk-tokens", "16"], "chunk_overlap (32) must be less than chunk_tokens (16)"),
                          (["--chunk-tokens", "16", "--chunk-overlap", "16"],
                           "chunk_overlap (16) must be less than chunk_tokens (16)")):
        out = cli(db_url, "reindex", "places_search", *args)
        assert out.returncode == 2 and message in out.stderr, (args, out.stderr)
    with pytest.raises(psycopg.errors.RaiseException, match="give the dimensions of model"):
        conn.execute("""SELECT semsearch.alter_index('places_search', '{"model": "my-org/unknown"}')""")
    assert conn.execute("SELECT count(*) FROM semsearch.builds").fetchone() == (0,)

    # A model that cannot be loaded, or that makes other vectors than declared: the build stops and
    # says why; the current version keeps serving and the worker's other work goes on.
    for model, dimensions, message in (("no-such-org/no-such-model", "256",
                                        "cannot load embedding model 'no-such-org/no-such-model'"),
                                       (projected_model, "300", "makes 256-dimensional vectors, not 300")):
        out = cli(db_url, "reindex", "places_search", "--model", model, "--dimensions", dimensions)
        assert out.returncode == 0 and "building version" in out.stdout, out.stderr
        conn.execute("UPDATE places SET body = 'a changed reef' WHERE id = 1")
        out = cli(db_url, "worker", "--drain")
        assert out.returncode == 2 and "places_search: its new version cannot be built" in out.stderr, out.stderr
        assert message in out.stderr, out.stderr
        assert conn.execute("SELECT model, pending, failed FROM semsearch.status").fetchone() == ("all-MiniLM-L6-v2", 0, 0)
        assert conn.execute("SELECT content FROM semsearch.store_places_search WHERE key = '1'").fetchone() == (
            "a changed reef",)
        assert message in cli(db_url, "status").stdout
        assert search_works()

    # The right dimensions: `reindex --wait` follows a running worker's build to the switch.
    worker = worker_process(db_url)
    try:
        out = cli(db_url, "reindex", "places_search", "--model", projected_model, "--dimensions", "256",
                  "--maintenance-work-mem", "128MB", "--wait")
        assert out.returncode == 0 and "now serves version" in out.stdout, out.stderr
        assert f"Declare the same in your code (places_search's SearchIndex(..., model={projected_model!r}, " \
               "dimensions=256))" in out.stdout
    finally:
        worker.send_signal(signal.SIGINT)
        worker.communicate(timeout=60)
    assert conn.execute("SELECT model, dimensions, version, build FROM semsearch.status").fetchone() == (
        projected_model, 256, 4, None)  # (versions 2 and 3 were the stopped builds)
    assert conn.execute("SELECT count(*) FROM semsearch.store_places_search_v4").fetchone() == (40,)
    assert search_works()
    # Asking again for the version being built changes nothing; back to the current model cancels it.
    out = cli(db_url, "reindex", "places_search", "--model", "all-MiniLM-L6-v2")
    assert "building version 5" in out.stdout, out.stdout + out.stderr
    out = cli(db_url, "reindex", "places_search", "--model", "all-MiniLM-L6-v2", "--maintenance-work-mem", "256MB")
    assert "version 5 (all-MiniLM-L6-v2) is already being built" in out.stdout and "256MB" in out.stdout, out.stdout
    out = cli(db_url, "reindex", "places_search", "--model", projected_model, "--dimensions", "256")
    assert "cancelled the build of version 5 (all-MiniLM-L6-v2); index places_search keeps version 4" in out.stdout
    # Back to the first model is another version, built the same way.
    out = cli(db_url, "reindex", "places_search", "--model", "all-MiniLM-L6-v2")
    assert "building version 5" in out.stdout, out.stdout + out.stderr  # (the cancelled one's number again)
    assert cli(db_url, "worker", "--drain").returncode == 0
    assert conn.execute("SELECT model, dimensions, version FROM semsearch.status").fetchone() == (
        "all-MiniLM-L6-v2", 384, 5)
    revision = conn.execute("SELECT model_revision FROM semsearch.indexes").fetchone()[0]
    assert revision and f"all-MiniLM-L6-v2@{revision}" in cli(db_url, "status").stdout
    # Chunking alone changes in place: the same version, every row re-chunked once a worker runs.
    out = cli(db_url, "reindex", "places_search", "--chunk-tokens", "4", "--chunk-overlap", "0")
    assert out.returncode == 0 and "chunking changed in place" in out.stdout, out.stderr
    assert cli(db_url, "worker", "--drain").returncode == 0
    assert conn.execute("SELECT count(DISTINCT key), count(*) > 80, min(i.version), min(i.chunk_tokens) "
                        "FROM semsearch.store_places_search_v5, semsearch.indexes i").fetchone() == (40, True, 5, 4)

    # A new process whose code still declares the 256-dimensional model (an old replica, a rollback):
    # preload(engine) at its start, and its first query embeds with the model the database serves.
    script = (f"from tests.test_versions import declare; import semsearch; from sqlalchemy import create_engine; "
              f"from sqlalchemy.orm import Session; _, Place = declare({projected_model!r}, 256); "
              f"engine = create_engine({str(sqlalchemy_url(db_url))!r}); semsearch.preload(engine); "
              "rows = Session(engine).execute(Place.search.hybrid('a glacier', limit=3)).all(); print(len(rows))")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                         cwd=os.path.dirname(os.path.dirname(__file__)))
    assert out.returncode == 0 and out.stdout.strip() == "3", out.stderr
    engine.dispose()


def test_a_worker_role_granted_during_a_build_writes_the_new_version(db_url, conn, fake_embedder):
    """`semsearch grant --worker` for a role added while a version is being built gives it the new
    store too: the role's worker builds the version and switches to it."""
    from urllib.parse import urlsplit

    from tests.helpers import drain

    assert cli(db_url, "install").returncode == 0
    conn.execute("CREATE TABLE notes (id int PRIMARY KEY, body text)")
    conn.execute("INSERT INTO notes SELECT g, 'note ' || g FROM generate_series(1, 30) g")
    conn.execute("SELECT semsearch.create_index('notes_search', 'notes', ARRAY['body'])")
    drain(db_url, fake_embedder("all-MiniLM-L6-v2"))
    conn.execute("""SELECT semsearch.alter_index('notes_search', '{"model": "fake-b", "dimensions": 256}')""")
    role = f"late_worker_{urlsplit(db_url).path.lstrip('/')}"[:60]
    conn.execute(f"CREATE ROLE {role} LOGIN")
    try:
        out = cli(db_url, "grant", "--worker", role)
        assert out.returncode == 0, out.stderr
        parts = urlsplit(db_url)
        role_url = parts._replace(netloc=f"{role}@{parts.netloc.rsplit('@', 1)[-1]}").geturl()
        factory = {"fake-b": fake_embedder("fake-b", 256), "all-MiniLM-L6-v2": fake_embedder("all-MiniLM-L6-v2")}
        drain(role_url, embedder_factory=factory.__getitem__)
        assert conn.execute("SELECT model, version, build FROM semsearch.status").fetchone() == ("fake-b", 2, None)
        assert conn.execute("SELECT count(*) FROM semsearch.store_notes_search_v2").fetchone() == (30,)
    finally:
        conn.execute(f"DROP OWNED BY {role}")
        conn.execute(f"DROP ROLE {role}")


def test_a_build_is_never_written_by_two_revisions_of_its_model(db_url, conn, fake_embedder):
    """A worker with other files of the build's model (revision r2) refuses the build while the r1 worker
    runs; once that one is gone, it takes the build over, walks again and switches to vectors of r2 only."""
    from semsearch import Worker
    from semsearch.registry import IndexUnusable
    from tests.helpers import drain

    assert cli(db_url, "install").returncode == 0
    conn.execute("CREATE TABLE memos (id int PRIMARY KEY, body text)")
    conn.execute("INSERT INTO memos SELECT g, 'memo ' || g FROM generate_series(1, 40) g")
    conn.execute("SELECT semsearch.create_index('memos_search', 'memos', ARRAY['body'])")
    current = fake_embedder("all-MiniLM-L6-v2")
    drain(db_url, current)
    conn.execute("""SELECT semsearch.alter_index('memos_search', '{"model": "fake-b", "dimensions": 256}')""")
    old, new = fake_embedder("fake-b", 256, delay=0.3), fake_embedder("fake-b", 256)
    old.revision, new.revision = "r1", "r2"

    running = Worker(db_url, poll_interval=0.2, batch_size=4, build_rows=4,
                     embedder_factory=lambda model: old if model == "fake-b" else current)
    thread = threading.Thread(target=running.run)
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while not old.encoded:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        with pytest.raises(IndexUnusable, match="another worker embeds store_memos_search_v2 with model fake-b at "
                                                "revision r1, this one has revision r2"):
            Worker(db_url, poll_interval=0.2, embedder_factory=lambda model: new if model == "fake-b" else current
                   ).run(drain=True)
        assert new.encoded == []
    finally:
        running.stop()
        thread.join()
    assert conn.execute("SELECT version FROM semsearch.status").fetchone() == (1,), "stopped mid-build"

    drain(db_url, embedder_factory=lambda model: new if model == "fake-b" else current)
    assert conn.execute("SELECT model, version, build FROM semsearch.status").fetchone() == ("fake-b", 2, None)
    assert conn.execute("SELECT model, count(*) FROM semsearch.store_memos_search_v2 GROUP BY 1").fetchall() == \
        [("fake-b@r2", 40)]


class HeldEmbedder:
    """A slow worker's model: its encode waits until released, holding the batch's transaction open."""

    def __init__(self, fake):
        self.fake, self.name, self.dimensions = fake, fake.name, fake.dimensions
        self.started, self.release = threading.Event(), threading.Event()

    def chunk(self, texts, chunk_tokens, overlap):
        return self.fake.chunk(texts, chunk_tokens, overlap)

    def encode(self, texts, batch_size=64):
        self.started.set()
        assert self.release.wait(60)
        return self.fake.encode(texts, batch_size)


def test_a_switch_waits_for_the_keys_another_worker_notes(db_url, conn, fake_embedder):
    """Two workers. One builds the new version; the other (slow) embeds rows written while the HNSW index
    is built, so its batch notes their keys for the new version, and commits them only after the index
    is built and the builder, finding no noted key yet, asks to switch. The switch must wait for those
    keys: afterwards every row has one vector of the new model, from its current text."""
    from pgvector.psycopg import register_vector
    from psycopg.rows import namedtuple_row

    from semsearch import Worker
    from semsearch.registry import RegistryChanged, load_indexes
    from tests.helpers import drain

    assert cli(db_url, "install").returncode == 0
    conn.execute("CREATE TABLE notes (id int PRIMARY KEY, body text)")
    conn.execute("INSERT INTO notes SELECT g, 'note ' || g FROM generate_series(1, 20) g")
    conn.execute("SELECT semsearch.create_index('notes_search', 'notes', ARRAY['body'])")
    current, new = fake_embedder("all-MiniLM-L6-v2"), fake_embedder("fake-b", 256)
    drain(db_url, current)
    conn.execute("""SELECT semsearch.alter_index('notes_search', '{"model": "fake-b", "dimensions": 256}')""")
    held = HeldEmbedder(fake_embedder("all-MiniLM-L6-v2"))
    builder = Worker(db_url, embedder_factory=lambda model: new if model == "fake-b" else current)
    slow = Worker(db_url, embedder_factory=lambda model: new if model == "fake-b" else held)

    def phase():
        row = conn.execute("SELECT phase FROM semsearch.builds").fetchone()
        return row and row[0]

    def worker_connection():
        c = psycopg.connect(db_url, row_factory=namedtuple_row)
        register_vector(c)
        return c

    outcomes = []

    def run(name, step):
        try:
            outcomes.append((name, step()))
        except RegistryChanged:
            outcomes.append((name, "switched"))
        except BaseException as exc:  # noqa: BLE001 - reported below
            outcomes.append((name, repr(exc)))

    with worker_connection() as building, worker_connection() as batching:
        ix = load_indexes(building)[0]
        building.commit()
        assert ix.build_model == "fake-b"
        while phase() == "embedding":  # the builder walks the table into the new store
            builder.build_step(building, ix)
        assert phase() == "indexing"
        conn.execute("UPDATE notes SET body = 'rewritten during the build' WHERE id IN (3, 7)")
        conn.execute("INSERT INTO notes VALUES (21, 'added during the build')")
        # The slow worker's batch takes the three keys, seeing the build's HNSW index being built.
        batch = threading.Thread(target=run, args=("batch", lambda: slow.process_batch(batching, ix)), daemon=True)
        batch.start()
        assert held.started.wait(30)
        assert builder.build_step(building, ix) == 1 and phase() == "ready"  # never waits for batches
        # No key noted yet (the batch has not committed): the builder asks to switch.
        builder_pid = building.info.backend_pid
        switch = threading.Thread(target=run, args=("switch", lambda: builder.build_step(building, ix)), daemon=True)
        switch.start()
        deadline = time.monotonic() + 30
        while switch.is_alive() and conn.execute("SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s",
                                                 (builder_pid,)).fetchone() != ("Lock",):
            assert time.monotonic() < deadline, "the switch neither waited nor ended"
            time.sleep(0.05)
        held.release.set()  # the batch writes the current version and notes its keys
        batch.join(60)
        switch.join(60)
        assert not batch.is_alive() and not switch.is_alive()
    assert dict(outcomes)["batch"] == 3, outcomes
    drain(db_url, embedder_factory=lambda model: new if model == "fake-b" else current)

    assert conn.execute("SELECT model, version, build FROM semsearch.status").fetchone() == ("fake-b", 2, None)
    texts = dict(conn.execute("SELECT id::text, body FROM notes").fetchall())
    assert texts["21"] == "added during the build"
    rows = conn.execute("SELECT key, content, embedding::real[], model, count(*) OVER (PARTITION BY key) "
                        "FROM semsearch.store_notes_search_v2 ORDER BY key").fetchall()
    assert {r[0]: r[1] for r in rows} == texts, "a row written during the build is missing or old in the new version"
    assert all(r[4] == 1 for r in rows) and {r[3] for r in rows} == {"fake-b"}
    expected = new.encode([r[1] for r in rows])
    assert np.allclose(np.array([r[2] for r in rows], dtype=np.float32), expected, atol=1e-6)
    assert conn.execute("SELECT count(*) FROM semsearch.build_keys").fetchone() == (0,)
