"""Building a new version of an index's vectors, the worker's side (the SQL is sql/versions.sql).

A change of model, dimensions, distance or storage starts a build. The worker then, between its
batches (which write to both versions meanwhile):
  1. walks the table in key order, embedding each step's rows with the new model into the new store,
     which has no HNSW index yet, so that rows go in at COPY speed;
  2. builds the HNSW index once (at the build's maintenance_work_mem); batches meanwhile note their keys;
  3. embeds the noted keys, then switches the registry to the new version in one transaction;
  4. drops the old store once no query can still be using it.
A new index on a table with rows takes the same fast path for its first fill (first_index_step).
"""
from __future__ import annotations

import logging
import time

import psycopg

from .batches import Item
from .embedders import Embedder, forget_embedder
from .registry import BatchVersions, IndexUnusable, RegistryChanged

log = logging.getLogger("semsearch.worker")

BUILD_PROBLEM_RETRY_SECONDS = 60
# A walk step grows or shrinks to take about this long: large enough for COPY speed with a fast model,
# short enough that the worker's batches for fresh writes never wait long behind it.
BUILD_STEP_SECONDS = 2.0
# How long a retired store still serves queries embedded by its model: longer than a process takes to
# notice a switch (semsearch.query.SERVING_MODEL_SECONDS).
RETIRED_STORE_GRACE = "60 seconds"


