"""Install and upgrade the `semsearch` schema: the statements of semsearch.ddl.install_steps().

Every statement is idempotent, so installing is the same as upgrading, and the same statements serve
create_all, Alembic operations (online and `--sql`) and `semsearch install`.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from sqlalchemy import Connection, Engine, create_engine, text

from .database import database_url, pgvector_problem, sqlalchemy_url
from .ddl import install_steps
from .errors import NotInstalled, PgvectorMissing

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine


def install(bind: Connection | Engine | None = None) -> None:
    """Create or upgrade the semsearch schema and refresh every index's triggers.

    Idempotent and safe to run concurrently (serialised by an advisory lock). Takes no lock on an
    application table unless an index's triggers are missing or out of date.
    """
    if bind is None:
        bind = create_engine(sqlalchemy_url(database_url()))
    if isinstance(bind, Engine):
        with bind.begin() as conn:
            install(conn)
        return
    row = bind.execute(text("SELECT default_version FROM pg_available_extensions WHERE name = 'vector'")).first()
    if row is None:
        raise PgvectorMissing(pgvector_problem(bind.execute(text("SHOW server_version_num")).scalar()))
    for step in install_steps():
        bind.execute(step)


def manages_semsearch(connection: Connection) -> bool:
    """May this role install and change semsearch here: it is not installed yet, or the role owns it."""
    return bool(connection.execute(text(
        "SELECT coalesce((SELECT pg_has_role(current_user, n.nspowner, 'MEMBER') FROM pg_namespace n "
        "WHERE n.nspname = 'semsearch'), true)")).scalar())


async def ainstall(bind: AsyncEngine | AsyncConnection) -> None:
    """install() for an AsyncEngine or AsyncConnection."""
    from sqlalchemy.ext.asyncio import AsyncEngine

    if isinstance(bind, AsyncEngine):
        async with bind.begin() as conn:
            await conn.run_sync(install)
    else:
        await bind.run_sync(install)


def installed_version(conn) -> str | None:
    """The newest schema version a database has, or None where semsearch is not installed.

    Takes a psycopg connection (the CLI and the worker use psycopg directly).
    """
    installed, readable = conn.execute(
        """SELECT EXISTS (SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                           WHERE n.nspname = 'semsearch' AND c.relname = 'indexes') AS installed,
                  EXISTS (SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                           WHERE n.nspname = 'semsearch' AND c.relname = 'schema_version'
                             AND has_table_privilege(c.oid, 'SELECT')) AS readable""").fetchone()
    if not installed:
        return None
    if not readable:  # an application role: it may search, not read semsearch's tables
        return "installed"
    return conn.execute("SELECT max(version) FROM semsearch.schema_version").fetchone()[0]


def require_installed(conn) -> str:
    version = installed_version(conn)
    if version is None:
        raise NotInstalled.in_database(conn.info.dbname)
    return version


def grant(conn, app_roles=(), worker_roles=()) -> None:
    """semsearch.grant_app_role / grant_worker_role for each role (psycopg connection; commits)."""
    for role in app_roles:
        conn.execute("SELECT semsearch.grant_app_role(%s)", (role,))
    for role in worker_roles:
        conn.execute("SELECT semsearch.grant_worker_role(%s)", (role,))
    conn.commit()
