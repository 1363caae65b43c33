"""Search as SQLAlchemy selects: (Model, score) rows, best first, composable with
.where(), .join(), .limit(), .offset() like any other select.

Each query calls one of the SQL search functions (semsearch.semantic_search, keyword_search,
hybrid_search), so ORM users and raw-SQL users run exactly the same search SQL. The function
returns the best `candidates` keys; the select joins them to the model's table, so filters added
with .where() apply to those candidates.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from pgvector.sqlalchemy import Vector
from sqlalchemy import Float, Integer, Select, Text, cast, column, func, literal, select

from .embedder import get_embedder

if TYPE_CHECKING:
    from .declaration import SearchIndex

DEFAULT_CANDIDATES = 100


def embed_query(index: "SearchIndex", query: str):
    """The query's vector, as a bound parameter of the index's vector type."""
    vector = get_embedder(index.model).encode([query])[0]
    return cast(literal(vector.tolist(), Vector(len(vector))), Vector(len(vector)))


def _window(limit: int, candidates: int | None) -> int:
    if limit < 1:
        raise ValueError("limit must be at least 1")
    return max(candidates or DEFAULT_CANDIDATES, limit)


def _rank(index: "SearchIndex", results, limit: int) -> Select:
    keys = list(index.table.primary_key.columns)
    if len(keys) != 1:
        raise TypeError(f"{index.table.name} needs a single-column primary key for semsearch")
    key = keys[0]
    return (
        select(index.model_class, results.c.score.label("score"))
        .join(results, key == cast(results.c.key, key.type))
        .order_by(results.c.score.desc(), key)
        .limit(limit)
    )


def semantic(index: "SearchIndex", query: str, *, limit: int = 10, candidates: int | None = None) -> Select:
    results = func.semsearch.semantic_search(
        index.name, embed_query(index, query), _window(limit, candidates)
    ).table_valued(column("key", Text), column("score", Float), column("rank", Integer))
    return _rank(index, results, limit)


def keyword(index: "SearchIndex", query: str, *, limit: int = 10, candidates: int | None = None) -> Select:
    results = func.semsearch.keyword_search(
        index.name, query, _window(limit, candidates)
    ).table_valued(column("key", Text), column("score", Float), column("rank", Integer))
    return _rank(index, results, limit)


def hybrid(index: "SearchIndex", query: str, *, limit: int = 10, candidates: int | None = None,
           rrf_k: int = 60, semantic_weight: float = 1.0, keyword_weight: float = 1.0) -> Select:
    window = _window(limit, candidates)
    results = func.semsearch.hybrid_search(
        index.name, query, embed_query(index, query), window, window, rrf_k, semantic_weight, keyword_weight
    ).table_valued(column("key", Text), column("score", Float), column("semantic_rank", Integer),
                   column("keyword_rank", Integer))
    return _rank(index, results, limit)
