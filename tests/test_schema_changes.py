"""Schema changes to indexed tables never make the application's statements fail, and one changed
table never stops install, create_all, the worker or the other indexes."""
import subprocess
import sys
import threading
import time

import psycopg
import pytest
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from semsearch import SearchIndex, SemsearchError, Worker

from .helpers import drain, store_rows
from .models import Base

CLI = [sys.executable, "-m", "semsearch.cli"]


def problem(conn, index):
    return conn.execute("SELECT problem FROM semsearch.status WHERE index_name = %s", (index,)).fetchone()[0]


@pytest.fixture
def two_indexes(engine, conn):
    Base.metadata.create_all(engine)  # articles_search
    conn.execute("CREATE TABLE notes (id int PRIMARY KEY, body text, extra text)")
    conn.execute("SELECT semsearch.create_index('notes_search', 'notes', ARRAY['body', 'extra'])")
    conn.execute("INSERT INTO articles (id, title, body, views) VALUES (1, 'first', 'article', 0)")
    conn.execute("INSERT INTO notes VALUES (1, 'a note', 'more')")
    return engine


def test_dropped_table(two_indexes, db_url, conn, fake_embedder):
    conn.execute("DROP TABLE notes")
    # install, create_all of other models, the CLI and the worker carry on.
    out = subprocess.run(CLI + ["install", "--url", db_url], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr

    class Other(DeclarativeBase):
        pass

    class Thing(Other):
        __tablename__ = "things"
        id: Mapped[int] = mapped_column(primary_key=True)
        name: Mapped[str]
        search = SearchIndex("name")

    Other.metadata.create_all(two_indexes)
    conn.execute("INSERT INTO things VALUES (1, 'thing one')")
    drain(db_url, fake_embedder("all-MiniLM-L6-v2"))
    assert store_rows(conn, "things_search") == {"1": ["thing one"]}
    assert store_rows(conn) == {"1": ["first\n\narticle"]}
    assert "its table was dropped" in problem(conn, "notes_search")
    out = subprocess.run(CLI + ["status", "--url", db_url], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "notes_search: table changed: its table was dropped" in out.stdout, out.stdout
    conn.execute("SELECT semsearch.drop_index('notes_search')")
    assert conn.execute("SELECT count(*) FROM semsearch.indexes WHERE name = 'notes_search'").fetchone() == (0,)
    # Re-creating the table and the index (create_all after a drop) starts afresh.
    conn.execute("CREATE TABLE notes (id int PRIMARY KEY, body text, extra text)")
    conn.execute("SELECT semsearch.create_index('notes_search', 'notes', ARRAY['body'])")
    conn.execute("DROP TABLE notes")
    conn.execute("CREATE TABLE notes (id text PRIMARY KEY, body text)")
    conn.execute("SELECT semsearch.create_index('notes_search', 'notes', ARRAY['body'])")
    conn.execute("INSERT INTO notes VALUES ('x', 'again')")
    drain(db_url, fake_embedder("all-MiniLM-L6-v2"))
    assert store_rows(conn, "notes_search") == {"x": ["again"]}


def test_renamed_columns_are_followed(two_indexes, db_url, conn, fake_embedder):
    drain(db_url, fake_embedder("all-MiniLM-L6-v2"))
    conn.execute("ALTER TABLE notes RENAME COLUMN body TO text_body")
    conn.execute("UPDATE notes SET text_body = 'renamed column'")  # the application's statement succeeds
    conn.execute("ALTER TABLE notes RENAME COLUMN id TO note_id")
    conn.execute("INSERT INTO notes (note_id, text_body) VALUES (2, 'renamed key')")
    conn.execute("DELETE FROM notes WHERE note_id = 1")
    assert problem(conn, "notes_search").startswith("table changed")
    drain(db_url, fake_embedder("all-MiniLM-L6-v2"))
    assert store_rows(conn, "notes_search") == {"2": ["renamed key"]}
    assert problem(conn, "notes_search") is None
    assert conn.execute("SELECT columns::text[], key_columns::text[] FROM semsearch.indexes WHERE name = 'notes_search'"
                        ).fetchone() == (["text_body", "extra"], ["note_id"])
    # After the repair the normal trigger runs again: an update of an unindexed column queues nothing.
    conn.execute("ALTER TABLE notes ADD COLUMN views int")
    conn.execute("UPDATE notes SET views = 1")
    assert conn.execute("SELECT count(*) FROM semsearch.queue").fetchone() == (0,)


def test_a_key_column_renamed_and_unkeyed_still_takes_every_statement(two_indexes, db_url, conn, fake_embedder):
    """The trigger cannot name the keys a statement touched when the table has no primary key: the
    statement still succeeds, the index is flagged, and every row is queued again (a backfill, which
    status shows at once). Once the key is back, the worker embeds each row's current text."""
    conn.execute("INSERT INTO notes SELECT g, 'note ' || g, 'more' FROM generate_series(2, 5) g")
    drain(db_url, fake_embedder("all-MiniLM-L6-v2"))
    assert conn.execute("SELECT backfilling, problem FROM semsearch.status WHERE index_name = 'notes_search'"
                        ).fetchone() == (False, None)
    conn.execute("ALTER TABLE notes RENAME COLUMN id TO note_id")
    conn.execute("ALTER TABLE notes DROP CONSTRAINT notes_pkey")
    with psycopg.connect(db_url, autocommit=True) as app:  # the application's statement succeeds
        assert app.execute("UPDATE notes SET body = 'changed without a key' WHERE note_id IN (2, 4)").rowcount == 2
    assert conn.execute("SELECT body FROM notes WHERE note_id = 2").fetchone() == ("changed without a key",)
    backfilling, flagged = conn.execute("SELECT backfilling, problem FROM semsearch.status "
                                        "WHERE index_name = 'notes_search'").fetchone()
    assert flagged == "table changed: column n.id does not exist", flagged
    assert backfilling, "no key to queue: every row must be asked for again"
    assert store_rows(conn, "notes_search")["2"] == ["note 2\n\nmore"]  # nothing embedded yet
    # The other index is not touched.
    assert conn.execute("SELECT backfilling, problem FROM semsearch.status WHERE index_name = 'articles_search'"
                        ).fetchone() == (False, None)
    conn.execute("ALTER TABLE notes ADD PRIMARY KEY (note_id)")
    drain(db_url, fake_embedder("all-MiniLM-L6-v2"))
    assert store_rows(conn, "notes_search") == {
        "1": ["a note\n\nmore"], "2": ["changed without a key\n\nmore"], "3": ["note 3\n\nmore"],
        "4": ["changed without a key\n\nmore"], "5": ["note 5\n\nmore"]}
    assert conn.execute("SELECT backfilling, problem FROM semsearch.status WHERE index_name = 'notes_search'"
                        ).fetchone() == (False, None)


def test_dropped_column_and_changed_type(two_indexes, db_url, conn, fake_embedder):
    conn.execute("ALTER TABLE notes ALTER COLUMN body TYPE varchar(500)")
    conn.execute("UPDATE notes SET body = 'typed'")
    drain(db_url, fake_embedder("all-MiniLM-L6-v2"))
    assert store_rows(conn, "notes_search") == {"1": ["typed\n\nmore"]}

    conn.execute("ALTER TABLE notes DROP COLUMN extra")
    conn.execute("UPDATE notes SET body = 'after drop'")  # succeeds
    conn.execute("INSERT INTO articles (id, title, body, views) VALUES (2, 'second', 'article', 0)")
    with pytest.raises(SemsearchError, match="notes_search: table changed: an indexed column of public.notes was dropped"):
        drain(db_url, fake_embedder("all-MiniLM-L6-v2"))
    assert store_rows(conn)["2"] == ["second\n\narticle"]  # the other index was served
    conn.execute("""SELECT semsearch.alter_index('notes_search', '{"columns": ["body"]}')""")
    drain(db_url, fake_embedder("all-MiniLM-L6-v2"))
    assert store_rows(conn, "notes_search") == {"1": ["after drop"]}
    assert problem(conn, "notes_search") is None


class SlowEmbedder:
    """Holds a batch's claimed keys for a while, as a slow model would."""

    def __init__(self, fake, started):
        self.fake, self.started = fake, started
        self.name, self.dimensions = fake.name, fake.dimensions

    def chunk(self, *args):
        return self.fake.chunk(*args)

    def encode(self, texts, batch_size=64):
        self.started.set()
        time.sleep(1.0)
        return self.fake.encode(texts, batch_size)


@pytest.mark.parametrize("statement", ["TRUNCATE articles CASCADE", "SELECT semsearch.drop_index('articles_search')"])
def test_truncate_and_drop_index_never_deadlock_with_a_worker(engine, db_url, conn, fake_embedder, statement):
    for attempt in range(5):
        Base.metadata.create_all(engine)
        conn.execute("INSERT INTO articles (id, title, body, views) "
                     "SELECT i, 't' || i, 'b' || i, 0 FROM generate_series(1, 20) i ON CONFLICT DO NOTHING")
        started = threading.Event()
        slow = SlowEmbedder(fake_embedder("all-MiniLM-L6-v2"), started)
        worker = Worker(db_url, poll_interval=0.2, batch_size=8, embedder_factory=lambda m: slow)
        thread = threading.Thread(target=lambda: worker.run(drain=True), daemon=True)
        thread.start()
        assert started.wait(30)
        try:
            with psycopg.connect(db_url, autocommit=True) as app:
                app.execute(statement)  # waits for the worker's batch at most; never DeadlockDetected
        finally:
            worker.stop()
            thread.join(60)
        assert not thread.is_alive()
        if statement.startswith("TRUNCATE"):
            assert store_rows(conn) == {}
            assert conn.execute("SELECT count(*) FROM semsearch.queue").fetchone() == (0,)
        else:
            assert conn.execute("SELECT count(*) FROM semsearch.indexes").fetchone() == (0,)
