"""The keyword arm's BM25, its freshness apart from the model, filters inside the arms, fusion, and the
plans each arm runs."""
import math
import statistics
from collections import Counter
from datetime import date

import psycopg
import pytest
from pgvector.psycopg import register_vector
from sqlalchemy import Date, Text, create_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from semsearch import SearchIndex, SemsearchError
from semsearch.database import sqlalchemy_url

from .helpers import drain
from .models import Article, Base


class NotesBase(DeclarativeBase):
    pass


class Note(NotesBase):
    __tablename__ = "notes"
    id: Mapped[int] = mapped_column(primary_key=True)
    tenant: Mapped[int]
    title: Mapped[str]
    body: Mapped[str]
    search = SearchIndex("title", "body", weights={"title": 3.0}, bm25_k1=1.2, bm25_b=0.75)


class Visit(NotesBase):
    __tablename__ = "visits"
    region: Mapped[str] = mapped_column(Text, primary_key=True)
    day: Mapped[date] = mapped_column(Date, primary_key=True)
    notes: Mapped[str]
    search = SearchIndex("notes")


WORDS = ["glacier", "valley", "river", "erosion", "sediment", "delta", "basin", "ridge", "moraine", "fjord"]


def note_rows(n: int):
    for i in range(1, n + 1):
        body = " ".join(WORDS[(i * j) % len(WORDS)] for j in range(1, 2 + i % 17))
        yield i, i % 100, f"{WORDS[i % len(WORDS)]} report {i}", body


def reference_bm25(conn, query: str) -> dict[str, float]:
    """BM25F computed here from the rows themselves (PostgreSQL only tokenizes): title weight 3, k1 1.2, b 0.75."""
    docs = {}
    for key, title, body in conn.execute("SELECT id::text, title, body FROM notes"):
        tf = Counter()
        for text, weight in ((title, 3.0), (body, 1.0)):
            for lexeme, count in conn.execute("SELECT lexeme, cardinality(positions) FROM unnest(to_tsvector('english', %s))",
                                              (text,)):
                tf[lexeme] += weight * count
        docs[key] = tf
    n = len(docs)
    avgdl = sum(sum(tf.values()) for tf in docs.values()) / n
    terms = {r[0] for r in conn.execute("SELECT unnest(tsvector_to_array(to_tsvector('english', %s)))", (query,))}
    scores = {}
    for key, tf in docs.items():
        dl = sum(tf.values())
        score = 0.0
        for term in terms & set(tf):
            df = sum(1 for other in docs.values() if term in other)
            idf = math.log(1 + (n - df + 0.5) / (df + 0.5))
            score += idf * tf[term] * 2.2 / (tf[term] + 1.2 * (0.25 + 0.75 * dl / avgdl))
        if score:
            scores[key] = score
    return scores


@pytest.fixture
def notes(db_url, fake_embedder):
    engine = create_engine(sqlalchemy_url(db_url))
    NotesBase.metadata.create_all(engine)
    with Session(engine) as s:
        s.add_all(Note(id=i, tenant=t, title=ti, body=b) for i, t, ti, b in note_rows(400))
        s.commit()
    drain(db_url, fake_embedder("all-MiniLM-L6-v2"))
    yield engine
    engine.dispose()


def test_bm25_matches_a_reference_and_stays_exact_as_rows_change(notes, conn, db_url, fake_embedder):
    def check(query):
        expected = reference_bm25(conn, query)
        got = dict(conn.execute("SELECT key, score FROM semsearch.keyword_search('notes_search', %s, 1000)",
                                (query,)).fetchall())
        assert got.keys() == expected.keys()
        for key, score in expected.items():
            assert got[key] == pytest.approx(score, rel=1e-4), key
        with Session(notes) as s:  # the ORM: the same best scores (rows with equal scores may differ)
            assert [score for _, score in s.execute(Note.search.keyword(query, limit=10))] == \
                pytest.approx(sorted(expected.values(), reverse=True)[:10], rel=1e-4)

    check("glacier erosion in the fjord")
    check("moraine")
    # Updates, deletes and inserts: statistics (document count, lengths, document frequencies) follow.
    conn.execute("UPDATE notes SET body = 'moraine moraine moraine delta' WHERE id BETWEEN 1 AND 40")
    conn.execute("DELETE FROM notes WHERE id BETWEEN 300 AND 350")
    conn.execute("INSERT INTO notes (id, tenant, title, body) VALUES (1000, 1, 'fjord fjord', 'a short note')")
    drain(db_url, fake_embedder("all-MiniLM-L6-v2"))
    check("glacier erosion in the fjord")
    check("moraine delta")
    assert conn.execute(
        "SELECT count(*) FROM (SELECT term, sum(df) AS df FROM semsearch.store_notes_search_terms GROUP BY term) t "
        "FULL JOIN (SELECT term, count(*) AS df FROM semsearch.store_notes_search_postings GROUP BY term) p USING (term) "
        "WHERE coalesce(t.df, 0) <> coalesce(p.df, 0)").fetchone() == (0,)
    assert conn.execute("SELECT sum(docs) FROM semsearch.store_notes_search_stats").fetchone() == (350,)


