"""The worker: claims queued rows, reads their current text, embeds it, writes the store.

Driven by the registry in the database (semsearch.indexes), so it needs only a database URL.
Each batch is one transaction: claim (FOR UPDATE SKIP LOCKED) -> per-key advisory lock -> absorb
duplicate queue rows -> read the source rows as they are now -> embed -> replace their chunks in
the store -> commit. A crash rolls everything back and the queue rows reappear; the advisory lock
means two workers never embed the same key at once, so an older text can never overwrite a newer one.
Lanes (threads with their own connections) can share one model so that one lane's database I/O
overlaps another's model compute: worth it with a remote database; on a machine that also runs
the database they compete for the same cores, so the default is one lane.
"""
from __future__ import annotations

import logging
import random
import time
import threading
from dataclasses import dataclass, replace
from typing import Callable

import psycopg
from psycopg import sql
from pgvector import HalfVector
from pgvector.psycopg import register_vector
from psycopg.rows import namedtuple_row

from .database import connect, database_url
from .errors import DatabaseUnavailable, EmbedderUnavailable, ModelUnavailable, SemsearchError, server_message
from .embedder import Embedder, content_hash, forget_embedder, get_embedder, model_id
from .schema import installed_version, require_installed
from .versions import BUILD_PROBLEM_RETRY_SECONDS, VersionBuilder

log = logging.getLogger("semsearch.worker")

NOTIFY_CHANNEL = "semsearch"
UNUSABLE_RETRY_SECONDS = 60
OUTAGE_FIRST_WAIT, OUTAGE_LONGEST_WAIT = 1.0, 60.0  # seconds between tries of an embedding service that is down
TOKENIZE_CHARS = 2_000_000
KEYWORD_BATCH_KEYS = 500  # keys the keyword pass indexes per transaction
# Connection errors of a server that will accept connections soon (SQLSTATE 57P03 and friends).
TRANSIENT_SERVER_STATES = ("the database system is starting up", "the database system is shutting down",
                           "the database system is in recovery mode", "the database system is not yet accepting")


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


@dataclass
class Item:
    key: str
    attempts: int
    first_queued_at: object
    text: str | None = None
    hash: bytes | None = None
    chunks: list[str] | None = None


