"""Every stored vector records the model and revision that made it; an upgraded model (here: a model
folder whose files change) re-embeds each row once, through the `semsearch worker` command."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time

import pytest

from sqlalchemy import create_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from semsearch import SearchIndex
from semsearch.database import sqlalchemy_url
from semsearch.embedders import model_revision, resolve_model_path


def drain_command(db_url):
    out = subprocess.run([sys.executable, "-m", "semsearch.cli", "worker", "--drain"], capture_output=True, text=True,
                         timeout=300, env={**os.environ, "SEMSEARCH_DATABASE_URL": db_url})
    assert out.returncode == 0, out.stderr


def test_an_upgraded_model_re_embeds_each_row_once(db_url, conn, tmp_path):
    # A model folder of its own: the bundled model's files, linked (the weights) or copied (the configuration).
    folder = tmp_path / "model"
    shutil.copytree(resolve_model_path("all-MiniLM-L6-v2"), folder,
                    copy_function=lambda src, dst: os.symlink(src, dst) if src.endswith(".safetensors")
                    else shutil.copy(src, dst))

    class Base(DeclarativeBase):
        pass

    class Note(Base):
        __tablename__ = "revision_notes"
        id: Mapped[int] = mapped_column(primary_key=True)
        body: Mapped[str]
        search = SearchIndex("body", model=str(folder), dimensions=384)

    engine = create_engine(sqlalchemy_url(db_url))
    Base.metadata.create_all(engine)
    with Session(engine) as s:
        s.add_all(Note(id=i, body=f"note number {i} about glaciers") for i in range(1, 21))
        s.commit()
    drain_command(db_url)
    first = model_revision(str(folder))
    stored = lambda: conn.execute(  # noqa: E731
        "SELECT model, count(*), min(embedded_at), max(embedded_at) FROM semsearch.store_revision_notes_search "
        "GROUP BY model").fetchall()
    [(model, count, _, done_at)] = stored()
    assert (model, count) == (f"{folder}@{first}", 20)
    assert conn.execute("SELECT model_revision FROM semsearch.indexes").fetchone() == (first,)

    drain_command(db_url)  # the same revision: nothing to do
    assert stored()[0][3] == done_at

    # The model is upgraded in place (a new release of its package changes its files).
    (folder / "config_sentence_transformers.json").write_text(
        (folder / "config_sentence_transformers.json").read_text().replace("{", '{"release": "2",', 1))
    second = model_revision(str(folder))
    assert second != first
    drain_command(db_url)
    [(model, count, embedded_from, _)] = stored()
    assert (model, count) == (f"{folder}@{second}", 20) and embedded_from > done_at
    assert conn.execute("SELECT count(*) FROM semsearch.queue").fetchone() == (0,)
    assert conn.execute("SELECT count(*) FROM semsearch.failures").fetchone() == (0,)
    engine.dispose()


def test_two_revisions_of_a_model_never_write_one_store(db_url, conn, fake_embedder):
    """Workers with different files of one model (revisions r1 and r2; the model is not the subject, so
    they are fake): while an r1 worker runs, the r2 worker refuses the index with a clear problem; once
    the r1 worker is gone, it takes over and embeds every row once with r2."""
    from semsearch import Worker
    from semsearch.registry import IndexUnusable

    class Base(DeclarativeBase):
        pass

    class Memo(Base):
        __tablename__ = "revision_memos"
        id: Mapped[int] = mapped_column(primary_key=True)
        body: Mapped[str]
        search = SearchIndex("body")

    engine = create_engine(sqlalchemy_url(db_url))
    Base.metadata.create_all(engine)
    with Session(engine) as s:
        s.add_all(Memo(id=i, body=f"memo {i} about the quarterly budget") for i in range(1, 21))
        s.commit()
    old, new = fake_embedder("all-MiniLM-L6-v2"), fake_embedder("all-MiniLM-L6-v2")
    old.revision, new.revision = "r1", "r2"
    stored = lambda: conn.execute(  # noqa: E731
        "SELECT model, count(*) FROM semsearch.store_revision_memos_search GROUP BY model").fetchall()

    running = Worker(db_url, poll_interval=0.2, embedder_factory=lambda model: old)
    thread = threading.Thread(target=running.run)
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while stored() != [("all-MiniLM-L6-v2@r1", 20)]:
            assert time.monotonic() < deadline, stored()
            time.sleep(0.1)
        with pytest.raises(IndexUnusable, match="another worker embeds store_revision_memos_search with model "
                                                "all-MiniLM-L6-v2 at revision r1, this one has revision r2"):
            Worker(db_url, poll_interval=0.2, embedder_factory=lambda model: new).run(drain=True)
        assert new.encoded == []
        assert stored() == [("all-MiniLM-L6-v2@r1", 20)]
        assert "upgrade (or stop) the others" in conn.execute("SELECT problem FROM semsearch.status").fetchone()[0]
    finally:
        running.stop()
        thread.join()

    Worker(db_url, poll_interval=0.2, embedder_factory=lambda model: new).run(drain=True)
    assert stored() == [("all-MiniLM-L6-v2@r2", 20)]
    assert sorted(new.encoded) == sorted(f"memo {i} about the quarterly budget" for i in range(1, 21))
    assert conn.execute("SELECT s.problem, i.model_revision FROM semsearch.status s JOIN semsearch.indexes i "
                        "ON name = index_name").fetchone() == (None, "r2")
    engine.dispose()
