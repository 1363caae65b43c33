"""Every Python and shell block of the README runs as a user pastes it, each in a fresh database.

A Python block runs as a script of its own. The line before a block may hold a marker:
- `<!-- readme-test: continues "HEADING" -->`: the block runs after the blocks under that heading, as
  one script (the README says so above the block);
- `<!-- readme-test: fragment of PATH -->`: the block shows lines of a complete file, which this test
  checks line by line and runs (an example script, or the Alembic example project with alembic/env.py);
- `<!-- readme-test: serve MODULE:APP GET PATH -->`: the block is a web application, served by uvicorn
  and asked for PATH;
- `<!-- readme-test: skip "COMMAND" -->`: a shell block's line that this test does not run.
Shell blocks run with `set -e` in a database where the "Use it" example has run, the roles `app` and
`worker` exist, and a `semsearch worker` is running.
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
MARKER = re.compile(r"<!-- readme-test: (.*?) -->")


@dataclass(frozen=True)
class Block:
    lang: str
    code: str
    heading: str
    line: int
    marker: str | None

    @property
    def id(self) -> str:
        return f"{self.lang}:{self.line}:{self.heading}"


def readme_blocks() -> list[Block]:
    lines = (REPO / "README.md").read_text().splitlines()
    blocks, heading, i = [], "", 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("#"):
            heading = line.lstrip("#").strip()
        fence = re.fullmatch(r"```(\w*)", line)
        if fence:
            end = lines.index("```", i + 1)
            marker = MARKER.fullmatch(lines[i - 1].strip()) if i else None
            blocks.append(Block(fence.group(1), "\n".join(lines[i + 1:end]) + "\n", heading, i + 1,
                                marker.group(1) if marker else None))
            i = end
        i += 1
    return blocks


BLOCKS = readme_blocks()
PYTHON = [b for b in BLOCKS if b.lang == "python"]
SHELL = [b for b in BLOCKS if b.lang in ("sh", "bash", "shell")]


def env_for(db_url: str) -> dict[str, str]:
    return {**os.environ, "SEMSEARCH_DATABASE_URL": db_url, "HF_HUB_OFFLINE": "1",
            "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}


def run_python(code: str, db_url: str, cwd: Path, name: str = "example.py") -> subprocess.CompletedProcess:
    script = cwd / name
    script.write_text(code)
    out = subprocess.run([sys.executable, str(script)], cwd=cwd, env=env_for(db_url), capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, f"{name} exited {out.returncode}:\n{out.stdout}\n{out.stderr}"
    return out


def code_lines(text: str) -> list[str]:
    """A fragment's lines as code, without comments, blank lines and the `...` that stand for the rest."""
    lines = (re.sub(r"\s+#.*$", "", line).strip() for line in text.splitlines())
    return [line for line in lines if line and "..." not in line and not line.startswith("#")]


def test_the_readme_has_python_and_shell_blocks_and_every_marker_is_known():
    assert len(PYTHON) >= 8 and len(SHELL) >= 3
    for block in BLOCKS:
        if block.marker:
            assert re.match(r'(continues "[^"]+"|fragment of \S+|serve \S+:\S+ GET \S+|skip "[^"]+")',
                            block.marker), block


@pytest.mark.parametrize("block", PYTHON, ids=[b.id for b in PYTHON])
def test_python_block_runs(block, db_url, tmp_path):
    marker = block.marker or ""
    if marker.startswith("fragment of "):
        path = REPO / marker.removeprefix("fragment of ")
        complete = code_lines(path.read_text())
        missing = [line for line in code_lines(block.code) if line not in complete]
        assert not missing, f"README lines (line {block.line}) that {path.name} lacks: {missing}"
        if path.parts[-2:] == ("alembic", "env.py") or "examples/alembic" in str(path):
            run_alembic_example(db_url, tmp_path)
        else:
            out = run_python(path.read_text(), db_url, tmp_path, path.name)
            assert "Traceback" not in out.stderr
        return
    if marker.startswith("serve "):
        _, app, _, path = marker.split()
        serve_and_get(block.code, app, path, db_url, tmp_path)
        return
    code = block.code
    if marker.startswith("continues "):
        earlier = marker.removeprefix("continues ").strip('"')
        code = "".join(b.code for b in PYTHON if b.heading == earlier and b.line < block.line) + code
    run_python(code, db_url, tmp_path)


