"""semsearch's DDL as SQLAlchemy DDL elements: they render to SQL text without touching the database.

So the same statements run from create_all, from an Alembic operation online, and into the script of
`alembic upgrade --sql`; and `semsearch install` runs them too. The SQL itself lives in sql/.
"""
from __future__ import annotations

import json
import re
from functools import lru_cache
from pathlib import Path

from sqlalchemy.ext.compiler import compiles
from sqlalchemy.schema import ExecutableDDLElement

from .options import IndexOptions, sql_defaults

_PACKAGE = Path(__file__).resolve().parent

# Tables first, in version order; then the functions, each file needing only those before it.
SCHEMA_FILES = ("0001_schema.sql", "0002_keywords.sql", "0003_model_revision.sql", "0004_versions.sql", "0005_first_fill.sql")
FUNCTION_FILES = ("keys.sql", "queue.sql", "keywords.sql", "ddl.sql", "versions.sql", "search.sql", "status.sql", "uses.sql",
                  "access.sql")


def sql_dir() -> Path:
    """sql/ inside the wheel, or beside the package in a source checkout."""
    for candidate in (_PACKAGE / "_sql", _PACKAGE.parent / "sql"):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError("semsearch's sql/ folder is missing from the installation")


def sql_literal(value) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value) + "::float8"
    if isinstance(value, (list, tuple)):
        return "ARRAY[" + ", ".join(sql_literal(v) for v in value) + "]::text[]" if value else "'{}'::text[]"
    return "'" + str(value).replace("'", "''") + "'"


@lru_cache(maxsize=None)
def schema_sql(name: str) -> str:
    """One file of sql/, its {{default}} placeholders filled in from semsearch.options."""
    text = (sql_dir() / name).read_text()
    defaults = sql_defaults()

    def fill(match: re.Match) -> str:
        if match.group(1) not in defaults:
            raise KeyError(f"sql/{name}: no default named {match.group(1)!r}")
        return sql_literal(defaults[match.group(1)])

    return re.sub(r"\{\{(\w+)\}\}", fill, text).strip().rstrip(";")


class SemsearchDDL(ExecutableDDLElement):
    """Base: each subclass renders one SQL text."""

    inherit_cache = False

    def sql(self) -> str:
        raise NotImplementedError


@compiles(SemsearchDDL)
def _render(element: SemsearchDDL, compiler, **kw) -> str:
    # The text is complete SQL: only the driver's '%' escaping applies (none in offline scripts).
    return compiler.sql_compiler.post_process_text(element.sql())


class InstallStep(SemsearchDDL):
    """One file of the semsearch schema (idempotent: every statement can run again)."""

    def __init__(self, name: str):
        self.name = name

    def sql(self) -> str:
        return schema_sql(self.name)


class LockInstall(SemsearchDDL):
    """Serialise concurrent installs (create_all in several processes at once)."""

    def sql(self) -> str:
        return "SELECT pg_advisory_xact_lock(hashtext('semsearch.install'))"


class RefreshIndexes(SemsearchDDL):
    """Follow schema changes, bring trigger functions up to date, re-apply roles' rights; takes no lock
    on an application table when nothing changed."""

    def sql(self) -> str:
        return "SELECT semsearch.refresh_all(); SELECT semsearch.apply_roles()"


def install_steps() -> list[SemsearchDDL]:
    """Everything `semsearch install` runs, in order."""
    return ([LockInstall()] + [InstallStep(f) for f in SCHEMA_FILES + FUNCTION_FILES] + [RefreshIndexes()])


def qualified_table(table: str, schema: str | None) -> str:
    def quote(part: str) -> str:
        return '"' + part.replace('"', '""') + '"'

    return f"{quote(schema)}.{quote(table)}" if schema else quote(table)


class CreateSearchIndex(SemsearchDDL):
    """SELECT semsearch.create_index(...): creates the index, or aligns an existing one with it."""

    def __init__(self, name: str, table: str, columns: list[str], schema: str | None, options: IndexOptions):
        if options.dimensions is None:
            raise ValueError(f"index {name!r}: give dimensions= for model {options.model!r}")
        self.name, self.table, self.columns, self.schema, self.options = name, table, list(columns), schema, options

    def sql(self) -> str:
        o = self.options
        args = [sql_literal(self.name), sql_literal(qualified_table(self.table, self.schema)) + "::regclass",
                sql_literal(self.columns), sql_literal(o.model), sql_literal(o.dimensions)]
        named = {"distance": o.distance, "ts_config": o.ts_config, "chunk_tokens": o.chunk_tokens,
                 "chunk_overlap": o.chunk_overlap, "hnsw_m": o.hnsw_m, "hnsw_ef_construction": o.hnsw_ef_construction,
                 "bm25_k1": float(o.bm25_k1), "bm25_b": float(o.bm25_b)}
        if o.storage != "vector":  # (the default, left out so that existing migrations render as before)
            named["storage"] = o.storage
        args += [f"{k} => {sql_literal(v)}" for k, v in named.items()]
        o.check_weights(self.columns)
        if o.weights:
            args.append(f"weights => {sql_literal(json.dumps(dict(o.weights)))}::jsonb")
        return f"SELECT semsearch.create_index({', '.join(args)})"


class AlterSearchIndex(SemsearchDDL):
    """SELECT semsearch.alter_index(name, changes): columns, chunking, HNSW or ts_config in place."""

    def __init__(self, name: str, changes: dict):
        self.name, self.changes = name, dict(changes)

    def sql(self) -> str:
        changes = {k: dict(v or ()) if k == "weights" else v for k, v in self.changes.items()}
        return f"SELECT semsearch.alter_index({sql_literal(self.name)}, {sql_literal(json.dumps(changes))}::jsonb)"


class DropSearchIndex(SemsearchDDL):
    """SELECT semsearch.drop_index(name): triggers, store and queued work; the table is untouched."""

    def __init__(self, name: str, missing_ok: bool = True):
        self.name, self.missing_ok = name, missing_ok

    def sql(self) -> str:
        return f"SELECT semsearch.drop_index({sql_literal(self.name)}, {sql_literal(self.missing_ok)})"