class VersionBuilder:
    """The build steps, mixed into semsearch.worker.Worker (they use its batches' writing)."""

    build_rows: int  # the largest walk step
    batch_size: int
    _build_retry: dict[int, float]
    _step_rows: dict[int, int]

    def build_step(self, conn: psycopg.Connection, ix) -> int:
        """One step of the index's build, in its own transaction; returns how many rows it settled
        (a phase change counts as 1), 0 when there is nothing to do now."""
        self._build_embedder(ix.build_model)  # loaded before taking any lock
        with conn.transaction():
            conn.execute("SELECT semsearch.lock_for_batch(%s)", (ix.id,))
            versions = BatchVersions.read(conn, ix.id)
            build = versions.build
            if build is None:
                return 0
            if versions.build_problem:
                return self._retry_build(conn, ix, build)
            embedder = self._checked_build_embedder(conn, ix, build)
            if embedder is None:
                return 0
            step = self._step_rows.get(ix.id, self.batch_size)
            started = time.monotonic()
            if versions.build_phase == "embedding":
                keys = conn.execute("SELECT semsearch.build_walk(%s, %s)", (ix.id, step)).fetchone()[0]
                if keys is None:
                    return 0
                if not keys:
                    phase_change = "walked"
            elif versions.build_phase == "indexing":
                phase_change = "index"
                keys = None
            else:
                keys = conn.execute("SELECT semsearch.take_build_keys(%s, %s)", (ix.id, step)).fetchone()[0]
                if not keys:
                    phase_change = "switch"
            if keys:
                self._build_rows(conn, ix, build, embedder, keys)
        if keys:
            elapsed = max(time.monotonic() - started, 1e-3)
            self._step_rows[ix.id] = int(min(max(step * min(BUILD_STEP_SECONDS / elapsed, 2.0), self.batch_size),
                                             max(self.build_rows, self.batch_size)))
            return len(keys)
        # Phase changes in transactions of their own, after the step's locks are gone.
        if phase_change == "walked":
            conn.execute("SELECT semsearch.build_walked(%s)", (ix.id,))
            conn.commit()
            log.info("index %s: every row is in version %s's store; building its HNSW index", ix.name, build.store_table)
        elif phase_change == "index":
            started = time.monotonic()
            conn.execute("SELECT semsearch.build_index(%s)", (ix.id,))
            conn.commit()
            log.info("index %s: HNSW index of %s built in %.1fs", ix.name, build.store_table, time.monotonic() - started)
        elif conn.execute("SELECT semsearch.finish_build(%s, %s)",
                          (ix.id, getattr(embedder, "revision", "") or "")).fetchone()[0]:
            conn.commit()
            log.info("index %s: switched to model %s (%s)", ix.name, build.model, build.store_table)
            raise RegistryChanged(ix.name)
        else:
            conn.commit()
            return 0
        return 1

    def _build_rows(self, conn: psycopg.Connection, ix, build, embedder: Embedder, keys: list[str]) -> None:
        """Embed these rows into the new version as they are now. Their advisory locks are waited for
        (a batch holding one is writing the same row to both versions), in key order like every taker."""
        conn.execute("SELECT pg_advisory_xact_lock(%s, hashtext(k)) FROM unnest(%s::text[]) k ORDER BY k",
                     (ix.id, sorted(keys)))
        items = [Item(key, 0, None) for key in keys]
        texts = self._read_source(conn, ix, keys)
        present, unembeddable = self._embeddable(items, texts)
        gone = [k for k in keys if k not in texts] + [f[0].key for f in unembeddable]
        failed = self._write_version(conn, ix, build, embedder, present, gone)
        for item, reason, permanent in failed:  # queued again: the batch that takes it writes both versions
            item.first_queued_at = conn.execute("SELECT now()").fetchone()[0]
            self._record_failure(conn, ix, item, reason, permanent)
        if self.on_progress:
            self.on_progress(len(keys))

    def _retry_build(self, conn: psycopg.Connection, ix, build) -> int:
        """A stopped build tries its model again once a minute; when it loads, the walk starts over."""
        if time.monotonic() < self._build_retry.get(ix.id, 0):
            return 0
        with self._embedders_lock:
            self._embedders.pop(build.model, None)
        forget_embedder(build.model)
        conn.execute("SELECT semsearch.record_build_problem(%s, NULL)", (ix.id,))
        if self._checked_build_embedder(conn, ix, build) is None:
            return 0
        log.info("index %s: model %s loads again; the new version's walk starts over", ix.name, build.model)
        return 1

    def build_failed(self, conn: psycopg.Connection, ix, exc: psycopg.Error) -> None:
        """A database error in a build step stops the build (status says why), never the worker."""
        problem = f"{type(exc).__name__}: {str(exc).strip()}"
        log.error("index %s: the new version cannot be built: %s", ix.name, problem)
        conn.execute("SELECT semsearch.record_build_problem(%s, %s)", (ix.id, problem))
        conn.commit()
        self._build_retry[ix.id] = time.monotonic() + BUILD_PROBLEM_RETRY_SECONDS

    def first_index_step(self, conn: psycopg.Connection, ix) -> int:
        """An index created on a table with rows fills its store without an HNSW index, at COPY speed
        (searches meanwhile scan it exactly); the index is built once, when the backfill is through and
        the queue has caught up (semsearch.build_first_hnsw). Returns 1 when it built it."""
        started = time.monotonic()
        try:
            built = conn.execute("SELECT semsearch.build_first_hnsw(%s, %s)", (ix.id, self.batch_size)).fetchone()[0]
            conn.commit()
        except (psycopg.errors.LockNotAvailable, psycopg.errors.QueryCanceled):
            conn.rollback()  # a batch or the application holds the store: next pass
            return 0
        except psycopg.OperationalError:
            raise  # the connection: reconnect
        except psycopg.DatabaseError as exc:  # tried again once a minute; the other indexes go on
            conn.rollback()
            self._report_unusable(conn, ix, IndexUnusable(f"its HNSW index cannot be built: {str(exc).strip()}"))
            return 0
        if not built:
            return 0
        log.info("index %s: every row is in its store; HNSW index built in %.1fs", ix.name, time.monotonic() - started)
        self._clear_problem(conn, ix)
        conn.commit()
        return 1

    @staticmethod
    def drop_retired(conn: psycopg.Connection, ix) -> None:
        """Drop the index's old stores that no query can still be using."""
        if conn.execute("SELECT semsearch.drop_retired_stores(%s, %s)", (ix.id, RETIRED_STORE_GRACE)).fetchone()[0]:
            log.info("index %s: dropped the store of its previous version", ix.name)
        conn.commit()

