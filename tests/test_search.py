"""Search with the real model: ORM selects and raw SQL functions."""
import psycopg
import pytest
from pgvector.psycopg import register_vector
from sqlalchemy import select
from sqlalchemy.orm import Session

from semsearch import SemsearchError
from semsearch.embedders import get_embedder

from .helpers import drain
from .models import Article, Base, Tag

DOCS = [
    (1, "Cats", "Small domesticated carnivores that people keep at home; they purr and chase mice."),
    (2, "Invoice", "Vendor reference wxqzt: payment is due within thirty days of delivery."),
    (3, "Sourdough", "Bake bread with a natural starter, flour, water and salt."),
    (4, "Marathon", "Training plan for running 42 kilometres: long runs, tempo runs and rest days."),
    (5, "Volcanoes", "Magma rises through the crust and erupts as lava and ash."),
    (6, "Chess", "Openings, middlegame tactics and endgame technique for the royal game."),
    (7, "Taxes", "How to file an income tax return and claim deductions."),
    (8, "Gardening", "Grow tomatoes: sunlight, watering and pruning the plants."),
    # Near-identical identifiers: embeddings blur them, keywords do not.
    (21, "Order 48213977", "Shipped to the warehouse in Leeds."),
    (22, "Order 48213917", "Shipped to the warehouse in Leeds, tracking number attached."),
    (23, "Order 42813977", "Delivered to the warehouse in Leeds."),
    (24, "Order 48231977", "Shipped to the Leeds warehouse."),
]


@pytest.fixture
def corpus(engine, conn, db_url):
    Base.metadata.create_all(engine)
    with Session(engine) as s:
        s.add_all([Article(id=i, title=t, body=b, views=i) for i, t, b in DOCS])
        s.add_all([Tag(article_id=1, name="animals"), Tag(article_id=5, name="science")])
        s.commit()
    drain(db_url)
    return engine


def titles(engine, stmt):
    with Session(engine) as s:
        rows = s.execute(stmt).all()
    scores = [score for _, score in rows]
    assert scores == sorted(scores, reverse=True)
    return [a.title for a, _ in rows]


def test_hybrid_finds_by_meaning_without_shared_words(corpus):
    assert titles(corpus, Article.search.hybrid("feline companion animal", limit=3))[0] == "Cats"
    assert titles(corpus, Article.search.semantic("feline companion animal", limit=3))[0] == "Cats"
    assert titles(corpus, Article.search.keyword("feline companion animal", limit=3)) == []


def test_hybrid_finds_an_exact_rare_keyword_that_embeddings_miss(corpus):
    query = "48213977"
    assert titles(corpus, Article.search.semantic(query, limit=3))[0] != "Order 48213977"
    assert titles(corpus, Article.search.keyword(query, limit=3)) == ["Order 48213977"]
    assert titles(corpus, Article.search.hybrid(query, limit=3))[0] == "Order 48213977"


def test_keyword_arm_does_not_need_every_word(corpus):
    question = "what should I know about the lava coming out of a mountain"
    assert titles(corpus, Article.search.keyword(question, limit=3))[0] == "Volcanoes"


def test_queries_compose_with_where_join_offset_limit(corpus):
    unfiltered = titles(corpus, Article.search.hybrid("animals and science", limit=10))
    stmt = Article.search.hybrid("animals and science", limit=10).where(Article.views > 2)
    with Session(corpus) as s:
        filtered = s.execute(stmt).all()
    # .where() keeps exactly the candidates it allows, in the same order (views are the ids here).
    views = {title: i for i, title, _ in DOCS}
    assert "Cats" in unfiltered and len(unfiltered) == 10
    assert [a.title for a, _ in filtered] == [t for t in unfiltered if views[t] > 2]
    assert all(a.views > 2 for a, _ in filtered) and "Cats" not in [a.title for a, _ in filtered]
    joined = Article.search.semantic("pets", limit=10).join(Tag, Tag.article_id == Article.id).where(Tag.name == "animals")
    assert titles(corpus, joined) == ["Cats"]
    everything = titles(corpus, Article.search.semantic("food", limit=12))
    assert sorted(everything) == sorted(title for _, title, _ in DOCS)  # every row, each once
    assert everything[0] == "Sourdough"
    assert titles(corpus, Article.search.semantic("food", limit=12).offset(2).limit(3)) == everything[2:5]
    with Session(corpus) as s:
        assert s.execute(select(Article.search.hybrid("bread").subquery()).limit(1)).first() is not None


def test_raw_sql_functions(corpus, conn):
    register_vector(conn)
    vector = get_embedder().encode(["baking bread at home"])[0]
    rows = conn.execute("SELECT a.title, h.score, h.semantic_rank, h.keyword_rank "
                        "FROM semsearch.hybrid_search('articles_search', 'baking bread at home', %s, 3) h "
                        "JOIN articles a ON a.id = h.key::int ORDER BY h.score DESC", (vector,)).fetchall()
    assert rows[0][0] == "Sourdough" and rows[0][2] == 1 and rows[0][3] == 1
    semantic = conn.execute("SELECT key FROM semsearch.semantic_search('articles_search', %s, 2)", (vector,)).fetchall()
    assert semantic[0] == ("3",) and len(semantic) == 2
    keyword = conn.execute("SELECT key FROM semsearch.keyword_search('articles_search', 'bread flour', 5)").fetchall()
    assert keyword == [("3",)]
    with pytest.raises(Exception, match='index "nope" does not exist'):
        conn.execute("SELECT * FROM semsearch.keyword_search('nope', 'x')")


