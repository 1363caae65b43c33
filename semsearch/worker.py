"""The worker: claims queued rows, reads their current text, embeds it, writes the store.

Driven by the registry in the database (semsearch.indexes), so it needs only a database URL.
Each batch is one transaction: claim (FOR UPDATE SKIP LOCKED) -> per-key advisory lock -> absorb
duplicate queue rows -> read the source rows as they are now -> embed -> replace their chunks in
the store -> commit (semsearch.batches). A crash rolls everything back and the queue rows reappear;
the advisory lock means two workers never embed the same key at once, so an older text can never
overwrite a newer one. Each index's model is loaded and checked in semsearch.index_models, a new
version is built between batches (semsearch.versions); this module runs the loop around them: lanes,
NOTIFY wake-ups, backfills, and indexes that wait (a problem, an embedding service that is down).
concurrency=N runs N lanes (threads with their own connections and transactions) sharing one model,
so N batches are in flight: with a remote embedding service each lane mostly waits on the network,
and N lanes keep it N times busier. Keys stay exact because each lane claims its own queue rows
(SKIP LOCKED) and holds its keys' advisory locks, as separate workers do. With a local model on a
machine that also runs the database the lanes compete for the same cores, so the default is one.
"""
from __future__ import annotations

import logging
import os
import random
import time
import threading
from typing import Callable

import psycopg
from pgvector.psycopg import register_vector
from psycopg.rows import namedtuple_row

from .batches import BatchWriter
from .database import connect, database_url
from .embedders import Embedder, get_embedder
from .errors import DatabaseUnavailable, EmbedderUnavailable, ModelUnavailable, SemsearchError, UnknownIndex, server_message
from .index_models import IndexModels
from .registry import IndexSpec, IndexUnusable, RegistryChanged, load_indexes
from .schema import installed_version, require_installed
from .versions import VersionBuilder

log = logging.getLogger("semsearch.worker")

NOTIFY_CHANNEL = "semsearch"
WORKER_APPLICATION = "semsearch worker"  # its lanes' application_name, so that others can tell one runs
UNUSABLE_RETRY_SECONDS = 60
OUTAGE_FIRST_WAIT, OUTAGE_LONGEST_WAIT = 1.0, 60.0  # seconds between tries of an embedding service that is down
# Connection errors of a server that will accept connections soon (SQLSTATE 57P03 and friends).
TRANSIENT_SERVER_STATES = ("the database system is starting up", "the database system is shutting down",
                           "the database system is in recovery mode", "the database system is not yet accepting")


def run_threads(threads: list[threading.Thread]) -> None:
    """Start the threads and wait for them in short joins, so that the main thread still takes signals."""
    for t in threads:
        t.start()
    for t in threads:
        while t.is_alive():
            t.join(0.02)


