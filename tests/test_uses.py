"""The uses beyond search, through the public API on real text and the real model: passages with
offsets, highlights and MMR; similar and recommend; near-duplicates; outliers; clusters written for SQL;
the SQL functions through psql and the CLI as a subprocess. Abstracts: SciFact from ../shared, else
docstrings; 300 of them with injected near-copies serve most tests, 2,000 with 20 off-topic texts the
outliers and clusters."""
import json
import random
import subprocess
import sys
import uuid
from itertools import combinations
from urllib.parse import urlsplit

import psycopg
import pytest
from psycopg import sql
from sqlalchemy import String, Text, create_engine, text
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from semsearch import SearchIndex
from semsearch.database import sqlalchemy_url
from semsearch.errors import InvalidQuery

from .helpers import drain
from .psql import psql
from .uses_corpus import COPY_KINDS, OFF_TOPIC, abstracts, near_copy

CLI = [sys.executable, "-m", "semsearch.cli"]
ABSTRACTS = 2000
ORIGINALS = range(101, 109)  # ids of the abstracts that get near-copies (one of each kind)
COPY_BASE = 10_000           # copies: COPY_BASE + original * 10 + kind number
OFF_BASE = 20_000            # off-topic texts: OFF_BASE + 1 ... 20
BREAD = 30_000


class Base(DeclarativeBase):
    pass


class Paper(Base):
    __tablename__ = "papers"
    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str] = mapped_column(String)
    body: Mapped[str | None] = mapped_column(Text)
    search = SearchIndex("title", "body")


def _database(server_url: str, abstracts_wanted: int, copies: bool):
    """A database of the first abstracts, the off-topic texts and the bread recipe, with near-copies of
    ORIGINALS if asked, embedded by a real worker. Yields (url, engine)."""
    name = f"t_uses_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = urlsplit(server_url)._replace(path="/" + name).geturl()
    engine = create_engine(sqlalchemy_url(url))
    Base.metadata.create_all(engine)
    rng = random.Random(7)
    docs = abstracts(abstracts_wanted)
    with Session(engine) as session:
        session.add_all(Paper(id=i, title=t, body=b) for i, (t, b) in enumerate(docs, 1))
        for original in ORIGINALS if copies else ():
            title, body = docs[original - 1]
            session.add_all(Paper(id=COPY_BASE + original * 10 + n, title=title, body=near_copy(body, kind, rng))
                            for n, kind in enumerate(COPY_KINDS))
        session.add_all(Paper(id=OFF_BASE + n, title=t, body=b) for n, (t, b) in enumerate(OFF_TOPIC, 1))
        session.add(Paper(id=BREAD, title="Baking at home", body="How to bake sourdough bread: the baking takes 40 "
                                                                 "minutes in a hot oven."))
        session.commit()
    drain(url, timeout=900)
    yield url, engine
    engine.dispose()
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture(scope="module")
def papers(server_url):
    """300 abstracts with near-copies, for the uses that need no big corpus (quick to build again under
    each of `make proof`'s mutations)."""
    yield from _database(server_url, 300, copies=True)


@pytest.fixture(scope="module")
def corpus_2000(server_url):
    """2,000 abstracts among which the off-topic texts must stand out (outliers, clusters)."""
    yield from _database(server_url, ABSTRACTS, copies=False)


def groups_of_copies():
    return [{original} | {COPY_BASE + original * 10 + n for n in range(len(COPY_KINDS))} for original in ORIGINALS]


def test_passages_rank_chunks_with_their_place_in_the_text(papers):
    url, engine = papers
    with Session(engine) as session:
        rows = session.execute(Paper.search.passages("vitamin D deficiency and sunlight", limit=8)).all()
        assert len(rows) == 8 and [r.score for r in rows] == sorted((r.score for r in rows), reverse=True)
        for paper, passage, score, chunk_index, start, end in rows:
            assert (paper.title + "\n\n" + (paper.body or ""))[start:end] == passage
        # per_document caps one row's passages; chunk_index tells them apart
        capped = session.execute(Paper.search.passages("vitamin D deficiency and sunlight", limit=8,
                                                       per_document=1)).all()
        assert len({r[0].id for r in capped}) == 8
        many = [r for r in rows if sum(x[0].id == r[0].id for x in rows) > 1]
        assert many, "no row gave two passages: per_document is not tested"
        assert len({(r[0].id, r.chunk_index) for r in rows}) == len(rows)


def test_passage_keyword_arm_ranks_the_words_of_the_chunk(papers):
    _, engine = papers
    with Session(engine) as session:
        rows = session.execute(Paper.search.passages("bake", limit=3, mode="keyword", highlight=True)).all()
        assert rows[0][0].id == BREAD
        assert "<mark>baking</mark>" in rows[0].passage and "<mark>bake</mark>" in rows[0].passage  # stems match
        custom = session.execute(Paper.search.passages("bake", limit=1, mode="keyword", highlight=True,
                                                       start_tag="[", stop_tag="]")).one()
        assert "[baking]" in custom.passage
        semantic = session.execute(Paper.search.passages("how long does sourdough need in the oven", limit=1,
                                                         mode="semantic")).one()
        assert semantic[0].id == BREAD


