"""Alembic, run the way users run it: the `alembic` command line in a real project folder.

The project is made by `alembic init`, with semsearch's env.py (alembic/env.py, as the README tells
users to use it) and models in a package of its own.
"""
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import psycopg
import pytest

from semsearch.database import sqlalchemy_url

from .helpers import drain, store_rows
from .psql import psql

REPO = Path(__file__).resolve().parent.parent

MODELS = '''
from sqlalchemy import String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from semsearch import SearchIndex


class Base(DeclarativeBase):
    pass


class Article(Base):
    __tablename__ = "articles"
    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str] = mapped_column(String(200), index=True)
    body: Mapped[str | None] = mapped_column(Text)
    summary: Mapped[str | None] = mapped_column(Text)
    search = SearchIndex({columns}, name="articles_search"{options})
{extra}
'''

NOTES = '''

class Note(Base):
    __tablename__ = "notes"
    id: Mapped[int] = mapped_column(primary_key=True)
    text: Mapped[str] = mapped_column(Text)
    search = SearchIndex("text", name="notes_search")
'''

REVISION_1 = '''
"""articles with a search index, then an ordinary index after it"""
from alembic import op
import sqlalchemy as sa

revision = "0001"
down_revision = None


def upgrade():
    op.create_table("articles", sa.Column("id", sa.Integer, primary_key=True),
                    sa.Column("title", sa.String(200), nullable=False), sa.Column("body", sa.Text))
    op.create_search_index("articles_search", "articles", ["title", "body"])
    op.create_index("ix_articles_title", "articles", ["title"])


def downgrade():
    op.drop_index("ix_articles_title", "articles")
    op.drop_search_index("articles_search")
    op.drop_table("articles")
'''

REVISION_2 = '''
"""a column, and the search index follows it"""
from alembic import op
import sqlalchemy as sa

revision = "0002"
down_revision = "0001"


def upgrade():
    op.add_column("articles", sa.Column("summary", sa.Text))
    op.alter_search_index("articles_search", columns=["title", "body", "summary"],
                          existing={"columns": ["title", "body"]})
    op.execute("UPDATE articles SET summary = 'none'")


def downgrade():
    op.alter_search_index("articles_search", columns=["title", "body"],
                          existing={"columns": ["title", "body", "summary"]})
    op.drop_column("articles", "summary")
'''


def alembic(project: Path, *args: str, url: str, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "DATABASE_URL": sqlalchemy_url(url), "PYTHONPATH": str(project)}
    out = subprocess.run([sys.executable, "-m", "alembic", *args], cwd=project, env=env,
                         capture_output=True, text=True, timeout=300)
    if check:
        assert out.returncode == 0, f"alembic {' '.join(args)} exited {out.returncode}:\n{out.stdout}\n{out.stderr}"
    return out


def write_models(project: Path, columns='"title", "body", "summary"', options="", extra="") -> None:
    (project / "myapp" / "models.py").write_text(MODELS.format(columns=columns, options=options, extra=extra))