class Worker(BatchWriter, IndexModels, VersionBuilder):
    """Embeds queued rows until stopped (or, with drain=True, until the queue is empty)."""

    def __init__(
        self,
        url: str | None = None,
        *,
        indexes: list[str] | None = None,
        batch_size: int = 64,
        concurrency: int = 1,
        poll_interval: float = 5.0,
        max_attempts: int = 5,
        retry_base_seconds: float = 2.0,
        max_chunks: int = 1000,
        max_text_chars: int = 2_000_000,
        build_rows: int = 5000,
        wait_for_database: float = 30.0,
        require_named_indexes: bool = True,
        embedder_factory: Callable[[str], Embedder] = get_embedder,
        on_progress: Callable[[int], None] | None = None,
        on_queued: Callable[[int], None] | None = None,
    ):
        if concurrency < 1:
            raise ValueError(f"concurrency must be 1 or more, not {concurrency}")
        self.url = url or database_url()
        self.index_names = indexes
        self.batch_size = batch_size
        self.concurrency = concurrency
        self.poll_interval = poll_interval
        self.max_attempts = max_attempts
        self.retry_base_seconds = retry_base_seconds
        self.max_chunks = max_chunks
        self.max_text_chars = max_text_chars  # longer texts are refused before tokenizing (memory bound)
        self.build_rows = build_rows  # most rows per step of a new version's build (see semsearch.versions)
        self.wait_for_database = wait_for_database
        # A name in `indexes` that this database lacks is an error (a typo), unless another database
        # served by the same process has it (semsearch.service).
        self.require_named_indexes = require_named_indexes
        self.embedder_factory = embedder_factory
        self.on_progress = on_progress  # called with the number of keys each batch settled
        self.on_queued = on_queued  # called with the keys queued when it starts, then with each backfill step's
        self._counted_queue = False
        self._count_lock = threading.Lock()
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

    def reset(self) -> None:
        """Make a worker that stopped on an error ready to run again (semsearch.service retries a database)."""
        self._stop.clear()
        self._errors.clear()

    def run(self, drain: bool = False) -> None:
        threads = [threading.Thread(target=self._lane, args=(drain,), name=f"semsearch-lane-{i}", daemon=True)
                   for i in range(self.concurrency)]
        listener = threading.Thread(target=self._listen, name="semsearch-listen", daemon=True)
        listener.start()
        try:
            run_threads(threads)
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
        backoff, listened = 0.5, False
        while not self._stop.is_set():
            try:
                with connect(self.url, autocommit=True) as conn:
                    conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
                    backoff, listened = 0.5, True
                    self._notify()  # anything queued while we were not listening
                    while not self._stop.is_set():
                        for _ in conn.notifies(timeout=0.1, stop_after=1):
                            self._notify()
            except Exception as exc:  # the lanes report real errors; here we only retry
                if self._stop.is_set():
                    return
                # A database not reached yet is the lanes' to report; a lost connection is news.
                (log.warning if listened else log.debug)("listener lost its connection (%s); reconnecting in %.1fs",
                                                         exc, backoff)
                self._sleep(backoff)
                backoff = min(backoff * 2, 30)

    def _lane(self, drain: bool) -> None:
        backoff, connected_once, started = 0.5, False, time.monotonic()
        while not self._stop.is_set():
            try:
                with connect(self.url, application_name=f"{WORKER_APPLICATION} pid {os.getpid()}") as conn:
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
        waiting = announced = False
        conn.execute("DELETE FROM semsearch.listeners l WHERE NOT EXISTS "
                     "(SELECT 1 FROM pg_stat_activity a WHERE a.pid = l.pid)")  # left by killed workers
        conn.commit()
        while not self._stop.is_set():
            seen = self._generation
            if indexes is None:  # (re)read the registry when idle, not on every batch
                indexes = load_indexes(conn, self.index_names)
                conn.commit()
                if not announced:
                    self._check_named_indexes(conn, indexes)
                    self._count_queue(conn, indexes)
                    log.info("worker serving %s in database %s", ", ".join(ix.name for ix in indexes) or
                             "no index yet (it picks new ones up as they are created)", conn.info.dbname)
                    announced = True
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

    def _check_named_indexes(self, conn: psycopg.Connection, indexes: list[IndexSpec]) -> None:
        """A misspelled --index would otherwise wait for work that never comes: fail with the error
        semsearch.lookup_index gives (what exists is in `semsearch status`)."""
        if not self.require_named_indexes:
            return
        for name in sorted(set(self.index_names or ()) - {ix.name for ix in indexes}):
            try:
                conn.execute("SELECT semsearch.lookup_index(%s)", (name,))
            except psycopg.errors.RaiseException as exc:
                conn.rollback()
                raise UnknownIndex(server_message(exc)) from None
            conn.rollback()  # created since the registry was read: it is served from the next read

    def _count_queue(self, conn: psycopg.Connection, indexes: list[IndexSpec]) -> None:
        """Tell on_queued, once per worker, how many rows wait in the queue as it starts."""
        with self._count_lock:
            if self.on_queued is None or self._counted_queue:
                return
            self._counted_queue = True
            count = conn.execute("SELECT count(DISTINCT (q.index_id, k)) FROM semsearch.queue q, unnest(q.keys) k "
                                 "WHERE q.index_id = ANY(%s)", ([ix.id for ix in indexes],)).fetchone()[0]
            conn.commit()
        if count:
            self.on_queued(count)

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