def test_mmr_spreads_passages_over_rows(papers):
    _, engine = papers
    with Session(engine) as session:
        title = session.get(Paper, ORIGINALS[0]).title
        plain = [r[0].id for r in session.execute(Paper.search.passages(title, limit=5, per_document=1))]
        diverse = [r[0].id for r in session.execute(Paper.search.passages(title, limit=5, per_document=1, mmr=0.3))]
        copies = groups_of_copies()[0]
        assert len(set(plain) & copies) >= 4, plain  # the copies crowd the plain ranking
        assert len(set(diverse) & copies) <= 2, diverse
        hybrid = [a.id for a, _ in session.execute(Paper.search.hybrid(title, limit=5, mmr=0.3))]
        assert len(set(hybrid) & copies) <= 2, hybrid
        semantic = [a.id for a, _ in session.execute(Paper.search.semantic(title, limit=5, mmr=0.3))]
        assert len(set(semantic) & copies) <= 2, semantic
        with pytest.raises(InvalidQuery, match="mmr"):
            Paper.search.semantic("x", mmr=1.5)


def test_similar_and_recommend_use_stored_vectors(papers, monkeypatch):
    _, engine = papers
    import semsearch.query

    def no_model(*args, **kwargs):
        raise AssertionError("similar and recommend must not embed anything")

    monkeypatch.setattr(semsearch.query, "embed_for_search", no_model)
    original = ORIGINALS[1]
    with Session(engine) as session:
        rows = session.execute(Paper.search.similar(original, limit=5)).all()
        assert original not in [p.id for p, _ in rows]
        assert {p.id for p, _ in rows} == groups_of_copies()[1] - {original}
        paper = session.get(Paper, original)
        assert [p.id for p, _ in session.execute(Paper.search.similar(paper, limit=5))] == [p.id for p, _ in rows]
        # a recipe history recommends recipes, never a given row
        liked = [OFF_BASE + 1, OFF_BASE + 4]
        recs = [p.id for p, _ in session.execute(Paper.search.recommend(liked, [OFF_BASE + 11], limit=5))]
        assert not set(recs) & {*liked, OFF_BASE + 11}
        assert sum(OFF_BASE < r <= OFF_BASE + 10 or r == BREAD for r in recs) >= 4, recs
        sports = [p.id for p, _ in session.execute(Paper.search.recommend([OFF_BASE + 11, OFF_BASE + 12], limit=5))]
        assert sum(OFF_BASE + 10 < r <= OFF_BASE + 20 for r in sports) >= 4, sports
        with pytest.raises(InvalidQuery, match="no row with key 99999"):
            session.execute(Paper.search.similar(99999)).all()
        session.rollback()
        with pytest.raises(InvalidQuery, match="'abc' is not a id of papers"):
            Paper.search.similar("abc")
        assert [p.id for p, _ in session.execute(Paper.search.similar(str(original), limit=5))] == [p.id for p, _ in rows]


def test_near_duplicates_found_through_the_index(papers):
    _, engine = papers
    with Session(engine) as session:
        groups = Paper.search.duplicates(0.9, session=session)
    truth = {frozenset(p) for g in groups_of_copies() for p in combinations(sorted(g), 2)}
    found = {frozenset(p[:2]) for g in groups for p in g.pairs}
    injected = set().union(*groups_of_copies())
    judged = {p for p in found if p & injected}  # (pairs among the corpus's own rows are not judged)
    precision = len(judged & truth) / max(len(judged), 1)
    recall = len(found & truth) / len(truth)
    print(f"near-duplicates: precision {precision:.3f}, recall {recall:.3f}, {len(groups)} groups")
    assert precision >= 0.95 and recall >= 0.95
    assert [len(g) for g in groups] == sorted((len(g) for g in groups), reverse=True)
    for group in groups:
        assert all(0.9 <= s <= 1.0 + 1e-9 for *_, s in group.pairs)
        assert len({frozenset(p[:2]) for p in group.pairs}) == len(group.pairs)  # each pair once
    with pytest.raises(InvalidQuery, match="threshold"):
        Paper.search.duplicates(0, session=engine)
    with pytest.raises(InvalidQuery, match="threshold"):
        Paper.search.duplicates(1.5, session=engine)


def test_off_topic_texts_are_the_outliers(corpus_2000):
    _, engine = corpus_2000
    with Session(engine) as session:
        top = [p.id for p, _ in session.execute(Paper.search.outliers(25))]
    off_topic = {OFF_BASE + n for n in range(1, 21)}
    assert len(off_topic & set(top)) == 20, sorted(off_topic - set(top))