class Worker(VersionBuilder):
    """Embeds queued rows until stopped (or, with drain=True, until the queue is empty)."""

    def __init__(
        self,
        url: str | None = None,
        *,
        indexes: list[str] | None = None,
        batch_size: int = 64,
        lanes: int = 1,
        poll_interval: float = 5.0,
        max_attempts: int = 5,
        retry_base_seconds: float = 2.0,
        max_chunks: int = 1000,
        max_text_chars: int = 2_000_000,
        build_rows: int = 5000,
        wait_for_database: float = 30.0,
        embedder_factory: Callable[[str], Embedder] = get_embedder,
        on_progress: Callable[[int], None] | None = None,
        on_queued: Callable[[int], None] | None = None,
    ):
        self.url = url or database_url()
        self.index_names = indexes
        self.batch_size = batch_size
        self.lanes = lanes
        self.poll_interval = poll_interval
        self.max_attempts = max_attempts
        self.retry_base_seconds = retry_base_seconds
        self.max_chunks = max_chunks
        self.max_text_chars = max_text_chars  # longer texts are refused before tokenizing (memory bound)
        self.build_rows = build_rows  # most rows per step of a new version's build (see semsearch.versions)
        self.wait_for_database = wait_for_database
        self.embedder_factory = embedder_factory
        self.on_progress = on_progress  # called with the number of keys each batch settled
        self.on_queued = on_queued  # called with the number of keys each backfill step queued
        self._stop = threading.Event()
        self._wake = threading.Condition()
        self._generation = 0
        self._embedders: dict[str, Embedder] = {}
        self._embedders_lock = threading.Lock()
        self._errors: list[BaseException] = []
        self._problems: dict[str, tuple[str, float]] = {}  # index name -> (why it is unusable, since)
        self._model_problems: set[str] = set()  # unusable indexes whose keywords can still be indexed
        self._store_rls: dict[str, bool] = {}  # store table -> row-level security applies to our writes
        self._outages: dict[str, tuple[float, float]] = {}  # index name -> (next try at, wait after that)
        self._revisions: dict[tuple[int, str], str] = {}  # (backend pid, store) -> revision it holds and recorded
        self._build_retry: dict[int, float] = {}  # index id -> when to try a stopped build's model again
        self._step_rows: dict[int, int] = {}  # index id -> rows of its build's next step

    # -- lifecycle -------------------------------------------------------------------------

    def stop(self) -> None:
        """Finish the batches in hand, then return from run()."""
        self._stop.set()
        self._notify()

    def run(self, drain: bool = False) -> None:
        threads = [threading.Thread(target=self._lane, args=(drain,), name=f"semsearch-lane-{i}", daemon=True)
                   for i in range(self.lanes)]
        listener = threading.Thread(target=self._listen, name="semsearch-listen", daemon=True)
        listener.start()
        for t in threads:
            t.start()
        try:
            for t in threads:
                while t.is_alive():  # short timeouts keep the main thread responsive to signals
                    t.join(0.02)
        finally:
            self.stop()  # the listener (a daemon thread) sees it within 0.1 s and closes its connection
        if self._errors:
            raise self._errors[0]

    def _notify(self) -> None:
        with self._wake:
            self._generation += 1
            self._wake.notify_all()

    def _sleep(self, seconds: float, seen_generation: int | None = None) -> None:
        """Sleep until woken by NOTIFY (if seen_generation given), stop, or timeout."""
        with self._wake:
            self._wake.wait_for(
                lambda: self._stop.is_set()
                or (seen_generation is not None and self._generation != seen_generation),
                timeout=seconds,
            )

    def _listen(self) -> None:
        """Turn NOTIFYs from the triggers into wake-ups; polling covers any gap."""
        backoff = 0.5
        while not self._stop.is_set():
            try:
                with connect(self.url, autocommit=True) as conn:
                    conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
                    backoff = 0.5
                    self._notify()  # anything queued while we were not listening
                    while not self._stop.is_set():
                        for _ in conn.notifies(timeout=0.1, stop_after=1):
                            self._notify()
            except Exception as exc:  # the lanes report real errors; here we only retry
                if self._stop.is_set():
                    return
                log.warning("listener lost its connection (%s); reconnecting in %.1fs", exc, backoff)
                self._sleep(backoff)
                backoff = min(backoff * 2, 30)

    def _lane(self, drain: bool) -> None:
        backoff, connected_once, started = 0.5, False, time.monotonic()
        while not self._stop.is_set():
            try:
                with connect(self.url) as conn:
                    conn.row_factory = namedtuple_row
                    # Safe to skip the WAL flush wait: the store write and the queue delete commit
                    # together, so a crash can only undo both and the batch is simply redone.
                    conn.execute("SET synchronous_commit = off")
                    conn.commit()
                    backoff, connected_once = 0.5, True
                    if not self._wait_for_schema(conn, drain):
                        return
                    register_vector(conn)  # the vector type exists once semsearch is installed
                    if self._work(conn, drain):
                        return
            except (psycopg.OperationalError, psycopg.InterfaceError, DatabaseUnavailable) as exc:
                # A lost server is waited for; so is a server that is starting or stopping, or not up yet
                # for wait_for_database seconds after the worker started (containers start in any order).
                # A URL that never connects fails after that.
                if (not connected_once and not any(state in str(exc) for state in TRANSIENT_SERVER_STATES)
                        and time.monotonic() - started > self.wait_for_database):
                    self._fail(exc)
                    return
                log.warning("database connection lost (%s); reconnecting in %.1fs", str(exc).strip(), backoff)
                self._sleep(backoff * random.uniform(0.5, 1.5))
                backoff = min(backoff * 2, 30)
            except SemsearchError as exc:  # a problem to report, not a crash
                self._fail(exc)
                return
            except BaseException as exc:
                log.exception("worker lane failed")
                self._fail(exc)
                return

    def _wait_for_schema(self, conn: psycopg.Connection, drain: bool) -> bool:
        """A worker may start before the application's migrations: wait (logging once) until semsearch
        is installed, so containers can start in any order. Draining has nothing to wait for."""
        logged = False
        while not self._stop.is_set():
            installed = installed_version(conn) is not None
            conn.commit()
            if installed:
                if logged:
                    log.info("semsearch schema found; starting")
                return True
            if drain:
                require_installed(conn)
            if not logged:
                log.warning("semsearch is not installed in database %r yet; waiting for it (run `semsearch "
                            "install`, create_all or your migrations)", conn.info.dbname)
                logged = True
            self._sleep(min(self.poll_interval, 2.0))
        return False

    def _fail(self, exc: BaseException) -> None:
        self._errors.append(exc)
        self.stop()

    def _work(self, conn: psycopg.Connection, drain: bool) -> bool:
        """Process batches until stopped; returns True when drained."""
        indexes = None
        waiting = False
        conn.execute("DELETE FROM semsearch.listeners l WHERE NOT EXISTS "
                     "(SELECT 1 FROM pg_stat_activity a WHERE a.pid = l.pid)")  # left by killed workers
        conn.commit()
        while not self._stop.is_set():
            seen = self._generation
            if indexes is None:  # (re)read the registry when idle, not on every batch
                indexes = load_indexes(conn, self.index_names)
                conn.commit()
                self._check_indexes(conn, indexes)
                self._backfill(conn, self._usable(indexes))
            usable = self._usable(indexes)
            try:
                done = 0
                for ix in indexes:  # keywords first: they never wait for a model
                    if ix in usable or ix.name in self._model_problems:
                        try:
                            done += self.process_keywords(conn, ix)
                        except psycopg.errors.LockNotAvailable:
                            conn.rollback()
                for ix in usable:
                    if ix.name in self._outages and time.monotonic() < self._outages[ix.name][0]:
                        continue
                    try:
                        done += self.process_batch(conn, ix)
                        self._outage_over(conn, ix)
                    except EmbedderUnavailable as exc:
                        conn.rollback()  # nothing claimed stays claimed, and no row loses an attempt
                        self._outage(conn, ix, exc)
                    except ModelUnavailable as exc:  # the service refuses the index's spec
                        conn.rollback()
                        self._report_unusable(conn, ix, IndexUnusable(str(exc), model_only=True))
                    except IndexUnusable as exc:
                        self._report_unusable(conn, ix, exc)
                    except psycopg.errors.LockNotAvailable:
                        conn.rollback()  # the application holds the table (ALTER, TRUNCATE): next pass
                    except (psycopg.errors.InsufficientPrivilege, psycopg.errors.UndefinedColumn) as exc:
                        conn.rollback()  # the table changed under the index, or rights were taken away
                        self._report_unusable(conn, ix, IndexUnusable(str(exc).strip()))
                for ix in usable:  # new versions, between batches
                    if ix.build_model is None or (ix.name in self._outages
                                                  and time.monotonic() < self._outages[ix.name][0]):
                        continue
                    try:
                        done += self.build_step(conn, ix)
                    except EmbedderUnavailable as exc:
                        conn.rollback()
                        self._outage(conn, ix, exc)
                    except IndexUnusable as exc:  # another revision of the build's model is writing it
                        conn.rollback()
                        self._report_unusable(conn, ix, exc)
                    except psycopg.errors.LockNotAvailable:
                        conn.rollback()
                    except psycopg.OperationalError:
                        raise  # the connection: reconnect
                    except psycopg.DatabaseError as exc:  # the build's problem (rights, a changed table): it stops
                        conn.rollback()
                        self.build_failed(conn, ix, exc)
                for ix in usable:  # a first fill's HNSW index, once its backfill is through
                    if ix.hnsw_pending:
                        done += self.first_index_step(conn, ix)
            except psycopg.errors.UndefinedTable as exc:  # an index was dropped meanwhile
                log.warning("re-reading the index registry: %s", str(exc).strip())
                indexes = None
                self._sleep(0.5)
                continue
            except RegistryChanged:  # a version switch: its new store and model from now on
                conn.rollback()
                indexes = None
                continue
            if done:
                if waiting:
                    waiting = self._set_waiting(conn, False)
                continue
            if not waiting:
                # Announce before looking at the queue once more: a write that commits after this
                # look sees us waiting and NOTIFYs; writes while we are busy skip the NOTIFY.
                waiting = self._set_waiting(conn, True)
            pending, next_due = self._pending(conn, self._usable(indexes))
            indexes = None
            if drain and not pending:
                problems = {name: problem for name, (problem, _) in self._problems.items()}
                problems.update(self._stopped_builds(conn))
                if problems:
                    raise IndexUnusable("; ".join(f"{name}: {problem}" for name, problem in problems.items())
                                        + "\nThe other indexes are done; fix these and run the worker again.")
                return True
            if self._outages:  # try the embedding service again when its wait is over
                next_try = min(at for at, _ in self._outages.values()) - time.monotonic()
                self._sleep(max(0.05, min(next_try, self.poll_interval)), None if drain else seen)
            elif pending and next_due <= 0:
                self._sleep(0.05)  # claimable work held by another lane or worker: look again soon
            elif drain:
                self._sleep(min(next_due, 1.0))
            else:
                self._sleep(min(next_due, self.poll_interval) if pending else self.poll_interval, seen)
        return False

    def _check_indexes(self, conn: psycopg.Connection, indexes: list[IndexSpec]) -> None:
        """Follow schema changes (semsearch.refresh_index) and make sure semsearch can read every row of
        each table: rows it cannot see would look deleted, so such an index is refused, never emptied."""
        for ix in indexes:
            problem = conn.execute("SELECT coalesce(semsearch.refresh_index(%s), semsearch.source_visibility_problem(%s))",
                                   (ix.id, ix.id)).fetchone()[0]
            conn.commit()
            if not problem:
                conn.execute("SELECT semsearch.refresh_keyword_stats(%s, compact => true)", (ix.id,))
                conn.commit()
                self.drop_retired(conn, ix)
            if problem:
                self._report_unusable(conn, ix, IndexUnusable(problem))
            elif ix.name in self._problems and self._problems[ix.name][0].startswith("table changed"):
                del self._problems[ix.name]

    def _usable(self, indexes: list[IndexSpec]) -> list[IndexSpec]:
        return [ix for ix in indexes if not self._unusable(ix)]

    def _unusable(self, ix: IndexSpec) -> bool:
        """An index that failed as a whole is retried once a minute, not on every batch."""
        problem = self._problems.get(ix.name)
        return problem is not None and time.monotonic() - problem[1] < UNUSABLE_RETRY_SECONDS

    def _report_unusable(self, conn: psycopg.Connection, ix: IndexSpec, exc: Exception) -> None:
        message = str(exc)
        if self._problems.get(ix.name, (None,))[0] != message:
            log.error("index %s cannot be served, its work waits (the other indexes go on): %s", ix.name, message)
        self._problems[ix.name] = (message, time.monotonic())
        if getattr(exc, "model_only", False):
            self._model_problems.add(ix.name)
        else:
            self._model_problems.discard(ix.name)
        conn.execute("UPDATE semsearch.indexes SET problem = %s WHERE id = %s", (message, ix.id))
        conn.commit()

    def _outage(self, conn: psycopg.Connection, ix: IndexSpec, exc: EmbedderUnavailable) -> None:
        """The embedding service failed as a whole: wait (doubling, up to a minute) and say so in status."""
        wait = self._outages.get(ix.name, (0.0, OUTAGE_FIRST_WAIT))[1]
        self._outages[ix.name] = (time.monotonic() + wait * random.uniform(0.8, 1.2), min(wait * 2, OUTAGE_LONGEST_WAIT))
        message = f"embedding service unavailable, trying again in {wait:.0f}s (queued rows wait, keeping their attempts): {exc}"
        log.warning("index %s: %s", ix.name, message)
        conn.execute("UPDATE semsearch.indexes SET problem = %s WHERE id = %s", (message, ix.id))
        conn.commit()

    def _outage_over(self, conn: psycopg.Connection, ix: IndexSpec) -> None:
        if self._outages.pop(ix.name, None) is not None:
            log.info("index %s: the embedding service answers again", ix.name)
            conn.execute("UPDATE semsearch.indexes SET problem = NULL WHERE id = %s "
                         "AND problem LIKE 'embedding service unavailable%%'", (ix.id,))
            conn.commit()

    def _clear_problem(self, conn: psycopg.Connection, ix: IndexSpec) -> None:
        self._model_problems.discard(ix.name)
        if self._problems.pop(ix.name, None) is not None:
            log.info("index %s is served again", ix.name)
        elif ix.problem is None:
            return
        conn.execute("UPDATE semsearch.indexes SET problem = NULL WHERE id = %s", (ix.id,))

    @staticmethod
    def _set_waiting(conn: psycopg.Connection, waiting: bool) -> bool:
        """Tell writers whether this lane waits for a NOTIFY. Each NOTIFY serialises the writer's
        commit with every other notifying commit, so the triggers send one only when a worker waits."""
        if waiting:
            conn.execute("INSERT INTO semsearch.listeners (pid) VALUES (pg_backend_pid()) ON CONFLICT DO NOTHING")
        else:
            conn.execute("DELETE FROM semsearch.listeners WHERE pid = pg_backend_pid()")
        conn.commit()
        return waiting

    def _backfill(self, conn: psycopg.Connection, indexes: list[IndexSpec]) -> None:
        """Queue the rows of requested backfills, a short transaction per step."""
        for ix in indexes:
            while not self._stop.is_set():
                try:
                    queued = conn.execute("SELECT semsearch.backfill_step(%s)", (ix.name,)).fetchone()[0]
                except (psycopg.errors.LockNotAvailable, psycopg.errors.QueryCanceled):
                    conn.rollback()  # the application holds the table: next pass
                    break
                except (psycopg.ProgrammingError, psycopg.DataError) as exc:  # this index's problem only
                    conn.rollback()
                    self._report_unusable(conn, ix, IndexUnusable(f"backfill failed: {str(exc).strip()}"))
                    break
                conn.commit()
                if not queued:
                    break
                if self.on_queued:
                    self.on_queued(queued)
                log.info("backfill of %s: queued %d more rows", ix.name, queued)

    def _stopped_builds(self, conn: psycopg.Connection) -> dict[str, str]:
        rows = conn.execute(
            """SELECT i.name, b.problem FROM semsearch.builds b JOIN semsearch.indexes i ON i.id = b.index_id
                WHERE b.problem IS NOT NULL AND (%s::text[] IS NULL OR i.name = ANY(%s))""",
            (self.index_names, self.index_names)).fetchall()
        conn.commit()
        return {r[0]: f"its new version cannot be built: {r[1]}" for r in rows}

    @staticmethod
    def _pending(conn: psycopg.Connection, indexes: list[IndexSpec]) -> tuple[int, float]:
        """Work left (queue rows and requested backfills), and seconds until the earliest may run."""
        ids = [ix.id for ix in indexes]
        count, due = conn.execute(
            """SELECT (SELECT count(*) FROM semsearch.queue WHERE index_id = ANY(%(ids)s))
                    + (SELECT count(*) FROM semsearch.indexes WHERE id = ANY(%(ids)s) AND backfill_pending)
                    + (SELECT count(*) FROM semsearch.builds WHERE index_id = ANY(%(ids)s) AND problem IS NULL)
                    + (SELECT count(*) FROM semsearch.indexes WHERE id = ANY(%(ids)s) AND hnsw_pending),
                      coalesce((SELECT extract(epoch FROM min(run_after) - now()) FROM semsearch.queue
                                 WHERE index_id = ANY(%(ids)s)), 0)::float8""", {"ids": ids}).fetchone()
        conn.commit()
        return count, due

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

    # -- one batch ---------------------------------------------------------------------------

    def process_keywords(self, conn: psycopg.Connection, ix: IndexSpec) -> int:
        """Index the keywords of queued rows ahead of their embeddings, so keyword search finds a row as
        soon as the worker has read it, however long its embedding waits. The rows stay queued for
        embedding, marked keywords_done. Returns how many queue rows it marked."""
        with conn.transaction():
            conn.execute("SELECT semsearch.lock_for_batch(%s)", (ix.id,))
            rows = conn.execute(
                """SELECT id, keys FROM semsearch.queue WHERE index_id = %s AND NOT keywords_done
                    ORDER BY id LIMIT %s FOR UPDATE SKIP LOCKED""", (ix.id, KEYWORD_BATCH_KEYS)).fetchall()
            taken, total = [], 0
            for row in rows:
                if taken and total + len(row.keys) > KEYWORD_BATCH_KEYS:
                    break
                taken.append(row)
                total += len(row.keys)
            if not taken:
                return 0
            # The keys' advisory locks, as for embedding: keys held by a batch stay for that batch.
            locked = {r.k for r in conn.execute(
                "SELECT k FROM unnest(%s::text[]) k WHERE pg_try_advisory_xact_lock(%s, hashtext(k)) ORDER BY k",
                (sorted({k for row in taken for k in row.keys}), ix.id))}
            if locked:
                conn.execute("SELECT semsearch.index_keywords(%s, %s)", (ix.id, sorted(locked)))
            marked = [row.id for row in taken if locked.issuperset(row.keys)]
            conn.execute("UPDATE semsearch.queue SET keywords_done = true WHERE id = ANY(%s)", (marked,))
        conn.execute("SELECT semsearch.refresh_keyword_stats(%s)", (ix.id,))
        conn.commit()
        return len(marked)

    def process_batch(self, conn: psycopg.Connection, ix: IndexSpec) -> int:
        """Claim and process up to batch_size queued keys; returns how many keys were settled."""
        # Load the models before claiming anything: claimed keys never wait.
        embedder = self._index_embedder(conn, ix)
        if ix.build_model:
            self._build_embedder(ix.build_model)
        with conn.transaction():
            # Source table, then store, then queue rows: the order an application's TRUNCATE and drop_index
            # take them in, so a worker never deadlocks with them.
            conn.execute("SELECT semsearch.lock_for_batch(%s)", (ix.id,))
            versions = BatchVersions.read(conn, ix.id)
            # A switch, or a build started or ended, since the registry was read (a busy worker reads it
            # only between its batches' transactions, so this is where it learns of them).
            if (versions.current != Version(ix.store_table, ix.model, ix.dimensions, ix.storage, ix.chunk_tokens,
                                            ix.chunk_overlap)
                    or (versions.build.model if versions.build else None) != ix.build_model):
                raise RegistryChanged(ix.name)
            claimed = conn.execute(
                """SELECT id, keys, attempts, queued_at FROM semsearch.queue
                    WHERE index_id = %s AND run_after <= now()
                    ORDER BY id LIMIT %s FOR UPDATE SKIP LOCKED""",
                (ix.id, self.batch_size),
            ).fetchall()
            if not claimed:
                return 0
            if len(claimed[0].keys) > self.batch_size:
                # A bulk statement's row: split it into batch-sized rows and commit at once,
                # so every worker can take a share.
                conn.execute(
                    """WITH big AS (DELETE FROM semsearch.queue WHERE id = %(id)s RETURNING *)
                       INSERT INTO semsearch.queue (index_id, keys, queued_at, run_after, attempts, last_error,
                                                    keywords_done)
                       SELECT index_id, keys[i:i + %(n)s - 1], queued_at, run_after, attempts, last_error, keywords_done
                         FROM big, generate_series(1, cardinality(keys), %(n)s) i ORDER BY i""",
                    {"id": claimed[0].id, "n": self.batch_size})
                split = True
            else:
                split = False
                taken, total = [], 0
                for row in claimed:
                    if taken and total + len(row.keys) > self.batch_size:
                        break
                    taken.append(row)
                    total += len(row.keys)
                # Keys another worker is embedding right now stay queued for later.
                locked = {r.k for r in conn.execute(
                    "SELECT k FROM unnest(%s::text[]) k WHERE pg_try_advisory_xact_lock(%s, hashtext(k)) ORDER BY k",
                    (sorted({k for row in taken for k in row.keys}), ix.id),
                )}
                if not locked:
                    return 0
                items: dict[str, Item] = {}
                for row in taken:
                    for key in row.keys:
                        if key in locked:
                            item = items.setdefault(key, Item(key, row.attempts, row.queued_at))
                            item.attempts = max(item.attempts, row.attempts)
                            item.first_queued_at = min(item.first_queued_at, row.queued_at)
                # A row with a key held elsewhere stays queued whole: its other keys come round
                # again later and cost only a hash comparison.
                conn.execute("DELETE FROM semsearch.queue WHERE id = ANY(%s)",
                             ([row.id for row in taken if locked.issuperset(row.keys)],))
                self._settle(conn, ix, embedder, list(items.values()), versions)
        if split:
            return self.process_batch(conn, ix)
        if self.on_progress:
            self.on_progress(len(items))
        return len(items)

    def _settle(self, conn: psycopg.Connection, ix: IndexSpec, embedder: Embedder, items: list[Item],
                versions: BatchVersions) -> None:
        self._clear_problem(conn, ix)
        # Keywords first, whatever happens to the embedding.
        conn.execute("SELECT semsearch.index_keywords(%s, %s)", (ix.id, sorted(i.key for i in items)))
        texts = self._read_source(conn, ix, [i.key for i in items])
        gone = [i.key for i in items if i.key not in texts]
        present, failed = self._embeddable(items, texts)
        failed.extend(self._write_version(conn, ix, versions.current, embedder, present, gone + [f[0].key for f in failed]))
        failed_keys = {f[0].key for f in failed}
        if versions.build is not None:
            # Writes during a build reach both versions: the new one is exact when it becomes current.
            build_embedder = None if versions.build_problem else self._checked_build_embedder(conn, ix, versions.build)
            if versions.build_phase == "indexing":  # its HNSW index is being built: embedded just after
                conn.execute("SELECT semsearch.note_build_keys(%s, %s)", (ix.id, sorted(i.key for i in items)))
            elif build_embedder is None:  # stopped: its walk starts again, so only remove what changed
                self._delete_keys(conn, versions.build, [i.key for i in items])
            else:
                built = [i for i in present if i.key not in failed_keys]
                failed.extend(self._write_version(conn, ix, versions.build, build_embedder, built,
                                                  gone + sorted(failed_keys)))
                failed_keys = {f[0].key for f in failed}
        settled = [i.key for i in items if i.key not in failed_keys]
        if settled:
            conn.execute("DELETE FROM semsearch.failures WHERE index_id = %s AND key = ANY(%s)", (ix.id, settled))
        for item, reason, permanent in failed:
            self._record_failure(conn, ix, item, reason, permanent)

    def _embeddable(self, items: list[Item], texts: dict[str, str | None]):
        """The items whose row exists and has text to embed within the worker's limits, and the failures
        of the others (item, reason, permanent)."""
        present: list[Item] = []
        failed: list[tuple[Item, str, bool]] = []
        for item in items:
            if item.key not in texts:
                continue
            item.text = texts[item.key]
            if item.text is None or not item.text.strip():
                failed.append((item, "nothing to embed: the indexed columns are NULL, empty or blank", True))
            elif len(item.text) > self.max_text_chars:
                failed.append((item, f"text too long: {len(item.text)} characters, over the worker's max_text_chars "
                                     f"({self.max_text_chars}); raise it (--max-text-chars) to embed it", True))
            else:
                present.append(item)
        return present, failed

    def _write_version(self, conn: psycopg.Connection, ix: IndexSpec, version: Version, embedder: Embedder,
                       items: list[Item], stale_keys: list[str]) -> list[tuple[Item, str, bool]]:
        """Embed the items whose text (or model) changed since this version stored them and replace their
        chunks; remove the vectors of stale_keys (deleted rows, failed items). Returns the failures."""
        store = sql.Identifier(version.store_table)
        current = dict(conn.execute(
            sql.SQL("SELECT key, content_hash FROM semsearch.{} WHERE key = ANY(%s) AND chunk = 0").format(store),
            ([i.key for i in items],)).fetchall())
        model = model_id(embedder)
        changed: list[Item] = []
        for item in items:
            item = replace(item, hash=content_hash(model, version.chunk_tokens, version.chunk_overlap, item.text),
                           chunks=None)
            if current.get(item.key) != item.hash:  # else: already embedded from exactly this text
                changed.append(item)

        failed: list[tuple[Item, str, bool]] = []
        to_embed: list[Item] = []
        for item, chunks in zip(changed, self._chunk(embedder, version, changed)):
            if isinstance(chunks, Exception):
                failed.append((item, f"chunking failed: {chunks!r}", False))
            elif len(chunks) > self.max_chunks:
                failed.append((item, f"text too long: {len(chunks)} chunks, over the worker's max_chunks "
                                     f"({self.max_chunks}); raise max_chunks (--max-chunks) to embed it", True))
            else:
                item.chunks = chunks
                to_embed.append(item)
        vectors, embed_failures = self._embed(embedder, to_embed)
        failed.extend(embed_failures)
        embedded = [i for i in to_embed if i.key in vectors]
        # A failed item's old vectors describe text it no longer has: never serve them.
        self._delete_keys(conn, version, list(stale_keys) + [i.key for i in embedded] + [f[0].key for f in failed])
        if embedded:
            rows = [(item.key, n, chunk, vector, model, item.hash)
                    for item in embedded for n, (chunk, vector) in enumerate(zip(item.chunks, vectors[item.key]))]
            self._write_store(conn, ix, version, rows)
        return failed

    @staticmethod
    def _delete_keys(conn: psycopg.Connection, version: Version, keys: list[str]) -> None:
        if keys:
            conn.execute(sql.SQL("DELETE FROM semsearch.{} WHERE key = ANY(%s)").format(sql.Identifier(version.store_table)),
                         (sorted(set(keys)),))

    def _write_store(self, conn: psycopg.Connection, ix: IndexSpec, version: Version, rows: list[tuple]) -> None:
        """Binary COPY; or, for a worker role under the store's row-level security (PostgreSQL refuses
        COPY FROM there), one INSERT of unnested arrays."""
        store = sql.Identifier(version.store_table)
        if version.store_table not in self._store_rls:
            self._store_rls[version.store_table] = conn.execute("SELECT row_security_active(%s::regclass)",
                                                                (f"semsearch.{version.store_table}",)).fetchone()[0]
        if not self._store_rls[version.store_table]:
            with conn.cursor().copy(sql.SQL(
                    "COPY semsearch.{} (key, chunk, content, embedding, model, content_hash) FROM STDIN (FORMAT BINARY)"
            ).format(store)) as copy:
                copy.set_types(["text", "int4", "text", version.storage, "text", "bytea"])
                for row in rows:
                    copy.write_row(row if version.storage == "vector" else row[:3] + (HalfVector(row[3]),) + row[4:])
            return
        columns = list(zip(*rows))
        conn.execute(sql.SQL(
            "INSERT INTO semsearch.{} (key, chunk, content, embedding, model, content_hash) "
            "SELECT k, c, t, e::vector, m, h FROM unnest(%s::text[], %s::int4[], %s::text[], %s::text[], %s::text[], "
            "%s::bytea[]) AS u(k, c, t, e, m, h)").format(store),
            (list(columns[0]), list(columns[1]), list(columns[2]),
             ["[" + ",".join(map(repr, map(float, v))) + "]" for v in columns[3]], list(columns[4]), list(columns[5])))

    @staticmethod
    def _read_source(conn: psycopg.Connection, ix: IndexSpec, keys: list[str]) -> dict[str, str | None]:
        """The current text of these keys (keys of deleted rows are absent); any primary key type."""
        return dict(conn.execute("SELECT key, content FROM semsearch.read_source(%s, %s)", (ix.id, keys)).fetchall())

    @staticmethod
    def _chunk(embedder: Embedder, version: Version, items: list[Item]) -> list[list[str] | Exception]:
        """Chunk the batch in few tokenizer calls (each over at most TOKENIZE_CHARS characters, which
        bounds memory); item by item if one fails, to find the culprit."""
        groups, size = [[]], 0
        for item in items:
            if groups[-1] and size + len(item.text) > TOKENIZE_CHARS:
                groups.append([])
                size = 0
            groups[-1].append(item)
            size += len(item.text)
        if len(groups) > 1:
            return [chunks for group in groups for chunks in Worker._chunk(embedder, version, group)]
        try:
            return embedder.chunk([i.text for i in items], version.chunk_tokens, version.chunk_overlap)
        except Exception:
            results: list[list[str] | Exception] = []
            for item in items:
                try:
                    results.extend(embedder.chunk([item.text], version.chunk_tokens, version.chunk_overlap))
                except Exception as exc:
                    results.append(exc)
            return results

    def _embed(self, embedder: Embedder, items: list[Item]):
        """Embed all chunks at once; on an error, split the batch to isolate the poison items."""
        vectors: dict[str, list] = {}
        failures: list[tuple[Item, str, bool]] = []
        if not items:
            return vectors, failures
        try:
            flat = embedder.encode([c for i in items for c in i.chunks], batch_size=self.batch_size)
        except (EmbedderUnavailable, ModelUnavailable):
            raise  # the service or its configuration, not these items: the whole batch waits
        except Exception as exc:
            if len(items) == 1:
                failures.append((items[0], f"embedding failed: {exc!r}", False))
                return vectors, failures
            mid = len(items) // 2
            for half in (items[:mid], items[mid:]):
                v, f = self._embed(embedder, half)
                vectors.update(v)
                failures.extend(f)
            return vectors, failures
        start = 0
        for item in items:
            vectors[item.key] = flat[start:start + len(item.chunks)]
            start += len(item.chunks)
        return vectors, failures

    def _record_failure(self, conn, ix: IndexSpec, item: Item, reason: str, permanent: bool) -> None:
        attempts = item.attempts + 1
        if permanent or attempts >= self.max_attempts:
            log.warning("index %s key %s failed after %d attempt(s): %s", ix.name, item.key, attempts, reason)
            conn.execute(
                """INSERT INTO semsearch.failures (index_id, key, error, attempts, first_queued_at)
                   VALUES (%s, %s, %s, %s, %s)
                   ON CONFLICT (index_id, key) DO UPDATE
                   SET error = excluded.error, attempts = excluded.attempts, failed_at = now()""",
                (ix.id, item.key, reason, attempts, item.first_queued_at))
            return
        delay = min(self.retry_base_seconds * 2 ** (attempts - 1), 3600) * random.uniform(0.5, 1.5)
        log.info("index %s key %s failed (attempt %d), retrying in %.1fs: %s", ix.name, item.key, attempts, delay, reason)
        conn.execute(
            """INSERT INTO semsearch.queue (index_id, keys, queued_at, run_after, attempts, last_error)
               VALUES (%s, ARRAY[%s], %s, now() + make_interval(secs => %s), %s, %s)""",
            (ix.id, item.key, item.first_queued_at, delay, attempts, reason))
