"""README guarantees of the search functions, each tested where a broken implementation would show:
a limit that cuts through tied rows, a query word after the 10,000-character cut, and hybrid's
keyword syntax reaching its keyword arm. The model is not the subject (fake embedder)."""
import numpy as np
import pytest
from sqlalchemy.orm import Session

from .helpers import drain
from .models import Article, Base


@pytest.fixture
def articles(engine, db_url, fake_embedder):
    Base.metadata.create_all(engine)
    with Session(engine) as session:
        # Every fourth row holds the same text with "password" in it: tied BM25 scores, keys 2, 6, 10, ... 198.
        session.add_all(Article(id=i, title="Password reset" if i % 4 == 2 else "Printer jam",
                                body="the email never arrives" if i % 4 == 2 else "pages stick in the tray")
                        for i in range(1, 201))
        session.add(Article(id=1001, title="Router notes", body="reset the router, then change the password"))
        session.add(Article(id=1002, title="zebra crossing", body="stripes on the road"))
        session.commit()
    drain(db_url, fake_embedder("all-MiniLM-L6-v2"))
    return engine


def test_a_limit_through_tied_rows_takes_the_shortest_keys_first(articles, conn):
    """Ties come in key order, shorter keys first: [2, 6, 10], never text order's [10, 102, 106]."""
    keys = [r[0] for r in conn.execute("SELECT key FROM semsearch.keyword_search('articles_search', 'email', 3)")]
    assert keys == ["2", "6", "10"]
    with Session(articles) as session:
        rows = session.execute(Article.search.keyword("email", limit=3)).all()
        assert [a.id for a, _ in rows] == [2, 6, 10]
        longer = session.execute(Article.search.keyword("email", limit=5)).all()
        assert [a.id for a, _ in longer] == [2, 6, 10, 14, 18]  # a longer limit only adds rows after these


def test_a_limit_through_tied_hybrid_rows_takes_the_shortest_keys_first(articles, conn, fake_embedder):
    """Fifty identical rows tie in both arms: the query vector is their own embedding."""
    vector = fake_embedder("all-MiniLM-L6-v2").encode(["Password reset\n\nthe email never arrives"])[0]
    keys = [r[0] for r in conn.execute("SELECT key FROM semsearch.hybrid_search('articles_search', 'email', %s::vector, 3)",
                                       (str(vector.tolist()),))]
    assert keys == ["2", "6", "10"]
    with Session(articles) as session:
        rows = session.execute(Article.search.hybrid("email", vector=vector, limit=3)).all()
        assert [a.id for a, _ in rows] == [2, 6, 10]


def test_query_text_beyond_10000_characters_is_cut_off(articles, conn):
    filler = "x " * 5000  # 10,000 characters
    with Session(articles) as session:
        assert [a.id for a, _ in session.execute(Article.search.keyword("zebra " + filler))] == [1002]
        assert session.execute(Article.search.keyword(filler + "zebra")).all() == []
    sql = "SELECT key FROM semsearch.keyword_search('articles_search', %s, 10)"
    assert [r[0] for r in conn.execute(sql, ("zebra " + filler,))] == ["1002"]
    assert conn.execute(sql, (filler + "zebra",)).fetchall() == []


def test_hybrid_keyword_syntax_reaches_the_keyword_arm(articles, conn):
    """"password reset" as a phrase matches the Password reset rows, not the router notes that hold
    both words apart; read as words (or), the router notes are a keyword candidate too."""
    vector = np.random.default_rng(7).standard_normal(384)
    with Session(articles) as session:
        def keyword_ranks(syntax):
            rows = session.execute(Article.search.hybrid("password reset", vector=vector, limit=60, candidates=60,
                                                         keyword_syntax=syntax, arm_scores=True)).all()
            return {row.Article.id: row.keyword_rank for row in rows}

        as_words, as_phrase = keyword_ranks("or"), keyword_ranks("phrase")
        assert as_words[1001] is not None
        assert as_phrase.get(1001) is None
        assert as_phrase[2] is not None and as_words[2] is not None
    phrase = conn.execute("SELECT keyword_rank FROM semsearch.hybrid_search('articles_search', 'password reset', "
                          "%s::vector, 60, keyword_syntax => 'phrase', candidates => 60) WHERE key = '1001'",
                          (str(vector.tolist()),)).fetchall()
    assert phrase in ([], [(None,)])
