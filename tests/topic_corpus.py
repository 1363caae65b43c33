"""A corpus for the filter and HNSW tests: generated sentences on ten topics, and an embedder that places
texts the way a real model roughly does: a text's vector is the sum of its words' vectors, and a topic's
words lie near that topic's own direction, so texts on one topic form a cluster as real embeddings do
(HNSW on uniformly random vectors degenerates, and would prove little about the index). Deterministic
and fast: 20,000 rows embed in well under a second. Also a module's own database, and the bulk load."""
from __future__ import annotations

import hashlib
import random
import re
import time
import uuid
from contextlib import contextmanager
from urllib.parse import urlsplit

import numpy as np
import psycopg
from psycopg import sql

from .helpers import drain

TOPICS = {
    "astronomy": "telescope orbit comet galaxy nebula planet asteroid eclipse meteor crater observatory satellite",
    "cooking": "oven recipe flour garlic butter skillet dough pepper simmer onion basil pastry",
    "sailing": "harbor anchor mast keel rudder tide sailor regatta buoy hull voyage dinghy",
    "finance": "invoice ledger payroll budget audit dividend mortgage loan interest auditor revenue bond",
    "gardening": "tomato compost seedling hedge shovel mulch orchard tulip fertilizer greenhouse soil weed",
    "medicine": "vaccine surgeon fever clinic nurse dosage symptom antibiotic patient diagnosis ward tablet",
    "music": "violin chord melody orchestra rhythm drummer guitar tempo choir concert piano lyric",
    "computing": "compiler kernel database server router packet firewall debugger laptop keyboard cache thread",
    "geology": "glacier basalt fossil quarry sediment magma volcano granite canyon boulder mineral erosion",
    "football": "goalkeeper referee stadium penalty striker midfield tackle league trophy coach dribble whistle",
}
COMMON = "report update summary meeting question answer morning evening weekend project office team note plan"
# A fixed two-word phrase, for the keyword arm's phrase syntax: "solar flare" is astronomy's, but either
# word also occurs on its own elsewhere.
PHRASE = ("solar", "flare")

TOPIC_NAMES = list(TOPICS)
TOPIC_WORDS = {topic: words.split() for topic, words in TOPICS.items()}
COMMON_WORDS = COMMON.split()


def _unit(seed_text: str, dimensions: int) -> np.ndarray:
    seed = int.from_bytes(hashlib.sha256(seed_text.encode()).digest()[:8], "little")
    v = np.random.default_rng(seed).standard_normal(dimensions)
    return v / np.linalg.norm(v)


class WordVectorEmbedder:
    """The worker's embedder protocol (chunk, encode): each text is one chunk, and its vector is the sum
    of its words' vectors (a topic word: its topic's direction plus a smaller one of its own; any other
    word: a small direction of its own)."""

    def __init__(self, name: str = "word-vectors", dimensions: int = 32):
        self.name = name
        self.dimensions = dimensions
        self._words: dict[str, np.ndarray] = {}
        for topic, words in TOPIC_WORDS.items():
            centre = _unit("topic " + topic, dimensions)
            for word in words:
                self._words[word] = centre + 0.45 * _unit("word " + word, dimensions)
        for word in COMMON_WORDS:
            self._words[word] = 0.3 * _unit("word " + word, dimensions)
        for word in PHRASE:  # (astronomy's, wherever they occur)
            self._words[word] = 0.8 * _unit("topic astronomy", dimensions)

    def chunk(self, texts, chunk_tokens, overlap):
        return [[text] for text in texts]

    def encode(self, texts, batch_size=64):
        out = np.empty((len(texts), self.dimensions), dtype=np.float32)
        for i, text in enumerate(texts):
            words = [w for w in words_of(text) if w in self._words]
            v = sum((self._words[w] for w in words), np.zeros(self.dimensions))
            # (a little of the text's own direction: two texts of the same words are still two points)
            v = v + 0.05 * _unit("text " + text, self.dimensions)
            out[i] = v / np.linalg.norm(v)
        return out


