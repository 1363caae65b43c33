"""Search as SQLAlchemy selects: (Model, score) rows, best first, composable with
.where(), .join(), .limit(), .offset() like any other select.

Each query calls one of the SQL search functions (semsearch.semantic_search, keyword_search,
hybrid_search), so ORM users and raw-SQL users run exactly the same search SQL. The function
returns the best `candidates` keys; the select joins them to the model's table, so filters added
with .where() apply to those candidates.
"""
from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from pgvector.sqlalchemy import Vector
from sqlalchemy import Float, Integer, Select, Text, and_, cast, column, func, literal, select
from sqlalchemy.dialects.postgresql import JSONB

from .embedder import get_embedder
from .options import DEFAULT_CANDIDATES

if TYPE_CHECKING:
    from .declaration import SearchIndex


def embed_query(index: "SearchIndex", query: str):
    """The query's embedding by the index's model (loads the model on first use)."""
    if query is None:
        raise ValueError("give the query text, or its embedding as vector=")
    return get_embedder(index.model).encode([query])[0]


async def embed_query_async(index: "SearchIndex", query: str):
    """embed_query in a worker thread: the event loop keeps serving while the model runs."""
    return await asyncio.to_thread(embed_query, index, query)


def _vector_param(index: "SearchIndex", vector):
    values = [float(v) for v in vector]
    expected = index.options.dimensions
    if expected is not None and len(values) != expected:
        raise ValueError(f"index {index.name!r} holds {expected}-dimensional vectors; "
                         f"the query vector has {len(values)}")
    return cast(literal(values, Vector(len(values))), Vector(len(values)))


def _window(limit: int, candidates: int | None) -> int:
    if limit < 1:
        raise ValueError("limit must be at least 1")
    return max(candidates or DEFAULT_CANDIDATES, limit)


def _rank(index: "SearchIndex", results, limit: int) -> Select:
    """Join the function's keys to the model's rows (any primary key: see sql/keys.sql)."""
    keys = list(index.table.primary_key.columns)
    if len(keys) == 1:
        match = keys[0] == cast(results.c.key, keys[0].type)
    else:
        values = cast(results.c.key, JSONB)
        match = and_(*(key == cast(values[i].astext, key.type) for i, key in enumerate(keys)))
    return (
        select(index.model_class, results.c.score.label("score"))
        .join(results, match)
        .order_by(results.c.score.desc(), *keys)
        .limit(limit)
    )


def semantic(index: "SearchIndex", query: str | None = None, *, vector=None, limit: int = 10,
             candidates: int | None = None) -> Select:
    if vector is None:
        vector = embed_query(index, query)
    results = func.semsearch.semantic_search(
        index.name, _vector_param(index, vector), _window(limit, candidates)
    ).table_valued(column("key", Text), column("score", Float), column("rank", Integer))
    return _rank(index, results, limit)


def keyword(index: "SearchIndex", query: str, *, limit: int = 10, candidates: int | None = None) -> Select:
    results = func.semsearch.keyword_search(
        index.name, query, _window(limit, candidates)
    ).table_valued(column("key", Text), column("score", Float), column("rank", Integer))
    return _rank(index, results, limit)


def hybrid(index: "SearchIndex", query: str, *, vector=None, limit: int = 10, candidates: int | None = None,
           rrf_k: int = 60, semantic_weight: float = 1.0, keyword_weight: float = 1.0) -> Select:
    if vector is None:
        vector = embed_query(index, query)
    window = _window(limit, candidates)
    results = func.semsearch.hybrid_search(
        index.name, query, _vector_param(index, vector), window, window, rrf_k, semantic_weight, keyword_weight
    ).table_valued(column("key", Text), column("score", Float), column("semantic_rank", Integer),
                   column("keyword_rank", Integer))
    return _rank(index, results, limit)


def preload(*models: str) -> None:
    """Load embedding models now (default: the default model) and run one warm-up encode, so the
    first query of a process does not wait for them. Call it at application start-up."""
    from .options import DEFAULT_MODEL

    for model in models or (DEFAULT_MODEL,):
        get_embedder(model).encode(["warm-up"])


async def apreload(*models: str) -> None:
    """preload() in a worker thread, for an async application's start-up (e.g. FastAPI's lifespan)."""
    await asyncio.to_thread(preload, *models)
