"""The index registry as the worker reads it (semsearch.indexes, semsearch.builds): each index, the
versions a batch writes, and the errors that make an index wait."""
from __future__ import annotations

from dataclasses import dataclass

import psycopg

from .errors import SemsearchError


@dataclass(frozen=True)
class IndexSpec:
    """One registry row, as the worker needs it."""

    id: int
    name: str
    schema: str
    table: str
    columns: tuple[str, ...]
    model: str
    dimensions: int
    chunk_tokens: int | None
    chunk_overlap: int
    store_table: str
    problem: str | None
    model_revision: str | None
    storage: str
    build_model: str | None = None  # the model of the version being built, if any
    hnsw_pending: bool = False  # a first fill: its store gets its HNSW index once the backfill is through


@dataclass(frozen=True)
class Version:
    """One version of an index's vectors: where they are stored and what made them."""

    store_table: str
    model: str
    dimensions: int
    storage: str
    chunk_tokens: int | None
    chunk_overlap: int


@dataclass(frozen=True)
class BatchVersions:
    """What a batch writes, read inside its transaction (semsearch.batch_versions)."""

    current: Version
    build: Version | None
    build_phase: str | None
    build_problem: str | None

    @classmethod
    def read(cls, conn: psycopg.Connection, index_id: int) -> "BatchVersions":
        r = conn.execute("SELECT * FROM semsearch.batch_versions(%s)", (index_id,)).fetchone()
        build = Version(r.build_store, r.build_model, r.build_dimensions, r.build_storage, r.build_chunk_tokens,
                        r.build_chunk_overlap) if r.build_store else None
        return cls(Version(r.store_table, r.model, r.dimensions, r.storage, r.chunk_tokens, r.chunk_overlap), build,
                   r.build_phase, r.build_problem)


class RegistryChanged(Exception):
    """The index switched versions since the worker read the registry: read it again."""


def load_indexes(conn: psycopg.Connection, names: list[str] | None = None) -> list[IndexSpec]:
    rows = conn.execute(
        """SELECT i.id, i.name, n.nspname, c.relname, i.columns::text[],
                  i.model, i.dimensions, i.chunk_tokens, i.chunk_overlap, i.store_table, i.problem,
                  i.model_revision, i.storage, b.model AS build_model, i.hnsw_pending
             FROM semsearch.indexes i
             JOIN pg_class c ON c.oid = i.source
             LEFT JOIN semsearch.builds b ON b.index_id = i.id
             JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE %(names)s::text[] IS NULL OR i.name = ANY(%(names)s)
            ORDER BY i.id""",
        {"names": names},
    ).fetchall()
    return [IndexSpec(r[0], r[1], r[2], r[3], tuple(r[4]), *r[5:]) for r in rows]


class IndexUnusable(SemsearchError):
    """An index the worker cannot serve as declared (model missing, wrong dimensions): its work waits,
    the other indexes go on. model_only: only embedding is impossible, keywords are still indexed."""

    def __init__(self, message: str, *, model_only: bool = False):
        super().__init__(message)
        self.model_only = model_only
