"""The OpenAI-compatible HTTP embedder against a real HTTP server (tests/embedding_server.py, the local
model behind /v1/embeddings): rate limits with Retry-After, 5xx, timeouts, a wrong dimension, and an
outage longer than every retry, through the `semsearch worker` command and the ORM."""
from __future__ import annotations

import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import create_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from semsearch import SearchIndex, Worker
from semsearch.database import sqlalchemy_url
from semsearch.embedders import forget_embedder, get_embedder

SERVER = Path(__file__).resolve().parent / "embedding_server.py"
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


PORT = free_port()  # chosen once per run, so the model's spec (in the class below) can name it
SPEC = f"openai:all-MiniLM-L6-v2@http://127.0.0.1:{PORT}/v1?timeout=1&max_retries=2"


class Base(DeclarativeBase):
    pass


class Ticket(Base):
    __tablename__ = "http_tickets"
    id: Mapped[int] = mapped_column(primary_key=True)
    body: Mapped[str]
    search = SearchIndex("body", model=SPEC, dimensions=384)


BODIES = ["The office printer jams on double-sided pages.", "The VPN drops every hour when working from home.",
          "I cannot reset my password: the email never arrives.", "My laptop battery drains in two hours."]


class EmbeddingServer:
    def __init__(self):
        self.process = None

    def start(self, *options: str):
        self.process = subprocess.Popen([sys.executable, str(SERVER), str(PORT), *options], stdout=subprocess.PIPE,
                                        text=True)
        assert self.process.stdout.readline().strip() == "ready"

    def stop(self):
        self.process.kill()
        self.process.wait()

    def post(self, path, body):
        request = urllib.request.Request(f"http://127.0.0.1:{PORT}{path}", data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
        return json.load(urllib.request.urlopen(request))

    def requests(self):
        return json.load(urllib.request.urlopen(f"http://127.0.0.1:{PORT}/requests"))["requests"]


@pytest.fixture
def server():
    s = EmbeddingServer()
    s.start()
    yield s
    if s.process.poll() is None:
        s.stop()


@pytest.fixture
def tickets(db_url):
    forget_embedder(SPEC)  # each test asks the server afresh
    engine = create_engine(sqlalchemy_url(db_url))
    Base.metadata.create_all(engine)
    yield engine
    engine.dispose()


def add_tickets(engine, start: int, count: int) -> None:
    with Session(engine) as s:
        s.add_all(Ticket(id=i, body=f"{BODIES[i % 4]} (ticket {i})") for i in range(start, start + count))
        s.commit()


def counts(conn) -> tuple[int, int, int, int]:
    """(store rows, failures, queued keys, queued attempts in total)"""
    return conn.execute(
        "SELECT (SELECT count(*) FROM semsearch.store_http_tickets_search), (SELECT count(*) FROM semsearch.failures), "
        "(SELECT coalesce(sum(cardinality(keys)), 0) FROM semsearch.queue), "
        "(SELECT coalesce(sum(attempts), 0) FROM semsearch.queue)").fetchone()


def test_worker_command_embeds_through_the_server_despite_429_500_and_timeouts(server, tickets, db_url, conn):
    add_tickets(tickets, 1, 40)
    # One of each fault, in order: a rate limit asking for 2 s, a 500, and an answer slower than the timeout.
    server.post("/faults", [{"status": 429, "retry_after": 2}, {"status": 500}, {"delay": 3}])
    result = subprocess.run([sys.executable, "-m", "semsearch.cli", "worker", "--drain"], capture_output=True,
                            text=True, timeout=300, env={**os.environ, "SEMSEARCH_DATABASE_URL": db_url})
    assert result.returncode == 0, result.stderr
    assert counts(conn) == (40, 0, 0, 0)
    # semsearch status reports the store's size, and per document (40 rows of 384 float4s and their text).
    per_document = conn.execute("SELECT bytes_per_document FROM semsearch.status").fetchone()[0]
    assert 1536 < per_document < 20_000
    status = subprocess.run([sys.executable, "-m", "semsearch.cli", "status"], capture_output=True, text=True,
                            timeout=60, env={**os.environ, "SEMSEARCH_DATABASE_URL": db_url})
    header, row = status.stdout.splitlines()[:2]
    assert header.split()[-2:] == ["store", "store/document"] and row.split()[-2:] == [
        conn.execute(f"SELECT pg_size_pretty({size}) FROM semsearch.status").fetchone()[0].replace(" bytes", "B")
        .replace(" ", "") for size in ("store_bytes", "bytes_per_document")]
    log = server.requests()
    assert [r["status"] for r in log[:3]] == [429, 500, 200] and log[2]["fault"] == {"delay": 3}
    assert log[1]["at"] - log[0]["at"] >= 2  # the client waited as Retry-After said
    assert log[3]["at"] - log[2]["at"] >= 1  # ... and retried the request that timed out
    # The stored vectors are the model's, and queries are embedded by the same server.
    stored = conn.execute("SELECT embedding::text FROM semsearch.store_http_tickets_search WHERE key = '3'").fetchone()[0]
    local = get_embedder("all-MiniLM-L6-v2").encode([f"{BODIES[3]} (ticket 3)"])[0]
    assert np.dot(np.array(json.loads(stored)), local) > 0.999
    with Session(tickets) as s:
        rows = s.execute(Ticket.search.semantic("my password reset email never came", limit=5)).all()
        assert all(t.id % 4 == 2 for t, _ in rows)
        hybrid = s.execute(Ticket.search.hybrid("printer jams", limit=3)).all()
        assert all(t.id % 4 == 0 for t, _ in hybrid)


def most_in_flight(log: list[dict], latency: float) -> int:
    """The most requests the server had open at once (each one takes `latency` seconds)."""
    starts = sorted(r["at"] for r in log)
    return max(sum(1 for t in starts if s <= t < s + latency * 0.9) for s in starts)


def test_concurrency_keeps_several_batches_in_flight_and_stays_exact(tickets, db_url, conn):
    """A remote embedding service 200 ms away: --concurrency 4 has four requests open at once (one
    lane only one), and every row is stored once, from its current text."""
    slow = EmbeddingServer()
    slow.start("--latency", "0.2", "--cache")
    try:
        add_tickets(tickets, 1, 96)
        env = {**os.environ, "SEMSEARCH_DATABASE_URL": db_url}
        worker = subprocess.Popen([sys.executable, "-m", "semsearch.cli", "worker", "--concurrency", "4",
                                   "--batch-size", "4"], env=env, stderr=subprocess.PIPE, text=True)
        try:
            wait_for(lambda: counts(conn)[0] >= 40)
            # Rows rewritten while batches are in flight are embedded again, from their new text.
            with Session(tickets) as s:
                for t in s.query(Ticket).filter(Ticket.id <= 40):
                    t.body = f"{BODIES[t.id % 4]} (ticket {t.id}, edited)"
                s.commit()
            wait_for(lambda: counts(conn)[2] == 0)
        finally:
            worker.send_signal(signal.SIGTERM)
            _, stderr = worker.communicate(timeout=60)
        assert worker.returncode == 0, stderr
        assert counts(conn) == (96, 0, 0, 0)
        stale = conn.execute(
            "SELECT count(*) FROM http_tickets t JOIN semsearch.store_http_tickets_search s ON s.key = t.id::text "
            "WHERE s.content <> t.body").fetchone()[0]
        assert stale == 0
        assert most_in_flight([r for r in slow.requests() if r["status"] == 200], 0.2) >= 3
        # One lane: one request at a time.
        slow.post("/faults", [])
        before = len(slow.requests())
        with Session(tickets) as s:
            for t in s.query(Ticket).filter(Ticket.id <= 16):
                t.body = f"{BODIES[t.id % 4]} (ticket {t.id}, edited twice)"
            s.commit()
        single = subprocess.run([sys.executable, "-m", "semsearch.cli", "worker", "--drain", "--batch-size", "4"],
                                env=env, capture_output=True, text=True, timeout=300)
        assert single.returncode == 0, single.stderr
        assert most_in_flight(slow.requests()[before:], 0.2) == 1
    finally:
        slow.stop()


def run_worker_for(db_url, seconds: float) -> Worker:
    worker = Worker(db_url, poll_interval=0.2, retry_base_seconds=0.1)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    time.sleep(seconds)
    worker.stop()
    thread.join(30)
    return worker


def problem(conn) -> str | None:
    return conn.execute("SELECT problem FROM semsearch.indexes WHERE name = 'http_tickets_search'").fetchone()[0]


def outage_waits(conn) -> int:
    """The seconds of the worker's current back-off, as status says it ("trying again in 4s"); 0 when none."""
    found = re.search(r"embedding service unavailable, trying again in (\d+)s", problem(conn) or "")
    return int(found.group(1)) if found else 0


def wait_for(condition, timeout=60):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


def test_an_outage_longer_than_every_retry_loses_nothing(server, tickets, db_url, conn):
    """One worker runs throughout: the server stops while rows keep coming, for longer than the client's
    retries take, then comes back."""
    worker = Worker(db_url, poll_interval=0.2, retry_base_seconds=0.1)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        add_tickets(tickets, 1, 10)
        wait_for(lambda: counts(conn) == (10, 0, 0, 0))
        server.stop()
        add_tickets(tickets, 11, 30)
        # Wait until the worker's own back-off has fired twice (its third try failed: "trying again in
        # 4s" after 1 s and 2 s), or until an attempt is spent or a row fails, which must not happen.
        deadline = time.monotonic() + 60
        while not (outage_waits(conn) >= 4 or counts(conn)[1] or counts(conn)[3]):
            assert time.monotonic() < deadline, f"no back-off after 60 s: {counts(conn)}, problem {problem(conn)!r}"
            time.sleep(0.1)
        assert counts(conn) == (10, 0, 30, 0)  # nothing more embedded, nothing failed, no attempt spent
        assert "embedding service unavailable" in problem(conn)
        with Session(tickets) as s:  # keywords never wait for the model
            assert len(s.execute(Ticket.search.keyword("printer", limit=50)).all()) == 10
        server.start()
        wait_for(lambda: counts(conn) == (40, 0, 0, 0))
        wait_for(lambda: problem(conn) is None)
    finally:
        worker.stop()
        thread.join(30)


def test_a_server_answering_with_another_dimension_stores_nothing(server, tickets, db_url, conn):
    add_tickets(tickets, 1, 8)
    server.post("/faults", [{"dimensions": 768}] * 50)
    run_worker_for(db_url, 4)
    assert counts(conn)[:3] == (0, 0, 8)
    assert "768-dimensional" in problem(conn) and "384" in problem(conn)
    # The server comes right: the rows are embedded, still with no failure.
    server.stop()
    server.start()
    Worker(db_url, poll_interval=0.2).run(drain=True)
    assert counts(conn) == (8, 0, 0, 0)
    # Later it changes model under the same name: a changed row keeps its vectors until it answers right.
    server.post("/faults", [{"dimensions": 768}] * 50)
    with Session(tickets) as s:
        s.get(Ticket, 1).body = "The scanner is broken too."
        s.commit()
    run_worker_for(db_url, 4)
    assert counts(conn)[1:3] == (0, 1)
    assert "768-dimensional vectors, not 384" in problem(conn)
    assert conn.execute("SELECT count(*) FROM semsearch.store_http_tickets_search WHERE vector_dims(embedding) <> 384"
                        ).fetchone() == (0,)


def test_a_spec_with_a_typo_is_refused_when_declared():
    with pytest.raises(ValueError, match="unknown option timout; the base URL's query takes timeout, max_retries, "
                                         "query_prefix, document_prefix"):
        SearchIndex("body", model=f"openai:m@http://127.0.0.1:{PORT}/v1?timout=5", dimensions=384)
    with pytest.raises(ValueError, match="no embedder is called 'opnai:'; write openai:<model>"):
        SearchIndex("body", model=f"opnai:m@http://127.0.0.1:{PORT}/v1", dimensions=384)
    with pytest.raises(ValueError, match=r"chunk_overlap \(32\) must be less than chunk_tokens \(16\)"):
        SearchIndex("body", model=SPEC, dimensions=384, chunk_tokens=16)


def test_a_restart_needs_no_embedding_server_for_an_index_it_has(server, db_url, conn, caplog):
    """Without dimensions=, create_all asks the server only for an index it does not have yet; at
    start-up, preload during an outage logs a warning instead of keeping the application down."""
    spec = f"openai:all-MiniLM-L6-v2@http://127.0.0.1:{PORT}/v1?timeout=1&max_retries=0"

    def declare():
        class Base(DeclarativeBase):
            pass

        class Memo(Base):
            __tablename__ = "http_restart_memos"
            id: Mapped[int] = mapped_column(primary_key=True)
            body: Mapped[str]
            search = SearchIndex("body", model=spec)

        return Base, Memo

    Base, _ = declare()
    engine = create_engine(sqlalchemy_url(db_url))
    forget_embedder(spec)
    Base.metadata.create_all(engine)
    assert conn.execute("SELECT dimensions FROM semsearch.indexes").fetchone() == (384,)
    assert len(server.requests()) == 1  # one short input for the dimensions
    server.stop()
    forget_embedder(spec)  # a new process, while the server is down
    Base, _ = declare()
    Base.metadata.create_all(engine)  # would raise EmbedderUnavailable if it asked
    from semsearch import preload

    with caplog.at_level(logging.WARNING, logger="semsearch"):
        preload(engine)
    assert "preload:" in caplog.text and "keyword search needs no model" in caplog.text
    engine.dispose()


def test_a_misspelled_embedder_written_in_sql_is_the_index_problem(db_url, conn):
    """SQL users skip the declaration's check: the worker names the typo instead of looking for a model folder."""
    env = {**os.environ, "SEMSEARCH_DATABASE_URL": db_url}
    assert subprocess.run([sys.executable, "-m", "semsearch.cli", "install"], env=env, timeout=120).returncode == 0
    conn.execute("CREATE TABLE http_typos (id int PRIMARY KEY, body text)")
    conn.execute("INSERT INTO http_typos VALUES (1, 'a row')")
    conn.execute("SELECT semsearch.create_index('http_typos_search', 'http_typos', ARRAY['body'], "
                 "model => %s, dimensions => 384)", (f"opnai:m@http://127.0.0.1:{PORT}/v1",))
    result = subprocess.run([sys.executable, "-m", "semsearch.cli", "worker", "--drain"], capture_output=True,
                            text=True, timeout=120, env=env)
    assert result.returncode == 2, result.stderr
    assert "http_typos_search" in result.stderr and "no embedder is called 'opnai:'" in result.stderr


def test_a_process_sets_its_own_timeout_without_changing_the_index(server, tickets, db_url, conn):
    """SEMSEARCH_EMBEDDINGS_TIMEOUT / _MAX_RETRIES give one process (a web app's queries) short client
    settings while the index's spec, and so its vectors, stay as they are."""
    add_tickets(tickets, 1, 4)
    env = {**os.environ, "SEMSEARCH_DATABASE_URL": db_url}
    drained = subprocess.run([sys.executable, "-m", "semsearch.cli", "worker", "--drain"], capture_output=True,
                             text=True, timeout=120, env=env)
    assert drained.returncode == 0, drained.stderr
    # The spec allows 1 s per request and 2 retries: a 1.5 s answer is a timeout, then a success.
    server.post("/faults", [{"delay": 1.5}])
    patient = subprocess.run([sys.executable, "-m", "semsearch.cli", "search", "http_tickets_search", "printer",
                              "--mode", "semantic"], capture_output=True, text=True, timeout=120,
                             env={**env, "SEMSEARCH_EMBEDDINGS_TIMEOUT": "5", "SEMSEARCH_EMBEDDINGS_MAX_RETRIES": "0"})
    assert patient.returncode == 0 and "printer" in patient.stdout, patient.stderr
    server.post("/faults", [{"delay": 1.5}])
    impatient = subprocess.run([sys.executable, "-m", "semsearch.cli", "search", "http_tickets_search", "printer",
                                "--mode", "semantic"], capture_output=True, text=True, timeout=120,
                               env={**env, "SEMSEARCH_EMBEDDINGS_TIMEOUT": "0.5",
                                    "SEMSEARCH_EMBEDDINGS_MAX_RETRIES": "0"})
    assert impatient.returncode != 0 and "gave no answer within 0.5 s, 1 time(s)" in impatient.stderr, impatient.stderr
    assert [r["fault"] for r in server.requests()[-2:]] == [{"delay": 1.5}, {"delay": 1.5}]  # one request each
    assert conn.execute("SELECT model, version FROM semsearch.indexes WHERE name = 'http_tickets_search'"
                        ).fetchone() == (SPEC, 1)
    bad = subprocess.run([sys.executable, "-m", "semsearch.cli", "search", "http_tickets_search", "printer",
                          "--mode", "semantic"], capture_output=True, text=True, timeout=120,
                         env={**env, "SEMSEARCH_EMBEDDINGS_TIMEOUT": "soon"})
    assert bad.returncode != 0 and "SEMSEARCH_EMBEDDINGS_TIMEOUT='soon': give the seconds per request" in bad.stderr


def test_a_wrong_base_url_is_the_index_problem_not_an_outage(server, db_url, conn):
    """A 404 on the embeddings path is a mistake in the spec: `semsearch worker --drain` exits 2 and names
    the index and what to check, instead of waiting for a service that will never answer."""

    class WrongBase(DeclarativeBase):
        pass

    class Memo(WrongBase):
        __tablename__ = "http_memos"
        id: Mapped[int] = mapped_column(primary_key=True)
        body: Mapped[str]
        search = SearchIndex("body", model=f"openai:all-MiniLM-L6-v2@http://127.0.0.1:{PORT}/v2?max_retries=0",
                             dimensions=384)

    engine = create_engine(sqlalchemy_url(db_url))
    WrongBase.metadata.create_all(engine)
    with Session(engine) as s:
        s.add_all(Memo(id=i, body=f"memo {i}") for i in range(1, 4))
        s.commit()
    result = subprocess.run([sys.executable, "-m", "semsearch.cli", "worker", "--drain"], capture_output=True,
                            text=True, timeout=120, env={**os.environ, "SEMSEARCH_DATABASE_URL": db_url})
    assert result.returncode == 2, result.stderr
    assert "http_memos_search" in result.stderr and "/v2/embeddings answered 404" in result.stderr
    assert "check the base URL" in result.stderr
    assert counts_of(conn, "http_memos_search") == (0, 0, 3)
    engine.dispose()


def counts_of(conn, index):
    return conn.execute(
        f"SELECT (SELECT count(*) FROM semsearch.store_{index}), (SELECT count(*) FROM semsearch.failures), "
        "(SELECT coalesce(sum(cardinality(keys)), 0) FROM semsearch.queue)").fetchone()


def test_prefixes_for_queries_and_documents_reach_the_server(server, db_url, conn):
    """A model that wants "query: " / "passage: " before its inputs gets them from the spec: the worker
    sends documents with one, the ORM's queries with the other."""

    class Prefixed(DeclarativeBase):
        pass

    class Memo(Prefixed):
        __tablename__ = "prefixed_memos"
        id: Mapped[int] = mapped_column(primary_key=True)
        body: Mapped[str]
        search = SearchIndex("body", model=f"openai:all-MiniLM-L6-v2@http://127.0.0.1:{PORT}/v1?query_prefix=query:%20"
                                           "&document_prefix=passage:%20", dimensions=384)

    engine = create_engine(sqlalchemy_url(db_url))
    Prefixed.metadata.create_all(engine)
    with Session(engine) as s:
        s.add_all(Memo(id=i, body=f"memo {i} about {BODIES[i % 4]}") for i in range(1, 4))
        s.commit()
    result = subprocess.run([sys.executable, "-m", "semsearch.cli", "worker", "--drain"], capture_output=True,
                            text=True, timeout=120, env={**os.environ, "SEMSEARCH_DATABASE_URL": db_url})
    assert result.returncode == 0, result.stderr
    documents = [i for r in server.requests() for i in r["inputs"] if "memo" in i]
    assert sorted(documents) == sorted(f"passage: memo {i} about {BODIES[i % 4]}" for i in range(1, 4))
    with Session(engine) as s:
        found = s.execute(Memo.search.hybrid("printer jam", limit=3)).all()
    assert sorted((m.id, m.body) for m, _ in found) == [(i, f"memo {i} about {BODIES[i % 4]}") for i in range(1, 4)]
    assert [score for _, score in found] == sorted((score for _, score in found), reverse=True)
    assert [i for r in server.requests() for i in r["inputs"] if "printer jam" in i] == ["query: printer jam"]
    # The store keeps the text as written, without the prefix.
    assert conn.execute("SELECT content FROM semsearch.store_prefixed_memos_search ORDER BY key").fetchall()[0] == (
        f"memo 1 about {BODIES[1]}",)
    engine.dispose()
