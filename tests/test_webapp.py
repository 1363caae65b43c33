"""examples/webapp as a person uses it: a real uvicorn server over demo data, driven in headless Chromium."""
from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from sqlalchemy import create_engine, insert
from sqlalchemy.orm import Session

from semsearch import Worker
from semsearch.database import sqlalchemy_url
from semsearch.demo import DemoBase, Doc, stdlib_docstrings

REPO = Path(__file__).resolve().parent.parent
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
QUERY = "parse command line options"
# Semantic search also finds optparse ("option parser"), which shares too few words to rank in keyword mode.
EXPECTED = {"hybrid": {"argparse", "getopt", "optparse"}, "semantic": {"argparse", "getopt", "optparse"},
            "keyword": {"argparse", "getopt"}}


@pytest.fixture
def demo_db(db_url):
    """The demo's table with its first 300 docstrings (the stdlib modules, then members), embedded."""
    engine = create_engine(sqlalchemy_url(db_url))
    DemoBase.metadata.create_all(engine)
    with Session(engine) as session:
        session.execute(insert(Doc), stdlib_docstrings(300))
        session.commit()
    engine.dispose()
    Worker(db_url).run(drain=True)
    return db_url


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def server(demo_db, tmp_path):
    """`uvicorn examples.webapp.app:app` as the README runs it; yields its base URL."""
    port = free_port()
    log = tmp_path / "uvicorn.log"
    env = {**os.environ, "SEMSEARCH_DATABASE_URL": demo_db, "HF_HUB_OFFLINE": "1"}
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "examples.webapp.app:app", "--host", "127.0.0.1",
             "--port", str(port)], cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_serving(base, process, log)
        yield base
    finally:
        process.terminate()
        process.wait(timeout=30)


def wait_until_serving(base: str, process: subprocess.Popen, log: Path, timeout: float = 120) -> None:
    """uvicorn listens only after the lifespan has loaded the model, so the first answer means ready."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"uvicorn exited with {process.returncode}:\n{log.read_text()}")
        try:
            with urllib.request.urlopen(base + "/", timeout=5):
                return
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.3)
    pytest.fail(f"uvicorn did not answer within {timeout:.0f}s:\n{log.read_text()}")


@pytest.fixture
def page():
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: `apt-get install -y chromium` (.ci/run installs it)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser.new_page(viewport={"width": 1100, "height": 900})
        browser.close()


def search(page, query: str, mode: str) -> list[tuple[str, float]]:
    """Type the query, pick the mode, submit; the (name, score) results as the page shows them."""
    page.fill("input[name=q]", query)
    page.check(f"input[name=mode][value={mode}]")
    with page.expect_navigation():
        page.click("button[type=submit]")
    assert page.input_value("input[name=q]") == query
    assert page.is_checked(f"input[name=mode][value={mode}]")
    results = []
    for item in page.locator("li.result").all():
        score = item.locator(".score").inner_text()
        assert re.fullmatch(r"\d+\.\d{4}", score), f"score shown as {score!r}"
        assert item.locator(".snippet").inner_text().strip()
        results.append((item.locator(".name").inner_text(), float(score)))
    return results


def test_search_page_in_headless_chromium(server, page, tmp_path):
    page.goto(server)
    assert page.locator("li.result").count() == 0
    assert page.is_checked("input[name=mode][value=hybrid]")

    results_by_mode = {}
    for mode, expected in EXPECTED.items():
        results = results_by_mode[mode] = search(page, QUERY, mode)
        names = [name for name, _ in results]
        assert len(results) == 10, (mode, names)
        assert expected <= set(names), (mode, names)
        scores = [score for _, score in results]
        assert scores == sorted(scores, reverse=True), (mode, scores)
        assert f"mode={mode}" in page.url
        screenshot = tmp_path / f"search-{mode}.png"
        page.screenshot(path=screenshot, full_page=True)
        assert screenshot.read_bytes().startswith(b"\x89PNG") and screenshot.stat().st_size > 10_000
    # Each mode reaches the server: the three rankings (names and scores) differ.
    assert len({tuple(results) for results in results_by_mode.values()}) == 3

    argparse = page.locator("li.result", has=page.locator(".name", has_text=re.compile("^argparse$")))
    assert "command-line" in argparse.locator(".snippet").inner_text()

    # Snippets mark the query's words, stems included ("options" marks "option" too), and nothing else.
    search(page, "parsing options", "keyword")
    marks = [m.inner_text().lower() for m in page.locator(".snippet mark").all()]
    assert marks and all(m.startswith(("pars", "option")) for m in marks), marks

    # "similar" leads to the rows most like a result, from its stored vectors, without the result itself.
    first = page.locator("li.result").first
    name = first.locator(".name").inner_text()
    with page.expect_navigation():
        first.locator("a.similar").click()
    assert re.search(r"/similar/\d+$", page.url)
    assert name in page.locator(".summary").inner_text()
    similar = [item.locator(".name").inner_text() for item in page.locator("li.result").all()]
    assert len(similar) == 10 and name not in similar, similar
    scores = [float(s.inner_text()) for s in page.locator(".score").all()]
    assert scores == sorted(scores, reverse=True) and scores[0] < 1.0 + 1e-6

    # Keyword search matches words only: a word no docstring has finds nothing.
    assert search(page, "zqxjvw", "keyword") == []
    assert "No keyword results" in page.locator(".empty").inner_text()

    # The query is shown back escaped, never as markup.
    markup = '<b id="injected">options</b>'
    search(page, markup, "keyword")
    assert page.locator("#injected").count() == 0
    assert markup in page.locator(".summary").inner_text()
