"""DDL: what create_all, semsearch install and the Alembic operation create."""
import subprocess
import sys

from semsearch import install

from .models import Base


def test_create_all_creates_store_indexes_and_triggers(engine, conn):
    Base.metadata.create_all(engine)
    indexes = dict(conn.execute(
        "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'semsearch' "
        "AND tablename = 'store_articles_search'").fetchall())
    assert "USING hnsw (embedding vector_cosine_ops)" in indexes["store_articles_search_hnsw"]
    keyword_indexes = dict(conn.execute(
        "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'semsearch' "
        "AND tablename LIKE 'store_articles_search_%'").fetchall())
    assert "USING gin (tsv)" in keyword_indexes["store_articles_search_docs_gin"]
    assert "(term, impact DESC) INCLUDE (key, tf, dl)" in keyword_indexes["store_articles_search_postings_impact"]
    triggers = {r[0] for r in conn.execute(
        "SELECT tgname FROM pg_trigger WHERE tgrelid = 'articles'::regclass AND NOT tgisinternal").fetchall()}
    assert triggers == {f"semsearch_articles_search_{op}" for op in ("insert", "update", "delete", "truncate")}
    row = conn.execute("SELECT key_columns::text[], columns::text[], model, dimensions, distance, chunk_overlap "
                       "FROM semsearch.indexes WHERE name = 'articles_search'").fetchone()
    assert row == (["id"], ["title", "body"], "all-MiniLM-L6-v2", 384, "cosine", 32)
    # semsearch's schema version lives in its own table, never in the application's alembic_version.
    assert conn.execute("SELECT max(version) FROM semsearch.schema_version").fetchone() == ("0005",)
    assert conn.execute("SELECT to_regclass('public.alembic_version')").fetchone() == (None,)


def test_install_is_idempotent_and_create_all_can_run_twice(engine, conn):
    install(engine)
    Base.metadata.create_all(engine)
    install(engine)
    Base.metadata.create_all(engine)
    assert conn.execute("SELECT count(*) FROM semsearch.indexes").fetchone() == (1,)


def test_drop_all_removes_store_and_registry(engine, conn):
    Base.metadata.create_all(engine)
    Base.metadata.drop_all(engine)
    assert conn.execute("SELECT count(*) FROM semsearch.indexes").fetchone() == (0,)
    assert conn.execute("SELECT to_regclass('semsearch.store_articles_search')").fetchone() == (None,)
    assert conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'semsearch' AND tablename LIKE 'store_%'"
                        ).fetchone() == (0,)


def test_another_model_for_an_existing_index_builds_a_version_and_another_table_is_refused(engine, conn):
    Base.metadata.create_all(engine)
    import psycopg
    import pytest

    # The current version keeps serving; the new one is built by the worker (tests/test_versions.py).
    conn.execute("SELECT semsearch.create_index('articles_search', 'articles', ARRAY['title', 'body'], 'other', 768)")
    assert conn.execute("SELECT model, dimensions, version FROM semsearch.indexes").fetchone() == (
        "all-MiniLM-L6-v2", 384, 1)
    assert conn.execute("SELECT version, model, dimensions, store_table, phase FROM semsearch.builds").fetchone() == (
        2, "other", 768, "store_articles_search_v2", "embedding")
    assert conn.execute("SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attname = 'embedding' "
                        "AND attrelid = 'semsearch.store_articles_search_v2'::regclass").fetchone()[0].endswith("(768)")
    # The declaration as it was cancels the build.
    Base.metadata.create_all(engine)
    assert conn.execute("SELECT count(*), to_regclass('semsearch.store_articles_search_v2') FROM semsearch.builds"
                        ).fetchone() == (0, None)
    conn.execute("CREATE TABLE other_articles (id int PRIMARY KEY, title text)")
    with pytest.raises(psycopg.errors.RaiseException) as info:
        conn.execute("SELECT semsearch.create_index('articles_search', 'other_articles', ARRAY['title'])")
    assert "already exists on table" in str(info.value)
    assert "drop_index" in info.value.diag.message_hint


def test_cli_install_and_help(db_url):
    out = subprocess.run([sys.executable, "-m", "semsearch.cli", "install", "--url", db_url],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "version 0005" in out.stdout
    for command in ("install", "worker", "status", "search", "demo", "backfill", "reindex", "retry-failed", "server"):
        out = subprocess.run([sys.executable, "-m", "semsearch.cli", command, "--help"],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0 and "usage: semsearch" in out.stdout, command


def test_sql_defaults_are_the_python_defaults(engine, conn):
    """One source of truth: an index made from SQL with no options gets IndexOptions' defaults."""
    from semsearch import IndexOptions

    install(engine)
    conn.execute("CREATE TABLE notes (id int PRIMARY KEY, body text)")
    conn.execute("SELECT semsearch.create_index('notes_search', 'notes', ARRAY['body'], 'all-MiniLM-L6-v2', 384)")
    row = conn.execute("SELECT distance, ts_config::text, chunk_tokens, chunk_overlap, hnsw_m, hnsw_ef_construction "
                       "FROM semsearch.indexes").fetchone()
    defaults = IndexOptions()
    assert row == (defaults.distance, defaults.ts_config, defaults.chunk_tokens, defaults.chunk_overlap,
                   defaults.hnsw_m, defaults.hnsw_ef_construction)
