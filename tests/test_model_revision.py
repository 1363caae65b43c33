"""Every stored vector records the model and revision that made it; an upgraded model (here: a model
folder whose files change) re-embeds each row once, through the `semsearch worker` command."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

from sqlalchemy import create_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from semsearch import SearchIndex
from semsearch.database import sqlalchemy_url
from semsearch.embedder import model_revision, resolve_model_path


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
