"""The README's model switch, complete: an index on the default model, then the same index declared
with another model (the next deploy's code), built by the worker while the current version serves.
tests/test_readme.py runs it. The other model is all-MiniLM-L6-v2 run by ONNX Runtime in int8
(`pip install 'semsearch[onnx]'`), so nothing is downloaded; a bigger model takes dimensions= too."""
from sqlalchemy import create_engine, text
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from semsearch import SearchIndex, Worker
from semsearch.database import database_url, sqlalchemy_url

engine = create_engine(sqlalchemy_url(database_url()))


class Base(DeclarativeBase): ...


class Article(Base):  # today's declaration
    __tablename__ = "articles"
    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str]
    body: Mapped[str]
    search = SearchIndex("title", "body")


class NextBase(DeclarativeBase): ...


class NextArticle(NextBase):  # the next deploy's declaration of the same table
    __tablename__ = "articles"
    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str]
    body: Mapped[str]
    search = SearchIndex("title", "body", model="onnx:all-MiniLM-L6-v2")


Base.metadata.create_all(engine)
with Session(engine) as session:
    session.merge(Article(id=1, title="argparse", body="Parser for command-line options, arguments and sub-commands."))
    session.merge(Article(id=2, title="gzip", body="Functions that compress and decompress files."))
    session.commit()
Worker().run(drain=True)

NextBase.metadata.create_all(engine)  # starts building version 2 with the new model; version 1 serves
with Session(engine) as session:
    assert session.execute(Article.search.hybrid("compress a file", limit=1)).one()[0].title == "gzip"
Worker().run(drain=True)  # builds version 2 (walk, HNSW build, switch)

with engine.connect() as conn:
    print(conn.execute(text("SELECT version, model FROM semsearch.status WHERE index_name = 'articles_search'")).one())
with Session(engine) as session:
    article, score = session.execute(NextArticle.search.hybrid("compress a file", limit=1)).one()
    print(article.title, round(score, 3))
    assert article.title == "gzip"