@pytest.fixture
def project(tmp_path, db_url):
    out = subprocess.run([sys.executable, "-m", "alembic", "init", "migrations"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    shutil.copy(REPO / "alembic" / "env.py", tmp_path / "migrations" / "env.py")
    (tmp_path / "myapp").mkdir()
    (tmp_path / "myapp" / "__init__.py").write_text("")
    write_models(tmp_path)
    versions = tmp_path / "migrations" / "versions"
    (versions / "0001_articles.py").write_text(textwrap.dedent(REVISION_1))
    (versions / "0002_summary.py").write_text(textwrap.dedent(REVISION_2))
    return tmp_path


def triggers(conn, table):
    return sorted(r[0] for r in conn.execute(
        "SELECT tgname FROM pg_trigger WHERE tgrelid = %s::regclass AND NOT tgisinternal", (table,)).fetchall())


def test_upgrade_check_autogenerate_downgrade_and_upgrade_again(project, db_url, conn, fake_embedder):
    alembic(project, "upgrade", "head", url=db_url)
    assert conn.execute("SELECT columns::text[] FROM semsearch.indexes WHERE name = 'articles_search'"
                        ).fetchone() == (["title", "body", "summary"],)
    assert conn.execute("SELECT to_regclass('ix_articles_title') IS NOT NULL").fetchone() == (True,)
    assert len(triggers(conn, "articles")) == 4

    # The index works: rows are queued, embedded and searchable.
    conn.execute("INSERT INTO articles (id, title, body, summary) VALUES (1, 'Parsing options', 'argparse', 'cli')")
    drain(db_url, fake_embedder("all-MiniLM-L6-v2"))
    assert store_rows(conn) == {"1": ["Parsing options\n\nargparse\n\ncli"]}

    # Nothing to do after upgrade, even with include_schemas=True (semsearch's own schema is filtered).
    out = alembic(project, "check", url=db_url)
    assert "No new upgrade operations detected" in out.stdout + out.stderr
    assert "vector" not in out.stderr  # no "Did not recognize type 'vector'" warnings

    # Autogenerate: a changed index, and a new model with its own index.
    write_models(project, columns='"title", "body"', options=", chunk_tokens=200, hnsw_m=24, weights={'title': 2.0}", extra=NOTES)
    alembic(project, "revision", "--autogenerate", "-m", "notes", "--rev-id", "0003", url=db_url)
    revision = next((project / "migrations" / "versions").glob("0003_*.py")).read_text()
    assert "import semsearch.migrations" in revision
    assert re.search(r"op\.create_table\('notes'.*op\.create_search_index\('notes_search', 'notes', \['text'\]",
                     revision, re.S), revision
    assert ("op.alter_search_index('articles_search', columns=['title', 'body'], chunk_tokens=200, hnsw_m=24, "
            "weights={'title': 2.0}, existing={'columns': ['title', 'body', 'summary'], 'chunk_tokens': 128, "
            "'hnsw_m': 16, 'weights': {}})") in revision
    downgrade = revision.split("def downgrade")[1]
    assert "op.drop_search_index('notes_search')" in downgrade
    assert downgrade.index("op.drop_search_index('notes_search')") < downgrade.index("op.drop_table('notes')")
    alembic(project, "upgrade", "head", url=db_url)
    assert conn.execute("SELECT name, columns::text[], chunk_tokens, hnsw_m, column_weights FROM semsearch.indexes "
                        "ORDER BY name").fetchall() == [("articles_search", ["title", "body"], 200, 24, [2.0, 1.0]),
                                                        ("notes_search", ["text"], 128, 16, None)]
    hnsw = conn.execute("SELECT indexdef FROM pg_indexes WHERE indexname = 'store_articles_search_hnsw'").fetchone()[0]
    assert "m='24'" in hnsw
    out = alembic(project, "check", url=db_url)
    assert "No new upgrade operations detected" in out.stdout + out.stderr

    # Removing a declaration autogenerates a drop whose downgrade recreates the index as it was.
    write_models(project, columns='"title", "body"', options=", chunk_tokens=200, hnsw_m=24, weights={'title': 2.0}",
                 extra=NOTES.replace('    search = SearchIndex("text", name="notes_search")\n', ""))
    alembic(project, "revision", "--autogenerate", "-m", "no notes search", "--rev-id", "0004", url=db_url)
    revision = next((project / "migrations" / "versions").glob("0004_*.py")).read_text()
    upgrade, downgrade = revision.split("def downgrade")
    assert "op.drop_search_index('notes_search')" in upgrade
    assert "op.create_search_index('notes_search', 'notes', ['text'], model='all-MiniLM-L6-v2', dimensions=384" in downgrade

    alembic(project, "upgrade", "head", url=db_url)
    alembic(project, "downgrade", "base", url=db_url)
    assert conn.execute("SELECT count(*) FROM semsearch.indexes").fetchone() == (0,)
    assert conn.execute("SELECT to_regclass('articles')").fetchone() == (None,)
    alembic(project, "upgrade", "head", url=db_url)
    assert conn.execute("SELECT name FROM semsearch.indexes ORDER BY name").fetchall() == [("articles_search",)]
    out = alembic(project, "check", url=db_url)
    assert "No new upgrade operations detected" in out.stdout + out.stderr


def test_offline_sql_builds_a_working_index_with_psql(project, server_url, db_url, fake_embedder):
    out = alembic(project, "upgrade", "head", "--sql", url=db_url)
    script = out.stdout
    assert "CREATE SCHEMA IF NOT EXISTS semsearch" in script
    assert script.count("CREATE OR REPLACE FUNCTION semsearch.create_index") == 1  # schema emitted once per run
    assert "SELECT semsearch.create_index('articles_search'" in script
    # Nothing was run against the database.
    with psycopg.connect(db_url) as conn:
        assert conn.execute("SELECT to_regnamespace('semsearch')").fetchone() == (None,)

    path = Path(project) / "upgrade.sql"
    path.write_text(script)
    applied = psql(db_url, "-q", "-f", str(path))
    assert applied.returncode == 0, applied.stderr

    with psycopg.connect(db_url, autocommit=True) as conn:
        assert conn.execute("SELECT version_num FROM alembic_version").fetchone() == ("0002",)
        assert len(triggers(conn, "articles")) == 4
        conn.execute("INSERT INTO articles (id, title, body, summary) VALUES (7, 'offline', 'works', 'too')")
        drain(db_url, fake_embedder("all-MiniLM-L6-v2"))
        assert store_rows(conn) == {"7": ["offline\n\nworks\n\ntoo"]}
        assert conn.execute("SELECT key FROM semsearch.keyword_search('articles_search', 'offline works', 5)"
                            ).fetchall() == [("7",)]


def test_a_new_model_autogenerates_a_version_build_and_reverses(project, db_url, conn, fake_embedder):
    alembic(project, "upgrade", "head", url=db_url)
    conn.execute("INSERT INTO articles (id, title, body, summary) VALUES (1, 'Parsing options', 'argparse', 'cli')")
    drain(db_url, fake_embedder("all-MiniLM-L6-v2"))

    write_models(project, options=", model='my-org/other-model', dimensions=768, storage='halfvec'")
    alembic(project, "revision", "--autogenerate", "-m", "other model", "--rev-id", "0003", url=db_url)
    revision = next((project / "migrations" / "versions").glob("0003_*.py")).read_text()
    # (chunk_tokens: the other model's window, the default for a model semsearch does not know)
    assert ("op.alter_search_index('articles_search', chunk_tokens=None, model='my-org/other-model', dimensions=768, "
            "storage='halfvec', existing={'chunk_tokens': 128, 'model': 'all-MiniLM-L6-v2', 'dimensions': 384, "
            "'storage': 'vector'})") in revision, revision
    alembic(project, "upgrade", "head", url=db_url)
    # The current version serves on, chunking included; the new one waits for a worker with that model.
    model, version, build = conn.execute("SELECT model, version, build FROM semsearch.status").fetchone()
    assert (model, version) == ("all-MiniLM-L6-v2", 1)
    assert build.startswith("v2 (my-org/other-model, 768 dims): embedded 0"), build
    assert conn.execute("SELECT i.chunk_tokens, b.chunk_tokens, b.storage FROM semsearch.indexes i "
                        "JOIN semsearch.builds b ON b.index_id = i.id").fetchone() == (128, None, "halfvec")
    out = alembic(project, "check", url=db_url)
    assert "No new upgrade operations detected" in out.stdout + out.stderr
    alembic(project, "downgrade", "0002", url=db_url)  # back to the current model: the build is cancelled
    assert conn.execute("SELECT count(*), to_regclass('semsearch.store_articles_search_v2') FROM semsearch.builds"
                        ).fetchone() == (0, None)
    assert store_rows(conn) == {"1": ["Parsing options\n\nargparse\n\ncli"]}