def sentence(rng: random.Random, topic: str, words: int) -> list[str]:
    """Mostly the topic's words, some common ones, now and then another topic's (and the phrase's words,
    as the phrase or apart)."""
    out: list[str] = []
    while len(out) < words:
        r = rng.random()
        if r < 0.65:
            out.append(rng.choice(TOPIC_WORDS[topic]))
        elif r < 0.85:
            out.append(rng.choice(COMMON_WORDS))
        elif r < 0.97:
            out.append(rng.choice(TOPIC_WORDS[rng.choice(TOPIC_NAMES)]))
        elif r < 0.985 or topic != "astronomy":
            out.append(rng.choice(PHRASE))
        else:
            out.extend(PHRASE)
    return out


def document(i: int, topic: str) -> tuple[str, str]:
    """(title, body) of row i: a title of three words and a body of 8 to 16 words, on `topic`."""
    rng = random.Random(i)
    title = sentence(rng, topic, 3)[:3]
    body = sentence(rng, topic, rng.randint(8, 16))
    return " ".join(title).capitalize(), " ".join(body).capitalize() + "."


def words_of(text: str) -> list[str]:
    return re.findall(r"[a-z]+", text.lower())


@contextmanager
def scratch_database(server_url: str):
    """A fresh database for a module's corpus (the `db_url` fixture is one test's), dropped after."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield urlsplit(server_url)._replace(path="/" + name).geturl()
    finally:
        with psycopg.connect(server_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def load(url: str, engine, model_class, rows, embedder: WordVectorEmbedder) -> None:
    """The table with its rows first (COPY), then its search index: the store fills in bulk and its HNSW
    index is built once at the end, as on an application's existing table. Returns when the worker is
    through and the HNSW index serves."""
    table = model_class.__table__
    table.create(engine)
    columns = [c.name for c in table.columns]
    with psycopg.connect(url, autocommit=True) as conn:
        with conn.cursor().copy(sql.SQL("COPY {} ({}) FROM STDIN").format(
                sql.Identifier(table.name), sql.SQL(", ").join(map(sql.Identifier, columns)))) as copy:
            for row in rows:
                copy.write_row(row)
    model_class.metadata.create_all(engine)
    drain(url, embedder, batch_size=2000)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("ANALYZE")
        index = model_class.search.name
        store, pending = conn.execute("SELECT store_table, hnsw_pending FROM semsearch.indexes WHERE name = %s",
                                      (index,)).fetchone()
        assert not pending and conn.execute("SELECT to_regclass(%s)", (f"semsearch.{store}_hnsw",)).fetchone()[0]
        assert conn.execute(sql.SQL("SELECT count(*) FROM semsearch.{}").format(sql.Identifier(store))
                            ).fetchone()[0] == len(rows)


def scans(url: str, store_table: str) -> tuple[int, int]:
    """(idx_scan of the store's HNSW index, all scans of the store table: sequential and by any index), as
    the statistics hold them now (read in a transaction of its own)."""
    with psycopg.connect(url, autocommit=True) as conn:
        return conn.execute(
            "SELECT coalesce((SELECT idx_scan FROM pg_stat_user_indexes WHERE schemaname = 'semsearch' "
            "                 AND indexrelname = %s), 0), "
            "       coalesce((SELECT seq_scan + coalesce(idx_scan, 0) FROM pg_stat_user_tables "
            "                 WHERE schemaname = 'semsearch' AND relname = %s), 0)",
            (f"{store_table}_hnsw", store_table)).fetchone()


def hnsw_scans_during(url: str, store_table: str, search) -> int:
    """How many times the store's HNSW index was scanned while search() ran. search() must end its
    transaction after `SELECT pg_stat_force_next_flush()` and its query, in that transaction: the backend
    then sends its statistics as it goes idle. They are read once they show the store was read at all
    (polled, with a deadline: the statistics arrive asynchronously), so a search that read the store
    without its HNSW index reads as 0 at once, not after a timeout."""
    hnsw_before, store_before = scans(url, store_table)
    search()
    deadline = time.monotonic() + 10
    while True:
        hnsw, store = scans(url, store_table)
        if store > store_before or time.monotonic() > deadline:
            assert store > store_before, "the search's statistics never arrived"
            return hnsw - hnsw_before
        time.sleep(0.05)
