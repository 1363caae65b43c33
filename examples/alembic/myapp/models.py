"""The models examples/alembic/versions/0001_articles.py migrates to (alembic/env.py imports them)."""
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from semsearch import SearchIndex


class Base(DeclarativeBase):
    pass


class Article(Base):
    __tablename__ = "articles"
    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str]
    body: Mapped[str]
    search = SearchIndex("title", "body", chunk_tokens=128, hnsw_m=24)