def run_alembic_example(db_url: str, project: Path) -> None:
    """The Alembic example project: `alembic init`, alembic/env.py, examples/alembic's models and revision."""
    from semsearch.database import sqlalchemy_url

    env = {**env_for(db_url), "DATABASE_URL": sqlalchemy_url(db_url), "PYTHONPATH": str(project)}

    def alembic(*args: str) -> str:
        out = subprocess.run([sys.executable, "-m", "alembic", *args], cwd=project, env=env, capture_output=True,
                             text=True, timeout=300)
        assert out.returncode == 0, f"alembic {' '.join(args)}:\n{out.stdout}\n{out.stderr}"
        return out.stdout + out.stderr

    alembic("init", "migrations")
    shutil.copy(REPO / "alembic" / "env.py", project / "migrations" / "env.py")
    shutil.copytree(REPO / "examples" / "alembic" / "myapp", project / "myapp")
    shutil.copy(REPO / "examples" / "alembic" / "versions" / "0001_articles.py", project / "migrations" / "versions")
    alembic("upgrade", "head")
    with psycopg.connect(db_url) as conn:
        assert conn.execute("SELECT chunk_tokens, hnsw_m FROM semsearch.indexes WHERE name = 'articles_search'"
                            ).fetchone() == (128, 24)
    assert "No new upgrade operations detected" in alembic("check")
    alembic("downgrade", "base")
    with psycopg.connect(db_url) as conn:
        assert conn.execute("SELECT count(*) FROM semsearch.indexes").fetchone() == (0,)


def serve_and_get(code: str, app: str, path: str, db_url: str, cwd: Path) -> None:
    module = app.split(":")[0]
    (cwd / f"{module}.py").write_text(code)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([str(BIN / "uvicorn"), app, "--port", str(port)], cwd=cwd, env=env_for(db_url),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 180
        while True:
            assert server.poll() is None, server.stdout.read()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=60) as response:
                    assert response.status == 200
                    body = response.read().decode()
                    break
            except OSError:
                assert time.monotonic() < deadline, "the application never answered"
                time.sleep(0.5)
        assert body.startswith("["), body
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)


@pytest.fixture
def shell_database(db_url, server_url, tmp_path):
    """A database where the "Use it" example has run, roles app and worker exist and a worker runs."""
    with psycopg.connect(server_url, autocommit=True) as conn:
        for role in ("app", "worker"):
            if not conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone():
                conn.execute(f"CREATE ROLE {role} LOGIN")
    run_python(next(b for b in PYTHON if b.heading == "Use it").code, db_url, tmp_path)
    worker = subprocess.Popen([str(BIN / "semsearch"), "worker", "--poll-interval", "0.5"], env=env_for(db_url),
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    yield db_url
    worker.send_signal(signal.SIGTERM)
    _, err = worker.communicate(timeout=120)
    assert worker.returncode == 0, err


@pytest.mark.parametrize("block", SHELL, ids=[b.id for b in SHELL])
def test_shell_block_runs(block, shell_database, tmp_path):
    lines = block.code.splitlines()
    if block.marker and block.marker.startswith("skip "):
        skipped = block.marker.split('"')[1]
        assert any(line.startswith(skipped) for line in lines), f"nothing to skip in line {block.line}: {skipped}"
        lines = [line for line in lines if not line.startswith(skipped)]
    out = subprocess.run(["bash", "-euo", "pipefail", "-c", "\n".join(lines)], cwd=REPO, env=env_for(shell_database),
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, f"README line {block.line}:\n{out.stdout}\n{out.stderr}"