def test_weights_and_bm25_options_change_in_place(notes, conn, db_url, fake_embedder):
    before = conn.execute("SELECT key, score FROM semsearch.keyword_search('notes_search', 'glacier', 5)").fetchall()
    embedded = conn.execute("SELECT max(embedded_at) FROM semsearch.store_notes_search").fetchone()
    conn.execute("""SELECT semsearch.alter_index('notes_search', '{"weights": {"title": 0}, "bm25_b": 0.3}')""")
    # Until the worker has re-indexed them, rows keep their old keywords: search never goes blank.
    assert len(conn.execute("SELECT key FROM semsearch.keyword_search('notes_search', 'glacier', 5)").fetchall()) == 5
    drain(db_url, fake_embedder("all-MiniLM-L6-v2"))
    # Title matches no longer count: a note whose title alone says glacier is not found by it.
    keys = {k for (k,) in conn.execute("SELECT key FROM semsearch.keyword_search('notes_search', 'report', 50)")}
    assert keys == set()
    assert conn.execute("SELECT key, score FROM semsearch.keyword_search('notes_search', 'glacier', 5)").fetchall() != before
    # Keywords were re-indexed; nothing was re-embedded.
    assert conn.execute("SELECT max(embedded_at) FROM semsearch.store_notes_search").fetchone() == embedded
    with pytest.raises(psycopg.errors.DataException, match="weights name column"):
        conn.execute("""SELECT semsearch.alter_index('notes_search', '{"weights": {"summary": 2}}')""")
    for bad, message in (('{"weights": {"title": -2}}', "numbers of 0 or more"), ('{"bm25_b": 1.5}', "bm25_b from 0 to 1")):
        with pytest.raises(psycopg.errors.DataException, match=message):
            conn.execute("SELECT semsearch.alter_index('notes_search', %s)", (bad,))
    notices = []
    conn.add_notice_handler(notices.append)
    conn.execute("SELECT * FROM semsearch.keyword_search('notes_search', 'glacier report', 5, 'phrase')").fetchall()
    conn.execute("SELECT * FROM semsearch.keyword_search('notes_search', 'the and of', 5, 'websearch')").fetchall()
    assert notices == []
    with pytest.raises(ValueError, match="weights name column"):
        SearchIndex("title", weights={"body": 2.0}).options.check_weights(["title"])


def test_keywords_do_not_wait_for_the_model(engine, conn, db_url, fake_embedder):
    """A row is keyword-searchable once the worker has read it: its embedding failing, or the model being
    unavailable altogether, leaves keyword search working."""
    Base.metadata.create_all(engine)
    conn.execute("INSERT INTO articles (id, title, body, views) VALUES (1, 'Poison pill', 'quarantined text', 0), "
                 "(2, 'Tulips', 'spring flowers in poison-free soil', 0)")
    drain(db_url, fake_embedder("all-MiniLM-L6-v2", fail_on="Poison pill"), max_attempts=1)
    assert conn.execute("SELECT key FROM semsearch.failures").fetchall() == [("1",)]
    assert conn.execute("SELECT key FROM semsearch.keyword_search('articles_search', 'quarantined', 5)"
                        ).fetchall() == [("1",)]

    class Missing:
        def __call__(self, model):
            from semsearch.errors import ModelUnavailable
            raise ModelUnavailable(f"model {model!r} is not installed")

    conn.execute("INSERT INTO articles (id, title, body, views) VALUES (3, 'Lighthouse', 'keepers of the lamp', 0)")
    with pytest.raises(SemsearchError, match="not installed"):
        drain(db_url, embedder_factory=Missing())
    assert conn.execute("SELECT key FROM semsearch.keyword_search('articles_search', 'lighthouse keepers', 5)"
                        ).fetchall() == [("3",)]
    assert conn.execute("SELECT count(*) FROM semsearch.store_articles_search WHERE key = '3'").fetchone() == (0,)
    assert conn.execute("SELECT count(*) FROM semsearch.queue").fetchone() == (1,)  # still waits for its embedding


