"""Shared set-up for the benchmarks: a scratch database and a realistic corpus."""
from __future__ import annotations

import json
import os
import sys
import uuid
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import psycopg
from psycopg import sql

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from semsearch.database import database_url  # noqa: E402

SCIFACT = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "scifact" / "corpus.jsonl"


def corpus(n: int) -> list[tuple[str, str]]:
    """(title, text) pairs: SciFact abstracts when ../shared has them, else stdlib docstrings."""
    if SCIFACT.exists():
        docs = []
        with SCIFACT.open() as f:
            for line in f:
                d = json.loads(line)
                docs.append((d["title"], d["text"]))
                if len(docs) == n:
                    break
        return docs
    from semsearch.demo import stdlib_docstrings

    return [(d["name"], d["doc"]) for d in stdlib_docstrings(n)]


@contextmanager
def scratch_database():
    """A fresh database on SEMSEARCH_DATABASE_URL's server (or the embedded one), dropped afterwards."""
    server = database_url()
    name = f"bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield urlsplit(server)._replace(path="/" + name).geturl()
    finally:
        with psycopg.connect(server, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


class LookupEmbedder:
    """Zero cost: each text starts with its row number, which picks a precomputed vector."""

    revision = ""

    def __init__(self, name: str, vectors: np.ndarray):
        self.name, self.vectors, self.dimensions = name, vectors, vectors.shape[1]

    def chunk(self, texts, chunk_tokens, overlap):
        return [[t] for t in texts]

    def encode(self, texts, batch_size=64):
        return self.vectors[[int(t.split(" ", 1)[0]) for t in texts]]