def test_deleted_row_disappears_from_every_search(corpus, conn, db_url):
    register_vector(conn)
    conn.execute("DELETE FROM articles WHERE id = 3")
    # The ORM joins the source table: gone at once.
    assert "Sourdough" not in titles(corpus, Article.search.hybrid("sourdough bread", limit=8))
    drain(db_url)
    for search in (Article.search.hybrid, Article.search.semantic, Article.search.keyword):
        assert "Sourdough" not in titles(corpus, search("sourdough bread", limit=8))
    vector = get_embedder().encode(["sourdough bread"])[0]
    for sql, args in [("SELECT key FROM semsearch.hybrid_search('articles_search', %s, %s, 8)", ("sourdough bread", vector)),
                      ("SELECT key FROM semsearch.semantic_search('articles_search', %s, 8)", (vector,)),
                      ("SELECT key FROM semsearch.keyword_search('articles_search', %s, 8)", ("sourdough bread",))]:
        assert ("3",) not in conn.execute(sql, args).fetchall()


def test_long_text_is_chunked_and_found_once(engine, conn, db_url):
    Base.metadata.create_all(engine)
    filler = " ".join(f"Paragraph {i} talks about accounting ledgers and quarterly reports." for i in range(80))
    body = filler + " The final section explains how glaciers carve valleys over thousands of years."
    with Session(engine) as s:
        s.add_all([Article(id=1, title="Long report", body=body), Article(id=2, title="Short", body="Cooking pasta.")])
        s.commit()
    drain(db_url)
    chunks = conn.execute("SELECT count(*) FROM semsearch.store_articles_search WHERE key = '1'").fetchone()[0]
    assert chunks > 3
    found = titles(engine, Article.search.hybrid("glaciers carving valleys", limit=5))
    assert found[0] == "Long report" and found.count("Long report") == 1


def test_keyword_syntaxes(engine, conn, db_url, fake_embedder):
    Base.metadata.create_all(engine)
    conn.execute("INSERT INTO articles (id, title, body, views) VALUES "
                 "(1, 'Red apples', 'crisp red apples from the orchard', 0), "
                 "(2, 'Apple pie', 'bake apples and red currants in a pie', 0), "
                 "(3, 'Applications', 'software applications for farmers', 0)")
    drain(db_url, fake_embedder("all-MiniLM-L6-v2"))

    def ids(stmt):
        with Session(engine) as s:
            return sorted(a.id for a, _ in s.execute(stmt))

    assert ids(Article.search.keyword("red apples")) == [1, 2]                       # or: either word
    assert ids(Article.search.keyword("red apples", syntax="phrase")) == [1]         # next to each other
    assert ids(Article.search.keyword('"red apples" -orchard', syntax="websearch")) == []
    assert ids(Article.search.keyword("apples -pie", syntax="websearch")) == [1]
    assert ids(Article.search.keyword("appl", syntax="prefix")) == [1, 2, 3]
    assert ids(Article.search.hybrid("red apples", vector=[0.1] * 384, keyword_syntax="phrase", limit=3))
    assert conn.execute("SELECT key FROM semsearch.keyword_search('articles_search', 'red apples', 5, 'phrase')"
                        ).fetchall() == [("1",)]
    with pytest.raises(psycopg.errors.DataException, match='unknown keyword syntax "regex"'):
        conn.execute("SELECT * FROM semsearch.keyword_search('articles_search', 'x', 5, 'regex')")
    with pytest.raises(SemsearchError, match="keyword syntax must be one of"):
        Article.search.keyword("x", syntax="regex")


def test_hybrid_rows_expose_each_arms_rank_and_score(corpus, conn):
    with Session(corpus) as s:
        rows = s.execute(Article.search.hybrid("baking bread at home", limit=5, arm_scores=True)).all()
    assert rows and rows[0][0].title == "Sourdough"
    top = rows[0]
    assert top.semantic_rank == 1 and top.keyword_rank == 1 and 0 < top.semantic_score <= 1 and top.keyword_score > 0
    assert top.score == pytest.approx(2.0)  # min-max fusion: the best of each arm scores 1, weight 1 per arm
    # Each arm also scores the other arm's candidates: a rank only where the arm found the row itself, a
    # score always (keyword 0 where no query word occurs).
    assert all(row.semantic_score is not None and row.keyword_score is not None for row in rows)
    assert any(row.keyword_rank is None and row.keyword_score == 0 for row in rows)
    with Session(corpus) as s:
        plain = s.execute(Article.search.hybrid("baking bread at home", limit=5)).all()
    assert [len(r) for r in plain] == [2] * len(plain)  # the default stays (Model, score)