def test_filters_apply_inside_each_arm(notes, conn):
    """1% of the rows match the filter: every mode still returns its full limit, all matching, through the
    ORM and the SQL functions; a composite key's filter works too."""
    vector = [0.05] * 384
    with Session(notes) as s:
        for stmt in (Note.search.keyword("glacier report", limit=4, filter=Note.tenant == 7),
                     Note.search.semantic(vector=vector, limit=4, filter=Note.tenant == 7),
                     Note.search.hybrid("glacier report", vector=vector, limit=4, filter=Note.tenant == 7)):
            rows = s.execute(stmt).all()
            assert len(rows) == 4 and {n.tenant for n, _ in rows} == {7}
        # .where() filters the returned candidates only: with the default depth it finds fewer.
        rows = s.execute(Note.search.semantic(vector=vector, limit=4).where(Note.tenant == 7)).all()
        assert len(rows) < 4
    register_vector(conn)
    tenant_keys = "ARRAY(SELECT id::text FROM notes WHERE tenant = 7)"
    for sql, args in ((f"SELECT key FROM semsearch.keyword_search('notes_search', 'report', 4, filter_keys => {tenant_keys})", ()),
                      (f"SELECT key FROM semsearch.semantic_search('notes_search', %s::vector, 4, {tenant_keys})", (str(vector),)),
                      (f"SELECT key FROM semsearch.hybrid_search('notes_search', 'report', %s::vector, 4, "
                       f"filter_keys => {tenant_keys})", (str(vector),))):
        keys = [int(k) for (k,) in conn.execute(sql, args)]
        assert len(keys) == 4 and all(k % 100 == 7 for k in keys), sql


def test_composite_key_filter(notes, conn, db_url, fake_embedder):
    conn.execute("INSERT INTO visits (region, day, notes) VALUES ('north', '2024-01-02', 'glacier melt'), "
                 "('north', '2024-01-03', 'glacier calving'), ('south', '2024-01-02', 'glacier retreat')")
    drain(db_url, fake_embedder("all-MiniLM-L6-v2"))
    with Session(notes) as s:
        rows = s.execute(Visit.search.keyword("glacier", limit=5, filter=Visit.day == date(2024, 1, 2))).all()
        assert sorted(v.region for v, _ in rows) == ["north", "south"]
        rows = s.execute(Visit.search.hybrid("glacier", vector=[0.1] * 384, limit=5, filter=Visit.region == "north")).all()
        assert sorted(v.day for v, _ in rows) == [date(2024, 1, 2), date(2024, 1, 3)]


