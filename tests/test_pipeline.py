"""Triggers -> queue -> worker -> store, with a fake embedder (the model is not the subject here)."""
from sqlalchemy.orm import Session

from .helpers import drain, queue_keys, store_rows
from .models import Article, Base


def test_insert_update_delete_flow_through_queue_to_store(engine, conn, db_url, fake_embedder):
    Base.metadata.create_all(engine)
    embedder = fake_embedder("all-MiniLM-L6-v2")
    with Session(engine) as s:
        s.add_all([Article(id=1, title="one", body="first body"), Article(id=2, title="two", body="second")])
        s.commit()
    assert queue_keys(conn) == ["1", "2"]
    drain(db_url, embedder)
    assert queue_keys(conn) == []
    assert store_rows(conn) == {"1": ["one\n\nfirst body"], "2": ["two\n\nsecond"]}
    model, hash_ = conn.execute("SELECT model, content_hash FROM semsearch.store_articles_search "
                                "WHERE key = '1'").fetchone()
    assert model == "all-MiniLM-L6-v2" and len(hash_) == 32

    with Session(engine) as s:
        s.get(Article, 1).body = "changed body"
        s.delete(s.get(Article, 2))
        s.commit()
    assert queue_keys(conn) == ["1", "2"]
    drain(db_url, embedder)
    assert store_rows(conn) == {"1": ["one\n\nchanged body"]}


def test_update_of_a_non_embedded_column_enqueues_nothing(engine, conn, db_url, fake_embedder):
    Base.metadata.create_all(engine)
    conn.execute("INSERT INTO articles (id, title, body, views) VALUES (1, 'a', 'b', 0), (2, 'c', NULL, 0)")
    drain(db_url, fake_embedder("all-MiniLM-L6-v2"))
    conn.execute("UPDATE articles SET views = views + 1")
    conn.execute("UPDATE articles SET title = title, body = body")  # same values: not a change
    assert queue_keys(conn) == []
    conn.execute("UPDATE articles SET body = 'now set' WHERE id = 2")
    assert queue_keys(conn) == ["2"]


def test_bulk_insert_is_one_queue_statement_and_primary_key_change_moves_the_key(engine, conn, db_url, fake_embedder):
    Base.metadata.create_all(engine)
    conn.execute("INSERT INTO articles (id, title, body, views) SELECT g, 't' || g, 'b', 0 FROM generate_series(1, 500) g")
    assert conn.execute("SELECT count(*), sum(cardinality(keys)) FROM semsearch.queue").fetchone() == (1, 500)
    embedder = fake_embedder("all-MiniLM-L6-v2")
    drain(db_url, embedder)
    conn.execute("UPDATE articles SET id = 1000 WHERE id = 1")
    assert queue_keys(conn) == ["1", "1000"]
    drain(db_url, embedder)
    rows = store_rows(conn)
    assert "1" not in rows and rows["1000"] == ["t1\n\nb"] and len(rows) == 500


def test_truncate_empties_store_and_queue(engine, conn, db_url, fake_embedder):
    Base.metadata.create_all(engine)
    conn.execute("INSERT INTO articles (id, title, body, views) VALUES (1, 'a', 'b', 0)")
    drain(db_url, fake_embedder("all-MiniLM-L6-v2"))
    conn.execute("INSERT INTO articles (id, title, body, views) VALUES (2, 'c', 'd', 0)")
    conn.execute("TRUNCATE articles CASCADE")
    assert queue_keys(conn) == [] and store_rows(conn) == {}


def test_unchanged_text_is_not_embedded_again(engine, conn, db_url, fake_embedder):
    Base.metadata.create_all(engine)
    embedder = fake_embedder("all-MiniLM-L6-v2")
    conn.execute("INSERT INTO articles (id, title, body, views) VALUES (1, 'a', 'b', 0)")
    drain(db_url, embedder)
    conn.execute("SELECT semsearch.request_backfill('articles_search')")
    drain(db_url, embedder)
    assert embedder.encoded == ["a\n\nb"]


def test_existing_rows_are_backfilled_when_the_index_is_declared(engine, conn, db_url, fake_embedder):
    conn.execute("CREATE TABLE articles (id int PRIMARY KEY, title text NOT NULL, body text, views int NOT NULL)")
    conn.execute("INSERT INTO articles SELECT g, 'title ' || g, 'body', 0 FROM generate_series(1, 50) g")
    Base.metadata.create_all(engine)
    embedder = fake_embedder("all-MiniLM-L6-v2")
    drain(db_url, embedder)
    expected = {str(g): [f"title {g}\n\nbody"] for g in range(1, 51)}
    assert store_rows(conn) == expected
    assert sorted(embedder.encoded) == sorted(text for texts in expected.values() for text in texts)  # each once


def test_failing_item_is_isolated_retried_then_recorded(engine, conn, db_url, fake_embedder):
    Base.metadata.create_all(engine)
    embedder = fake_embedder("all-MiniLM-L6-v2", fail_on="POISON")
    conn.execute("INSERT INTO articles (id, title, body, views) SELECT g, 'ok ' || g, 'fine', 0 "
                 "FROM generate_series(1, 20) g")
    conn.execute("INSERT INTO articles (id, title, body, views) VALUES (99, 'POISON', 'x', 0), (98, ' ', NULL, 0)")
    drain(db_url, embedder, timeout=60, max_attempts=3, retry_base_seconds=0.01)
    assert store_rows(conn) == {str(g): [f"ok {g}\n\nfine"] for g in range(1, 21)}
    failures = dict(conn.execute("SELECT key, attempts || ': ' || error FROM semsearch.failures").fetchall())
    assert failures["99"].startswith("3: embedding failed") and "POISON" in failures["99"]
    assert failures["98"].startswith("1: nothing to embed")
    assert queue_keys(conn) == []
    # Fixing the row clears the failure.
    conn.execute("UPDATE articles SET title = 'cured' WHERE id = 99")
    drain(db_url, embedder)
    assert conn.execute("SELECT key FROM semsearch.failures").fetchall() == [("98",)]
