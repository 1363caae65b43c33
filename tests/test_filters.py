"""filter= with filters of every size, in every mode, through the ORM.

README: "filter= takes any condition on the model, for semantic, keyword and hybrid. semsearch passes the
keys of the matching rows to the SQL functions (filter_keys): the semantic arm keeps scanning the HNSW
graph until enough of them turn up (pgvector's iterative index scans), or scores a short list (up to 500
keys) exactly; the keyword arm scores exactly the matching rows that contain the query's terms."

Each arm has a plan for a short key list (500 keys at most: exact scoring) and one for a long list (the
HNSW graph; the keyword arm's plan 'all' over the terms' postings), so the filters here match 1 and 40
rows (short list) and 501 and 1,000 of 2,000 rows (long list). The long ones are where a plan that drops
the filter shows: the 1,000 "south" rows hold few of the query's words and lie away from the query's
vector, so an unfiltered search would answer with other rows. Every returned row must match the filter
(and, for keyword search, contain a query term, as the syntax reads it), and the full limit must come
back: min(limit, rows that can match).

The last test is the semantic arm's long-list path on its own: 606 matching rows among 20,000 (3%),
above the short list, so HNSW serves it, and only an iterative scan (which keeps scanning the graph
until enough matching rows turn up) finds 50 of them near the query.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import psycopg
import pytest
from sqlalchemy import create_engine, select, text
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from semsearch import SearchIndex
from semsearch.database import sqlalchemy_url
from semsearch.options import EXACT_FILTER_KEYS

from .topic_corpus import (PHRASE, TOPIC_NAMES, WordVectorEmbedder, document, hnsw_scans_during, load,
                           scratch_database, words_of)

EMBEDDER = WordVectorEmbedder("word-vectors", dimensions=32)
LIMIT = 20


class PostsBase(DeclarativeBase):
    pass


class Post(PostsBase):
    __tablename__ = "posts"
    id: Mapped[int] = mapped_column(primary_key=True)
    tenant: Mapped[int]
    region: Mapped[str]
    title: Mapped[str]
    body: Mapped[str]
    search = SearchIndex("title", "body", model="word-vectors", dimensions=32)


# Row 1234 (a gardening row otherwise) matches every query below, so the one-row filter has its row.
SPECIAL = {1234: ("Solar flare over the observatory",
                  "The telescope tracked the orbit of a planet during the solar flare, says the report.")}


def post_rows():
    """2,000 rows on ten topics (topic = id % 10). tenant: 50 tenants of 40 rows, each spread over every
    topic. region: the first five topics (astronomy, which the queries ask for, among them) are "north",
    the other five "south"."""
    for i in range(1, 2001):
        title, body = SPECIAL.get(i) or document(i, TOPIC_NAMES[i % 10])
        yield i, (i // 10) % 50, "north" if i % 10 < 5 else "south", title, body


FILTERS = {
    "1 row": (Post.id == 1234, 1),
    "40 rows": (Post.tenant == 7, 40),
    "501 rows": (Post.id <= 501, 501),  # just over the short list
    "1,000 rows away from the query": (Post.region == "south", 1000),
    "1,000 of 2,000, every other tenant": (Post.tenant % 2 == 0, 1000),  # half of each topic
}
assert sorted(size for _, size in FILTERS.values())[2] > EXACT_FILTER_KEYS  # two short lists, three long ones

# The query vector: astronomy's, as a model would place "telescope orbit comet galaxy".
VECTOR = EMBEDDER.encode(["telescope orbit comet galaxy"])[0]


def contains_phrase(words: list[str]) -> bool:
    return any(tuple(words[i:i + 2]) == PHRASE for i in range(len(words) - 1))


@dataclass(frozen=True)
class Mode:
    query: Callable[[Any, int], Any]  # (filter condition, limit) -> the ORM select
    can_match: Callable[[list[str]], bool]  # a row's words -> whether this search may return it


ANY_ROW = lambda words: True  # noqa: E731  (semantic and hybrid search: every embedded row)

MODES = {
    "semantic": Mode(lambda f, n: Post.search.semantic(vector=VECTOR, limit=n, filter=f), ANY_ROW),
    "keyword or": Mode(lambda f, n: Post.search.keyword("telescope orbit report", limit=n, filter=f),
                       lambda w: bool({"telescope", "orbit", "report"} & set(w))),
    "keyword phrase": Mode(lambda f, n: Post.search.keyword("solar flare", limit=n, syntax="phrase", filter=f),
                           contains_phrase),
    "keyword websearch": Mode(lambda f, n: Post.search.keyword('"solar flare" or telescope -comet', limit=n,
                                                               syntax="websearch", filter=f),
                              # ('solar' <-> 'flare' | 'telescop' & !'comet': AND binds first)
                              lambda w: contains_phrase(w) or ("telescope" in w and "comet" not in w)),
    "keyword prefix": Mode(lambda f, n: Post.search.keyword("tele orbi", limit=n, syntax="prefix", filter=f),
                           lambda w: any(x.startswith(("tele", "orbi")) for x in w)),
    "hybrid": Mode(lambda f, n: Post.search.hybrid("telescope orbit report", vector=VECTOR, limit=n, filter=f), ANY_ROW),
    "hybrid rrf": Mode(lambda f, n: Post.search.hybrid("telescope orbit report", vector=VECTOR, limit=n, filter=f,
                                                       fusion="rrf"), ANY_ROW),
    "hybrid phrase": Mode(lambda f, n: Post.search.hybrid("solar flare", vector=VECTOR, limit=n, filter=f,
                                                          keyword_syntax="phrase"), ANY_ROW),
}


@dataclass
class Corpus:
    url: str
    engine: Any
    words: dict[int, list[str]]


@pytest.fixture(scope="module")
def posts(server_url):
    with scratch_database(server_url) as url:
        engine = create_engine(sqlalchemy_url(url))
        rows = list(post_rows())
        load(url, engine, Post, rows, EMBEDDER)
        yield Corpus(url, engine, {i: words_of(f"{title}\n{body}") for i, _, _, title, body in rows})
        engine.dispose()


def test_the_queries_find_rows_outside_every_long_filter(posts):
    """The corpus does its job: unfiltered, each search's best rows include rows outside each long filter,
    so a plan that dropped the filter would return them."""
    with Session(posts.engine) as session:
        for mode in MODES.values():
            best = {p.id for p, _ in session.execute(mode.query(None, LIMIT))}
            for condition, size in FILTERS.values():
                if size > EXACT_FILTER_KEYS:
                    assert best - set(session.scalars(select(Post.id).where(condition)))


@pytest.mark.parametrize("filter_name", FILTERS)
@pytest.mark.parametrize("mode_name", MODES)
def test_filter_returns_only_matching_rows_and_the_full_limit(posts, mode_name, filter_name):
    mode, (condition, size) = MODES[mode_name], FILTERS[filter_name]
    with Session(posts.engine) as session:
        matching = set(session.scalars(select(Post.id).where(condition)))
        assert len(matching) == size
        can_match = {i for i in matching if mode.can_match(posts.words[i])}
        rows = session.execute(mode.query(condition, LIMIT)).all()
    ids = [p.id for p, _ in rows]
    outside = [i for i in ids if i not in matching]
    assert not outside, f"{len(outside)} of {len(ids)} rows do not match the filter: {outside[:10]}"
    assert set(ids) <= can_match, f"rows without the query's terms: {sorted(set(ids) - can_match)[:10]}"
    assert len(set(ids)) == len(ids)
    assert len(ids) == min(LIMIT, len(can_match)), f"{len(ids)} rows of {min(LIMIT, len(can_match))}"
    scores = [score for _, score in rows]
    assert scores == sorted(scores, reverse=True)


# --- the semantic arm's long-list path: HNSW with iterative scans --------------------------------------

class MessagesBase(DeclarativeBase):
    pass


class Message(MessagesBase):
    __tablename__ = "messages"
    id: Mapped[int] = mapped_column(primary_key=True)
    flagged: Mapped[bool]
    title: Mapped[str]
    body: Mapped[str]
    # (a lighter graph than the default m=16, ef_construction=64: it builds over 20,000 rows in 2 s, not 6)
    search = SearchIndex("title", "body", model="word-vectors", dimensions=32, hnsw_m=8, hnsw_ef_construction=32)


MESSAGES = 20_000
FLAGGED = 33  # every 33rd message: 606 rows, 3%, spread over every topic


@pytest.fixture(scope="module")
def messages(server_url):
    with scratch_database(server_url) as url:
        engine = create_engine(sqlalchemy_url(url))
        load(url, engine, Message,
             [(i, i % FLAGGED == 0, *document(i, TOPIC_NAMES[i % 10])) for i in range(1, MESSAGES + 1)], EMBEDDER)
        yield Corpus(url, engine, {})
        engine.dispose()


def test_a_rare_filter_over_the_short_list_gets_its_full_limit_from_hnsw(messages):
    """606 matching rows of 20,000: too many for the short list, so the HNSW index serves the search, and
    only 3% of the rows near the query match. A graph scan that stops after its ef_search candidates (at
    most 1,000) finds a few of them (4, with iterative scans off); an iterative scan keeps going until it
    has 50."""
    with Session(messages.engine) as session:
        flagged = set(session.scalars(select(Message.id).where(Message.flagged)))
    assert len(flagged) == MESSAGES // FLAGGED > EXACT_FILTER_KEYS
    ids = []

    def search():
        with Session(messages.engine) as session:
            session.execute(text("SELECT pg_stat_force_next_flush()"))  # (PostgreSQL 15+)
            ids.extend(m.id for m, _ in session.execute(Message.search.semantic(vector=VECTOR, limit=50,
                                                                                filter=Message.flagged)))
            session.commit()

    scanned = hnsw_scans_during(messages.url, "store_messages_search", search)
    assert len(ids) == 50 and set(ids) <= flagged, f"{len(ids)} rows, {len(set(ids) - flagged)} not flagged"
    # It went through the HNSW index: a plan that scored the 606 rows exactly would prove nothing here.
    assert scanned > 0
    # The SQL function, as raw-SQL users call it, likewise.
    with psycopg.connect(messages.url, autocommit=True) as conn:
        keys = [int(k) for (k,) in conn.execute(
            "SELECT key FROM semsearch.semantic_search('messages_search', %s::vector, 50, "
            "ARRAY(SELECT id::text FROM messages WHERE flagged))", (str(VECTOR.tolist()),))]
    assert len(keys) == 50 and set(keys) <= flagged
