"""The ONNX Runtime embedder (int8), driven as users run it: an index declared with
model="onnx:all-MiniLM-L6-v2", `semsearch worker --drain` as a process, ORM searches."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
from sqlalchemy import Text, create_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from semsearch import SearchIndex
from semsearch.database import sqlalchemy_url
from semsearch.embedders import forget_embedder, get_embedder

NOTES = ["The printer jams on double-sided pages.", "The VPN drops every hour when working from home.",
         "I cannot reset my password: the email never arrives.", "My laptop battery drains in two hours.",
         "Glaciers retreat faster in warm summers.", "Sourdough needs a lively starter and patience."]


def test_an_onnx_index_embeds_and_searches_like_torch(db_url, conn, tmp_path, monkeypatch):
    monkeypatch.setenv("SEMSEARCH_ONNX_CACHE", str(tmp_path / "onnx"))
    forget_embedder("onnx:all-MiniLM-L6-v2")

    class Base(DeclarativeBase):
        pass

    class Note(Base):
        __tablename__ = "onnx_notes"
        id: Mapped[int] = mapped_column(primary_key=True)
        body: Mapped[str] = mapped_column(Text)
        search = SearchIndex("body", model="onnx:all-MiniLM-L6-v2")  # dimensions known: 384

    engine = create_engine(sqlalchemy_url(db_url))
    Base.metadata.create_all(engine)
    with Session(engine) as s:
        s.add_all(Note(id=i, body=text) for i, text in enumerate(NOTES, 1))
        s.commit()
    out = subprocess.run([sys.executable, "-m", "semsearch.cli", "worker", "--drain"], capture_output=True, text=True,
                         timeout=600, env={**os.environ, "SEMSEARCH_DATABASE_URL": db_url,
                                           "SEMSEARCH_ONNX_CACHE": str(tmp_path / "onnx")})
    assert out.returncode == 0, out.stderr
    assert list((tmp_path / "onnx").glob("*.onnx")), "the quantised model is cached"

    rows = conn.execute("SELECT key::int, embedding::real[], model FROM semsearch.store_onnx_notes_search "
                        "ORDER BY key::int").fetchall()
    assert [r[0] for r in rows] == list(range(1, len(NOTES) + 1))
    assert all(r[2].endswith("-int8-eager") for r in rows)  # onnx:all-MiniLM-L6-v2@<revision>-int8-eager
    stored = np.array([r[1] for r in rows], dtype=np.float32)
    torch_vectors = get_embedder("all-MiniLM-L6-v2").encode(NOTES)
    assert (stored * torch_vectors).sum(1).min() > 0.98  # int8, close to the float model

    with Session(engine) as s:
        [(best, _)] = s.execute(Note.search.semantic("my printer keeps jamming", limit=1)).all()
        assert best.id == 1
        ranked = [n.id for n, _ in s.execute(Note.search.hybrid("ice melting in the mountains", limit=3))]
        assert ranked[0] == 5
    engine.dispose()