def test_clusters_keep_off_topic_texts_apart_and_join_in_sql(corpus_2000):
    _, engine = corpus_2000
    off_topic = {OFF_BASE + n for n in range(1, 21)}
    with Session(engine) as session:
        # HDBSCAN finds the recipes and the sports reports as clusters of their own
        found = Paper.search.clusters(method="hdbscan", session=session)
        holding = [c for c in found if set(c.keys) & off_topic]
        assert set().union(*(set(c.keys) for c in holding)) >= off_topic
        for cluster in holding:
            assert len(set(cluster.keys) & (off_topic | {BREAD})) / cluster.size >= 0.9, (cluster.keywords, cluster.size)
        # k-means gives every row a cluster: the off-topic texts share one or two, with their words as keywords
        found = Paper.search.clusters(20, session=session, table="paper_clusters")
        session.commit()
        assert len(found) == 20 and sum(c.size for c in found) == len(found.assignment) == ABSTRACTS + len(OFF_TOPIC) + 1
        holding = [c for c in found if set(c.keys) & off_topic]
        assert len(holding) <= 2, [(c.size, c.keywords) for c in holding]
        assert all(c.keywords and c.central for c in found)
        counts = dict(session.execute(text("SELECT cluster, count(*) FROM paper_clusters GROUP BY cluster")).all())
        assert counts == {c.label: c.size for c in found}
        joined = session.execute(text("SELECT count(*) FROM papers p JOIN paper_clusters c USING (id)")).scalar()
        assert joined == len(found.assignment)
        with pytest.raises(InvalidQuery, match="k must be"):
            Paper.search.clusters(1, session=session, table="not_written")
        with pytest.raises(InvalidQuery, match="k must be"):
            Paper.search.clusters(10**6, session=session)
        assert session.execute(text("SELECT to_regclass('not_written')")).scalar() is None
        # A table clusters() did not write is never replaced; one it wrote is.
        with pytest.raises(InvalidQuery, match="table papers exists and clusters\\(\\) did not write it"):
            Paper.search.clusters(3, session=session, table="papers")
        session.rollback()
        assert session.execute(text("SELECT count(*) FROM papers")).scalar() == len(found.assignment)
        again = Paper.search.clusters(3, session=session, table="paper_clusters")
        session.commit()
        assert session.execute(text("SELECT count(DISTINCT cluster) FROM paper_clusters")).scalar() == len(again)


def test_sql_functions_in_psql(papers):
    url, _ = papers
    out = psql(url, "-At", "-c", f"SELECT key FROM semsearch.similar('papers_search', '{ORIGINALS[2]}', 5)")
    assert out.returncode == 0, out.stderr
    assert {int(k) for k in out.stdout.split()} == groups_of_copies()[2] - {ORIGINALS[2]}
    out = psql(url, "-At", "-c", f"SELECT key_a, key_b FROM semsearch.near_duplicates('papers_search', 0.9) "
                                 f"WHERE key_a = '{ORIGINALS[3]}'")
    assert out.returncode == 0, out.stderr
    assert {int(line.split("|")[1]) for line in out.stdout.split()} == groups_of_copies()[3] - {ORIGINALS[3]}
    out = psql(url, "-At", "-c", "SELECT semsearch.highlight('papers_search', 'bake', 'Baking bread')")
    assert out.stdout.strip() == "<mark>Baking</mark> bread"
    out = psql(url, "-At", "-c", f"SELECT key FROM semsearch.recommend('papers_search', ARRAY['{OFF_BASE + 2}'], "
                                 "'{}', 3)")
    assert out.returncode == 0 and str(OFF_BASE + 2) not in out.stdout.split()
    out = psql(url, "-At", "-c", "SELECT semsearch.similar('papers_search', 'nope', 3)")
    assert out.returncode != 0 and 'no row with key nope' in out.stderr


def test_cli(papers):
    url, _ = papers
    out = subprocess.run(CLI + ["similar", "papers_search", str(ORIGINALS[4]), "--limit", "5", "--url", url],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert {int(l.split("key=")[1].split()[0]) for l in out.stdout.splitlines()[1:]} == \
        groups_of_copies()[4] - {ORIGINALS[4]}
    out = subprocess.run(CLI + ["duplicates", "papers_search", "--threshold", "0.9", "--json", "--url", url],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    groups = json.loads(out.stdout)
    assert {frozenset(int(k) for k in g["keys"]) for g in groups} >= {frozenset(g) for g in groups_of_copies()}
    assert "probing papers_search" in out.stderr  # the progress bar
    out = subprocess.run(CLI + ["outliers", "papers_search", "--limit", "25", "--url", url],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    # batched for its progress bar, the CLI ranks as the SQL function does in one call
    listed = [l.split("key=")[1].split()[0] for l in out.stdout.splitlines()]
    with psycopg.connect(url) as conn:
        assert listed == [k for k, in conn.execute("SELECT key FROM semsearch.outliers('papers_search', 25)")]
    assert sum(int(k) > OFF_BASE for k in listed) >= 10
    out = subprocess.run(CLI + ["clusters", "papers_search", "-k", "5", "--url", url],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert len(out.stdout.splitlines()) == 5
    out = subprocess.run(CLI + ["duplicates", "papers_search", "--threshold", "2", "--url", url],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode != 0 and "threshold must be" in out.stderr
