"""ORM flavours users bring: SQLModel table models and Flask-SQLAlchemy models bound with __bind_key__."""
from typing import ClassVar

import psycopg
from sqlalchemy import create_engine

from semsearch import SearchIndex
from semsearch.database import sqlalchemy_url

from .helpers import drain, store_rows


def test_sqlmodel_table_model(db_url, conn, fake_embedder):
    from sqlmodel import Field, Session, SQLModel, select

    class Recipe(SQLModel, table=True):
        __tablename__ = "recipes"
        id: int | None = Field(default=None, primary_key=True)
        title: str
        steps: str
        search: ClassVar[SearchIndex] = SearchIndex("title", "steps")  # ClassVar: pydantic leaves it alone

    engine = create_engine(sqlalchemy_url(db_url))
    SQLModel.metadata.create_all(engine)
    assert conn.execute("SELECT name, columns::text[] FROM semsearch.indexes").fetchall() == [
        ("recipes_search", ["title", "steps"])]
    with Session(engine) as session:
        session.add(Recipe(title="Pancakes", steps="Whisk flour, eggs and milk; fry in butter."))
        session.add(Recipe(title="Salad", steps="Wash the lettuce, add dressing."))
        session.commit()
    drain(db_url, fake_embedder("all-MiniLM-L6-v2"))
    assert len(store_rows(conn, "recipes_search")) == 2
    with Session(engine) as session:
        rows = session.exec(Recipe.search.keyword("fry eggs")).all()
        assert [(r[0].title, r[1] > 0) for r in rows] == [("Pancakes", True)]
        assert session.exec(select(Recipe).where(Recipe.title == "Salad")).one().steps.startswith("Wash")
    engine.dispose()


def test_flask_sqlalchemy_model_with_bind_key(db_url, second_db_url, fake_embedder):
    from flask import Flask
    from flask_sqlalchemy import SQLAlchemy

    app = Flask(__name__)
    app.config["SQLALCHEMY_DATABASE_URI"] = sqlalchemy_url(db_url)
    app.config["SQLALCHEMY_BINDS"] = {"content": sqlalchemy_url(second_db_url)}
    db = SQLAlchemy(app)

    class User(db.Model):
        id = db.Column(db.Integer, primary_key=True)
        name = db.Column(db.String)

    class Post(db.Model):
        __bind_key__ = "content"
        id = db.Column(db.Integer, primary_key=True)
        title = db.Column(db.String, nullable=False)
        body = db.Column(db.Text)
        search = SearchIndex("title", "body")

    with app.app_context():
        db.create_all()
        db.session.add(User(name="ann"))
        db.session.add(Post(title="Tide pools", body="Anemones and crabs live between the tides."))
        db.session.commit()

    with psycopg.connect(second_db_url) as content, psycopg.connect(db_url) as default:
        assert content.execute("SELECT name FROM semsearch.indexes").fetchall() == [("post_search",)]
        assert default.execute("SELECT to_regnamespace('semsearch')").fetchone() == (None,)
    drain(second_db_url, fake_embedder("all-MiniLM-L6-v2"))
    with app.app_context():
        found = db.session.execute(Post.search.keyword("crabs")).all()
        assert [p.title for p, _ in found] == ["Tide pools"]
        db.session.remove()  # its transaction holds a lock on post
        db.drop_all()
    with psycopg.connect(second_db_url) as content:
        assert content.execute("SELECT count(*) FROM semsearch.indexes").fetchone() == (0,)
