"""Workers run as a process runs them (`semsearch worker`, the demo): one Worker per database, all
sharing each loaded model (semsearch.embedders' cache), SIGTERM/SIGINT handling, a progress bar while
draining, and an exit status that scripts can test.

Each database gets its own thread, so each gets its turns whatever the others hold in their queues;
a database that is down, or whose worker fails, is retried (or, when draining, reported at the end)
while the others go on.
"""
from __future__ import annotations

import logging
import signal
import sys
import threading
from dataclasses import dataclass, field
from typing import Any

import psycopg

from .database import connect, redact
from .errors import SemsearchError, server_message
from .worker import Worker, run_threads

log = logging.getLogger("semsearch.worker")

RETRY_FAILED_DATABASE_SECONDS = 30.0


def progress_bar(total: int, label: str) -> Any:
    """A tqdm bar on stderr: redrawn as it moves on a terminal, every 5 s off one."""
    from tqdm import tqdm

    tty = sys.stderr.isatty()
    return tqdm(total=total, desc=label, unit="rows", file=sys.stderr, ascii=not tty, mininterval=0.1 if tty else 5)


@dataclass
class Outcome:
    """How a run of workers ended."""

    settled: int = 0  # rows embedded, keyword-indexed, removed or failed
    signal: int | None = None  # the SIGTERM/SIGINT that stopped it
    errors: dict[str, BaseException] = field(default_factory=dict)  # database (redacted URL) -> why it stopped

    @property
    def exit_status(self) -> int:
        """0, 2 when a database's work could not be done, 128 + the signal's number when interrupted."""
        if self.errors:
            return 2
        return 128 + self.signal if self.signal else 0


def run_workers(workers: list[Worker], *, drain: bool, show_progress: bool) -> Outcome:
    """Run the workers until SIGTERM/SIGINT (or, with drain, until every queue is empty).

    With one worker its failure ends the run, as it always did. With several, a failing database is
    logged and retried after RETRY_FAILED_DATABASE_SECONDS (when draining: reported once the others are
    done), so one database that is down never stops the others."""
    outcome = Outcome()
    lock = threading.Lock()  # workers and their lanes report from their own threads
    stopping = threading.Event()
    bar = None  # made when there is work to show: a run that fails at once prints no empty bar

    def shown() -> Any:
        nonlocal bar
        if bar is None and show_progress:
            bar = progress_bar(0, "processing")
        return bar

    def settled(n: int) -> None:
        with lock:
            outcome.settled += n
            if shown() is not None:
                bar.update(n)

    def queued(n: int) -> None:  # rows waiting at the start, and rows a backfill queues while we run
        with lock:
            if shown() is not None:
                bar.total += n
                bar.refresh()

    for worker in workers:
        worker.on_progress = settled
        worker.on_queued = queued

    def stop(signum: int, frame: object) -> None:
        log.info("received %s: finishing the current batch", signal.Signals(signum).name)
        outcome.signal = outcome.signal or signum
        stopping.set()
        for worker in workers:
            worker.stop()

    previous = {}  # the handlers to put back when the run ends (the demo, an application's own script)
    if threading.current_thread() is threading.main_thread():
        previous = {signum: signal.signal(signum, stop) for signum in (signal.SIGTERM, signal.SIGINT)}

    def serve(worker: Worker) -> None:
        label = redact(worker.url)
        while True:
            try:
                worker.run(drain=drain)
                return
            except BaseException as exc:  # noqa: BLE001 - reported, and retried where the others go on
                if len(workers) == 1 or drain or stopping.is_set():
                    outcome.errors[label] = exc
                    return
                log.error("database %s: %s; trying again in %.0fs (the other databases go on)", label,
                          _describe(exc), RETRY_FAILED_DATABASE_SECONDS)
                if stopping.wait(RETRY_FAILED_DATABASE_SECONDS):
                    return
                worker.reset()

    threads = [threading.Thread(target=serve, args=(w,), name=f"semsearch-db-{i}", daemon=True)
               for i, w in enumerate(workers)]
    try:
        run_threads(threads)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if bar is not None:
            bar.close()
    return outcome


def _describe(exc: BaseException) -> str:
    if isinstance(exc, psycopg.Error):
        return server_message(exc)
    return str(exc).strip() or type(exc).__name__


def report(outcome: Outcome, several: bool) -> None:
    """Each database's error as one `semsearch: error:` paragraph on stderr."""
    for label, exc in outcome.errors.items():
        where = f" (database {label})" if several else ""
        kind = "database error" if isinstance(exc, psycopg.Error) else "error"
        print(f"semsearch: {kind}{where}: {_describe(exc)}", file=sys.stderr)


def check_index_names(urls: list[str], names: list[str]) -> None:
    """With several databases, a named index must exist in at least one that answers: a typo fails at
    once instead of waiting for work that never comes. Databases that are down are not asked."""
    found: set[str] = set()
    asked = 0
    for url in urls:
        try:
            with connect(url, connect_timeout=5) as conn:
                if conn.execute("SELECT to_regclass('semsearch.indexes') IS NOT NULL").fetchone()[0]:
                    found.update(r[0] for r in conn.execute("SELECT name FROM semsearch.indexes WHERE name = ANY(%s)",
                                                             (names,)))
                asked += 1
        except (SemsearchError, psycopg.Error):
            continue
    missing = [name for name in names if name not in found]
    if missing and asked == len(urls):
        raise SemsearchError(f"semsearch index {', '.join(repr(n) for n in missing)} does not exist in any of the "
                             f"{len(urls)} databases; `semsearch status` lists the existing ones")