def test_fusion_methods_and_depths(notes, conn):
    vector = [0.05] * 384
    with Session(notes) as s:
        for fusion in ("rrf", "minmax", "zscore"):
            rows = s.execute(Note.search.hybrid("glacier erosion", vector=vector, limit=20, fusion=fusion,
                                                semantic_weight=0.3, keyword_weight=0.7, arm_scores=True)).all()
            assert len(rows) == 20
            sem = [r.semantic_score for r in rows if r.semantic_score is not None]
            kw = [r.keyword_score for r in rows if r.keyword_score is not None]
            if fusion == "rrf":
                for r in rows:
                    expected = sum(w / (60 + rank) for w, rank in ((0.3, r.semantic_rank), (0.7, r.keyword_rank)) if rank)
                    assert r.score == pytest.approx(expected)
            elif fusion == "minmax":
                assert max(r.score for r in rows) <= 1.0 + 1e-9 and min(kw) >= 0
            scores = [r.score for r in rows]
            assert scores == sorted(scores, reverse=True)
    # The score fusions score every candidate by both arms: rebuilt here from the arms' own functions (each
    # arm's 20 best and any rows tied with its 20th, then each arm's scores of all of them), the fused
    # scores must match.
    v = str(vector)

    def top(sql, *args):
        rows = conn.execute(sql, args).fetchall()
        return {k for k, score, _ in rows if score >= rows[19][1]}

    union = sorted(top("SELECT * FROM semsearch.semantic_search('notes_search', %s::vector, 200)", v)
                   | top("SELECT * FROM semsearch.keyword_search('notes_search', 'glacier erosion', 200)"))
    sem = dict((k, x) for k, x, _ in conn.execute(
        "SELECT * FROM semsearch.semantic_search('notes_search', %s::vector, 1000, filter_keys => %s)", (v, union)))
    kw = {k: 0.0 for k in union} | dict((k, x) for k, x, _ in conn.execute(
        "SELECT * FROM semsearch.keyword_search('notes_search', 'glacier erosion', 1000, filter_keys => %s)", (union,)))
    assert sem.keys() == set(union) and 0 in kw.values()
    for fusion, normalise in (("minmax", lambda x, v: (x - min(v)) / (max(v) - min(v))),
                              ("zscore", lambda x, v: (x - statistics.fmean(v)) / statistics.pstdev(v))):
        rows = conn.execute("SELECT * FROM semsearch.hybrid_search('notes_search', 'glacier erosion', %s::vector, 20, "
                            "candidates => 20, semantic_weight => 0.3, keyword_weight => 0.7, fusion => %s)",
                            (v, fusion)).fetchall()
        expected = {k: 0.3 * normalise(sem[k], list(sem.values())) + 0.7 * normalise(kw[k], list(kw.values()))
                    for k in union}
        assert [r[1] for r in rows] == pytest.approx(sorted(expected.values(), reverse=True)[:20]), fusion
        for key, score, semantic_rank, keyword_rank, semantic_score, keyword_score in rows:
            assert score == pytest.approx(expected[key])
            assert semantic_score == pytest.approx(sem[key]) and keyword_score == pytest.approx(kw[key])
    with Session(notes) as s:
        rows = s.execute(Note.search.hybrid("glacier", vector=vector, limit=5, semantic_candidates=5,
                                            keyword_candidates=5, arm_scores=True)).all()
        assert all((r.semantic_rank or 0) <= 5 and (r.keyword_rank or 0) <= 5 for r in rows)
    with pytest.raises(SemsearchError, match="fusion must be one of"):
        Note.search.hybrid("x", vector=vector, fusion="max")
    with pytest.raises(psycopg.errors.DataException, match='unknown fusion "max"'):
        conn.execute("SELECT * FROM semsearch.hybrid_search('notes_search', 'x', %s::vector, fusion => 'max')",
                     (str(vector),))


class TicketsBase(DeclarativeBase):
    pass


class Ticket(TicketsBase):
    """The README's ranking example: 100 tickets per topic, alike but for their number."""
    __tablename__ = "tickets"
    id: Mapped[int] = mapped_column(primary_key=True)
    subject: Mapped[str]
    body: Mapped[str]
    search = SearchIndex("subject", "body", weights={"subject": 2.0})


TOPICS = [("Printer jam", "The office printer jams on double-sided pages."),
          ("VPN drops", "The VPN connection drops every hour when working from home."),
          ("Password reset", "I cannot reset my password: the email never arrives."),
          ("Laptop battery", "My laptop battery drains in two hours.")]


