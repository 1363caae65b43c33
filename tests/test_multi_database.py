"""One `semsearch worker` process serves several databases: a Flask-SQLAlchemy app's default database and
its `__bind_key__` bind, with one model load, turns for each, and a database that is down stopping none."""
import os
import signal
import subprocess
import sys
import time

import psycopg
import pytest
from psycopg import sql

from semsearch import SearchIndex
from semsearch.database import sqlalchemy_url


CLI = [sys.executable, "-m", "semsearch.cli"]


@pytest.fixture
def flask_app(db_url, second_db_url):
    """An app whose Note lives in the default database and whose Archived lives in the "archive" bind."""
    from flask import Flask
    from flask_sqlalchemy import SQLAlchemy

    app = Flask(__name__)
    app.config["SQLALCHEMY_DATABASE_URI"] = sqlalchemy_url(db_url)
    app.config["SQLALCHEMY_BINDS"] = {"archive": sqlalchemy_url(second_db_url)}
    db = SQLAlchemy(app)

    class Note(db.Model):
        id = db.Column(db.Integer, primary_key=True)
        text = db.Column(db.Text, nullable=False)
        search = SearchIndex("text")

    class Archived(db.Model):
        __bind_key__ = "archive"
        id = db.Column(db.Integer, primary_key=True)
        text = db.Column(db.Text, nullable=False)
        search = SearchIndex("text")

    topics = ["tide pools hold anemones and crabs", "the printer jams on double-sided pages",
              "sourdough needs a long cold proof", "the VPN drops every hour"]
    with app.app_context():
        db.create_all()
        db.session.add_all(Note(id=i, text=f"{topics[i % 4]} (note {i})") for i in range(1, 301))
        db.session.add_all(Archived(id=i, text=f"{topics[(i + 1) % 4]} (archived {i})") for i in range(1, 301))
        db.session.commit()
        yield app, db, Note, Archived
        db.session.remove()
        for engine in db.engines.values():
            engine.dispose()


def _embedded(url: str, index: str) -> tuple[int, object, object]:
    with psycopg.connect(url) as conn:
        return conn.execute(sql.SQL("SELECT count(DISTINCT key), min(embedded_at), max(embedded_at) FROM semsearch.{}")
                            .format(sql.Identifier(f"store_{index}"))).fetchone()


def test_one_worker_process_indexes_the_default_database_and_the_bind(flask_app, db_url, second_db_url):
    app, db, Note, Archived = flask_app
    out = subprocess.run(CLI + ["worker", "--drain", "--batch-size", "16", "--url", db_url, "--url", second_db_url],
                         capture_output=True, text=True, timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert out.returncode == 0, out.stderr
    assert out.stderr.count("loading embedding model all-MiniLM-L6-v2") == 1, out.stderr  # one model load
    notes, bind = _embedded(db_url, "note_search"), _embedded(second_db_url, "archived_search")
    assert notes[0] == bind[0] == 300
    assert notes[1] < bind[2] and bind[1] < notes[2], "one database waited for the other's whole queue"
    with app.app_context():
        assert "tide pools" in db.session.execute(Note.search.hybrid("crabs in rock pools", limit=1)).one()[0].text
        assert "tide pools" in db.session.execute(Archived.search.hybrid("crabs in rock pools", limit=1)).one()[0].text

    status = subprocess.run(CLI + ["status", "--url", db_url, "--url", second_db_url], capture_output=True, text=True,
                            timeout=120)
    assert status.returncode == 0, status.stderr
    assert "note_search" in status.stdout and "archived_search" in status.stdout
    assert status.stdout.count("database postgresql://") == 2


def test_a_database_that_is_down_stops_none_of_the_others(flask_app, db_url, second_db_url, tmp_path):
    down = f"postgresql://nobody@/nowhere?host={tmp_path}"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "SEMSEARCH_DATABASE_URLS": f"{db_url} {down} {second_db_url}"}
    drained = subprocess.run(CLI + ["worker", "--drain", "--wait-for-database", "1"], capture_output=True, text=True,
                             timeout=600, env=env)
    assert drained.returncode == 2, drained.stderr
    assert "(database postgresql://nobody@/nowhere" in drained.stderr and "cannot connect" in drained.stderr
    assert _embedded(db_url, "note_search")[0] == _embedded(second_db_url, "archived_search")[0] == 300

    status = subprocess.run(CLI + ["status"], capture_output=True, text=True, timeout=120, env=env)
    assert status.returncode == 2
    assert "cannot read it: cannot connect" in status.stdout
    assert "note_search" in status.stdout and "archived_search" in status.stdout

    # A running worker keeps serving the others while one database is down, and stops cleanly on SIGTERM.
    app, db, Note, Archived = flask_app
    worker = subprocess.Popen(CLI + ["worker", "--poll-interval", "0.5", "--wait-for-database", "1"], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(3)
        with app.app_context():
            db.session.add(Note(id=1000, text="a brand new note about glaciers"))
            db.session.add(Archived(id=1000, text="an archived note about volcanoes"))
            db.session.commit()
        deadline = time.monotonic() + 60
        while (_embedded(db_url, "note_search")[0], _embedded(second_db_url, "archived_search")[0]) != (301, 301):
            assert worker.poll() is None and time.monotonic() < deadline, worker.stderr.read()
            time.sleep(0.3)
        worker.send_signal(signal.SIGTERM)
        _, err = worker.communicate(timeout=60)
    finally:
        worker.kill()
    assert worker.returncode == 0, err
    assert "nowhere" in err and "the other databases go on" in err
