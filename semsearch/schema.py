"""Install and upgrade the `semsearch` schema (plain SQL in sql/, versioned under alembic/)."""
from __future__ import annotations

from pathlib import Path

from sqlalchemy import Connection, Engine, create_engine, text

from .database import check_pgvector, database_url, sqlalchemy_url

_PACKAGE = Path(__file__).resolve().parent


def _resource(installed: str, source: str) -> Path:
    """Folder shipped inside the wheel, or beside the package in a source checkout."""
    for candidate in (_PACKAGE / installed, _PACKAGE.parent / source):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"semsearch resource folder {source!r} is missing from the installation")


def sql_dir() -> Path:
    return _resource("_sql", "sql")


def migrations_dir() -> Path:
    return _resource("_alembic", "alembic")


def run_sql_file(name: str) -> None:
    """Run one file of sql/ inside the current Alembic migration."""
    from alembic import op

    sql = (sql_dir() / name).read_text()
    # Raw driver call: the file holds many statements and format() patterns with '%'.
    op.get_bind().connection.driver_connection.execute(sql)


def install(bind: Connection | Engine | None = None) -> None:
    """Create or upgrade the semsearch tables (migrations), then its functions and every index's triggers.

    Idempotent and safe to run concurrently (serialised by an advisory lock).
    """
    if bind is None:
        bind = create_engine(sqlalchemy_url(database_url()))
    if isinstance(bind, Engine):
        with bind.begin() as conn:
            install(conn)
        return
    from alembic import command
    from alembic.config import Config

    check_pgvector(bind.connection.driver_connection)
    bind.execute(text("SELECT pg_advisory_xact_lock(hashtext('semsearch.install'))"))
    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    config.attributes["connection"] = bind
    command.upgrade(config, "head")
    bind.connection.driver_connection.execute((sql_dir() / "functions.sql").read_text())
    bind.execute(text("SELECT semsearch.install_triggers(i) FROM semsearch.indexes i"))
