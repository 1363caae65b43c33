"""Which model embeds each index and each version being built: loaded once per worker, checked against
the index's dimensions, and held at one revision per store (a worker of another revision waits)."""
from __future__ import annotations

import logging
import threading
import time
from typing import Callable

import psycopg

from .embedders import Embedder, forget_embedder
from .errors import ModelUnavailable, server_message
from .registry import IndexSpec, IndexUnusable, Version
from .versions import BUILD_PROBLEM_RETRY_SECONDS

log = logging.getLogger("semsearch.worker")


class IndexModels:
    """The model steps, mixed into semsearch.worker.Worker."""

    embedder_factory: Callable[[str], Embedder]
    _embedders: dict[str, Embedder]
    _embedders_lock: threading.Lock
    _revisions: dict[tuple[int, str], str]  # (backend pid, store) -> revision it holds and recorded
    _build_retry: dict[int, float]

    def embedder(self, model: str) -> Embedder:
        with self._embedders_lock:
            if model not in self._embedders:
                self._embedders[model] = self.embedder_factory(model)
            return self._embedders[model]

    def _index_embedder(self, conn: psycopg.Connection, ix: IndexSpec) -> Embedder:
        """The index's model, checked against the index: a mismatch is the index's problem, not a crash."""
        try:
            embedder = self.embedder(ix.model)
        except ModelUnavailable as exc:
            raise IndexUnusable(str(exc), model_only=True) from exc
        if embedder.dimensions != ix.dimensions:
            # Asked afresh next time: a server may be answering for another model until it is fixed.
            with self._embedders_lock:
                self._embedders.pop(ix.model, None)
            forget_embedder(ix.model)
            raise IndexUnusable(f"model {ix.model!r} makes {embedder.dimensions}-dimensional vectors but the index "
                                f"holds {ix.dimensions}: drop the index and create it with dimensions="
                                f"{embedder.dimensions}", model_only=True)
        revision = getattr(embedder, "revision", "")
        if revision and self._revisions.get((conn.info.backend_pid, ix.store_table)) != revision:
            try:
                self._hold_revision(conn, ix.store_table, revision)
                if conn.execute("SELECT semsearch.record_model_revision(%s, %s)", (ix.id, revision)).fetchone()[0]:
                    log.info("index %s: model %s is now at revision %s (its vectors were made by %s): re-embedding "
                             "every row once", ix.name, ix.model, revision, ix.model_revision)
                conn.commit()
            except psycopg.errors.ObjectInUse as exc:
                conn.rollback()
                raise IndexUnusable(server_message(exc), model_only=True) from None
            self._revisions[(conn.info.backend_pid, ix.store_table)] = revision
        return embedder

    @staticmethod
    def _hold_revision(conn: psycopg.Connection, store: str, revision: str) -> None:
        """Say, for as long as this connection lives, that it writes this store with this model revision:
        a worker of another revision then waits instead of mixing vectors of two revisions in one store."""
        conn.execute("SELECT pg_advisory_lock_shared(semsearch.revision_lock(%s, %s))", (store, revision))

    def _build_embedder(self, model: str) -> Embedder | None:
        """The model of a version being built, or None when it cannot be loaded (checked per batch)."""
        try:
            return self.embedder(model)
        except ModelUnavailable:
            return None

    def _checked_build_embedder(self, conn: psycopg.Connection, ix: IndexSpec, build: Version) -> Embedder | None:
        """The build's model, checked against the build: a model that cannot be loaded or makes other
        vectors stops the build (status says why), never the current version."""
        try:
            embedder = self.embedder(build.model)
            problem = None if embedder.dimensions == build.dimensions else (
                f"model {build.model!r} makes {embedder.dimensions}-dimensional vectors, not {build.dimensions}: "
                f"change the index again with dimensions={embedder.dimensions}")
        except ModelUnavailable as exc:
            embedder, problem = None, str(exc)
        revision = getattr(embedder, "revision", "") if embedder else ""
        if not problem and revision and self._revisions.get((conn.info.backend_pid, build.store_table)) != revision:
            try:
                with conn.transaction():
                    self._hold_revision(conn, build.store_table, revision)
                    if conn.execute("SELECT semsearch.record_build_revision(%s, %s)", (ix.id, revision)).fetchone()[0]:
                        log.info("index %s: the new version is now built with revision %s of model %s: its walk "
                                 "starts again", ix.name, revision, build.model)
            except psycopg.errors.ObjectInUse as exc:
                raise IndexUnusable(server_message(exc), model_only=True) from None
            self._revisions[(conn.info.backend_pid, build.store_table)] = revision
        if problem:
            with self._embedders_lock:
                self._embedders.pop(build.model, None)
            forget_embedder(build.model)
            problem += ("\n(The current version keeps serving. Fix this and the worker tries again within a minute, "
                        "or change the index again, e.g. `semsearch reindex`; back to the current model cancels the build.)")
            log.error("index %s: the new version cannot be built: %s", ix.name, problem)
            conn.execute("SELECT semsearch.record_build_problem(%s, %s)", (ix.id, problem))
            self._build_retry[ix.id] = time.monotonic() + BUILD_PROBLEM_RETRY_SECONDS
            return None
        return embedder