def test_fusion_of_tied_rows(db_url, conn):
    """Rows whose keyword scores are equal in exact arithmetic tie exactly (summing in another order
    changes a score's last bits), and a tied arm ranks nobody: min-max and z-score then follow the
    other arm, whatever the limit. Real model: its scores are what the ties sit beside."""
    engine = create_engine(sqlalchemy_url(db_url))
    TicketsBase.metadata.create_all(engine)
    with Session(engine) as s:
        s.add_all(Ticket(id=i, subject=f"{TOPICS[i % 4][0]} #{i}", body=TOPICS[i % 4][1]) for i in range(1, 401))
        s.commit()
    drain(db_url)
    query = "my password reset email"
    with Session(engine) as s:
        keyword = s.execute(Ticket.search.keyword(query, limit=100)).all()
        assert {t.id % 4 for t, _ in keyword} == {2} and len({score for _, score in keyword}) == 1
        assert [t.id for t, _ in keyword] == sorted(t.id for t, _ in keyword)  # ties in primary key order
        semantic = [t.id for t, _ in s.execute(Ticket.search.semantic(query, limit=60))]
        assert {i % 4 for i in semantic} == {2}
        for fusion in ("minmax", "zscore"):
            for limit in (8, 40, 60):
                rows = s.execute(Ticket.search.hybrid(query, limit=limit, fusion=fusion, arm_scores=True)).all()
                assert [r.Ticket.id for r in rows] == semantic[:limit], (fusion, limit)
                assert len({r.keyword_score for r in rows}) == 1
        # Tied rows share a keyword rank and no cut splits them, so RRF follows the semantic arm too
        # (ranks 1, 2, 3, ... by key would boost whichever keys sort first).
        for limit in (3, 8, 40, 60):
            rows = s.execute(Ticket.search.hybrid(query, limit=limit, fusion="rrf", arm_scores=True)).all()
            assert [r.Ticket.id for r in rows] == semantic[:limit], limit
            assert {r.keyword_rank for r in rows} == {1}
        # No query word anywhere: the keyword arm is tied at 0 and adds nothing.
        rows = s.execute(Ticket.search.hybrid("zzyzx quokka", limit=5, arm_scores=True)).all()
        assert [r.keyword_score for r in rows] == [0] * 5 and max(r.score for r in rows) == 1
    engine.dispose()


def test_explain_each_arm_with_and_without_filters(engine, conn):
    """The plans users run, on 20,000 rows: HNSW for the semantic arm and the postings' impact index for
    the keyword arm, with and without a filter; the GIN index for the exact syntaxes."""
    Base.metadata.create_all(engine)
    rows = 20_000
    conn.execute("INSERT INTO articles (id, title, body, views) SELECT g, 'note ' || g, "
                 "CASE WHEN g %% 1000 = 7 THEN 'unusual aardvark sighting' ELSE 'common words ' || (g %% 50) END, g %% 4 "
                 "FROM generate_series(1, %s) g", (rows,))
    conn.execute("DROP INDEX semsearch.store_articles_search_hnsw")  # bulk load, then build once
    conn.execute(
        "INSERT INTO semsearch.store_articles_search (key, chunk, content, embedding, model, content_hash) "
        "SELECT g::text, 0, 'x', (SELECT array_agg(random()::real - 0.5) FROM generate_series(1, 384) WHERE g > 0)::vector, "
        "'m', '' FROM generate_series(1, %s) g", (rows,))
    conn.execute("SELECT semsearch.build_hnsw(semsearch.lookup_index('articles_search'))")
    conn.execute("SELECT semsearch.index_keywords((semsearch.lookup_index('articles_search')).id, "
                 "ARRAY(SELECT g::text FROM generate_series(1, %s) g))", (rows,))
    conn.execute("DELETE FROM semsearch.queue")
    conn.execute("VACUUM ANALYZE")
    register_vector(conn)
    vector = "[" + ",".join(["0.1"] * 384) + "]"
    quarter = "ARRAY(SELECT id::text FROM articles WHERE views = 1)"

    def plan(arm, query, syntax="or", keys="NULL"):
        return "\n".join(r[0] for r in conn.execute(
            f"SELECT * FROM semsearch.explain('articles_search', %s, %s, %s::vector, 10, %s, {keys})",
            (arm, query, vector, syntax)))

    for keys in ("NULL", quarter):
        assert "Index Scan using store_articles_search_hnsw" in plan("semantic", "x", keys=keys)
        keyword = plan("keyword", "common words aardvark", keys=keys)
        assert "store_articles_search_postings_impact" in keyword, keyword
        assert "Seq Scan on store_articles_search_postings" not in keyword, keyword
        phrase = plan("keyword", "unusual aardvark", "phrase", keys)
        assert "Bitmap Index Scan on store_articles_search_docs_gin" in phrase, phrase
