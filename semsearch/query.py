"""Search as SQLAlchemy selects: (Model, score) rows, best first, composable with
.where(), .join(), .limit(), .offset() like any other select.

Each query calls one of the SQL search functions (semsearch.semantic_search, keyword_search,
hybrid_search), so ORM users and raw-SQL users run exactly the same search SQL. filter= applies inside
each arm, before its top candidates are taken (the functions' filter_keys); the select then joins the
best keys to the model's table, so a .where() added to it filters only those candidates.
"""
from __future__ import annotations

import asyncio
import logging
import math
import re
import time
import weakref
from typing import TYPE_CHECKING, Any, TypedDict
from typing import cast as type_cast

import numpy as np
import psycopg

from pgvector.sqlalchemy import Vector
from sqlalchemy import Connection, Engine, Float, Integer, Select, Text, and_, cast, column, event, func, literal, select
from sqlalchemy.dialects.postgresql import JSONB, aggregate_order_by
from typing_extensions import Unpack

from .declared import declared_search_indexes
from .embedders import encode_queries, get_embedder
from .errors import EmbedderUnavailable, InvalidQuery, NotInstalled, server_message
from .options import (DEFAULT_FUSION, DEFAULT_MODEL, DEFAULT_KEYWORD_CANDIDATES, DEFAULT_SEMANTIC_CANDIDATES, DEFAULT_KEYWORD_WEIGHT, DEFAULT_RRF_K, DEFAULT_SEMANTIC_WEIGHT,
                      FUSIONS, KEYWORD_SYNTAXES, MAX_QUERY_CHARS, MAX_RESULTS)

if TYPE_CHECKING:
    import numpy.typing as npt
    from sqlalchemy import ColumnElement, ColumnExpressionArgument, TableValuedAlias
    from sqlalchemy.ext.asyncio import AsyncEngine

    from .declaration import ModelT, SearchIndex

log = logging.getLogger("semsearch")


def clean_query(query: str | None) -> str:
    """The rule for query text: NUL characters are removed, lone surrogates become U+FFFD, and text
    beyond MAX_QUERY_CHARS characters is cut off."""
    if query is None:
        raise InvalidQuery("give the query text (or, for semantic search, its embedding as vector=)")
    query = str(query).replace("\x00", "")
    query = query.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return query[:MAX_QUERY_CHARS]


SERVING_MODEL_SECONDS = 5.0  # how long a process trusts what it read of an index's current model
_engines: "weakref.WeakSet[Engine]" = weakref.WeakSet()
_serving: dict[str, tuple[str, int | None, float]] = {}  # index name -> (model, dimensions, read at)


@event.listens_for(Engine, "engine_connect")
def _remember_engine(connection: Connection) -> None:
    """The engines of this process, to ask which model an index serves (see serving_model)."""
    _engines.add(connection.engine)


# What a search reports on a database without semsearch (and maybe without pgvector): the type, or the schema.
_NOT_INSTALLED_ERRORS = {"42704": 'type "vector" does not exist', "3F000": 'schema "semsearch" does not exist'}


@event.listens_for(Engine, "handle_error")
def _explain_not_installed(context) -> None:
    """A search on a database where semsearch is not installed says what to run, not that a type is missing."""
    error = context.original_exception
    state = getattr(error, "sqlstate", None)
    if (state in _NOT_INSTALLED_ERRORS and _NOT_INSTALLED_ERRORS[state] in str(error)
            and "semsearch." in (context.statement or "")):
        raise NotInstalled.in_database(context.engine.url.database if context.engine else None) from error


# The uses' SQL functions whose errors are about their arguments (no such row, k or threshold out of
# range): an ORM caller gets InvalidQuery with the server's message, as for Python-side checks.
_USES_FUNCTIONS = re.compile(r"function semsearch\.(row_vectors|recommend_vector|outliers|near_duplicates|mmr_order|"
                             r"passages|highlight|similar|recommend|diversify)\(")


@event.listens_for(Engine, "handle_error")
def _uses_argument_errors(context) -> None:
    error = context.original_exception
    diag = getattr(error, "diag", None)
    if (getattr(error, "sqlstate", None) in ("P0002", "22000", "22023") and diag is not None
            and diag.context and _USES_FUNCTIONS.search(diag.context)):
        raise InvalidQuery(server_message(error)) from error


def _read_serving(engine: Engine, name: str) -> tuple[str, int]:
    query = "SELECT model, dimensions FROM semsearch.lookup_index(%(name)s)"
    if engine.dialect.is_async:  # its connections belong to an event loop: ask over a connection of our own
        url = engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
        with psycopg.connect(url, connect_timeout=5) as conn:
            return tuple(conn.execute(query, {"name": name}).fetchone())
    with engine.connect() as conn:
        return tuple(conn.exec_driver_sql(query, {"name": name}).one())


def serving_model(index: SearchIndex[Any]) -> tuple[str, int | None]:
    """The model (and dimensions) of the index's current version, as its database says: queries are
    embedded with it, so they keep working while a new model is built and right after the switch.
    Read from an engine of this process every SERVING_MODEL_SECONDS; the declared model until one answers."""
    entry = _serving.get(index.name)
    if entry is not None and time.monotonic() - entry[2] < SERVING_MODEL_SECONDS:
        return entry[0], entry[1]
    model, dimensions = index.model, index.options.dimensions
    engines = list(_engines)
    if not engines:  # no engine has connected yet (preload(engine) at start-up tells us one): not cached
        return model, dimensions
    for engine in engines:
        try:
            model, dimensions = _read_serving(engine, index.name)
            break
        except Exception:  # not this engine's database (or it is down): the declared model meanwhile
            continue
    _serving[index.name] = (model, dimensions, time.monotonic())
    return model, dimensions


def engine_for(index: SearchIndex[Any]) -> Engine:
    """The engine of this process whose database has the index (for the uses that run statements
    themselves: duplicates, classify, clusters), when the caller gives no session."""
    engine = _first_serving(list(_engines), index)
    if engine is None:
        raise InvalidQuery(f"no engine of this process has connected to a database with search index {index.name!r}: "
                           "pass session= (a Session, Connection or Engine)")
    return engine


def embed_query(index: SearchIndex[Any], query: str) -> npt.NDArray[np.float32]:
    """The query's embedding by the model the index serves (loads the model on first use)."""
    return embed_for_search(index, query)[1]


def embed_for_search(index: SearchIndex[Any], query: str | None) -> tuple[str, npt.NDArray[np.float32]]:
    """(model, embedding): the model is passed to the search functions with the vector it made."""
    model = serving_model(index)[0]
    embedding: npt.NDArray[np.float32] = encode_queries(get_embedder(model), [clean_query(query)])[0]
    return model, embedding


async def embed_for_search_async(index: SearchIndex[Any], query: str | None) -> tuple[str, npt.NDArray[np.float32]]:
    """embed_for_search in a worker thread: the event loop keeps serving while the model runs."""
    return await asyncio.to_thread(embed_for_search, index, query)


def _vector_param(index: SearchIndex[Any], vector: npt.ArrayLike, embedded: bool = False) -> ColumnElement[Any]:
    """The query vector as a bound parameter, checked with numpy (it is on the path of every query).
    A caller's vector must fit the model the index serves; one we embedded fits its own model."""
    values = np.asarray(vector, dtype=np.float32).ravel()
    expected = None if embedded else serving_model(index)[1]
    if expected is not None and len(values) != expected:
        raise InvalidQuery(f"index {index.name!r} holds {expected}-dimensional vectors; "
                           f"the query vector has {len(values)}")
    if not np.isfinite(values).all():
        raise InvalidQuery("the query vector holds NaN or infinite values")
    if index.options.distance == "cosine" and not values.any():
        raise InvalidQuery("the query vector is all zeros, which has no cosine distance")
    # Sent as vector text with 9 significant digits (exact for float32): a third of the time pgvector's
    # own formatting takes for 384 values.
    text = "[" + ",".join(["%.9g" % v for v in values.tolist()]) + "]"
    return cast(literal(text, Text), Vector(len(values)))


def _window(limit: int, candidates: int | None, default: int | None = None) -> int:
    """Depth of an arm: `candidates`, else `default`, else just `limit`; never below `limit`."""
    if not _is_int(limit) or not 1 <= limit <= MAX_RESULTS:
        raise InvalidQuery(f"limit must be an integer from 1 to {MAX_RESULTS}, not {limit!r}")
    if candidates is not None and (not _is_int(candidates) or not 1 <= candidates <= MAX_RESULTS):
        raise InvalidQuery(f"candidates must be an integer from 1 to {MAX_RESULTS}, not {candidates!r}")
    return max(candidates or default or limit, limit)


def _syntax(syntax: str) -> str:
    if syntax not in KEYWORD_SYNTAXES:
        raise InvalidQuery(f"keyword syntax must be one of {', '.join(KEYWORD_SYNTAXES)}, not {syntax!r}")
    return syntax


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _fusion(fusion: str, rrf_k: int, semantic_weight: float, keyword_weight: float) -> None:
    if fusion not in FUSIONS:
        raise InvalidQuery(f"fusion must be one of {', '.join(FUSIONS)}, not {fusion!r}")
    if not _is_int(rrf_k) or not 1 <= rrf_k <= 1_000_000:
        raise InvalidQuery(f"rrf_k must be an integer from 1 to 1000000, not {rrf_k!r}")
    for name, weight in (("semantic_weight", semantic_weight), ("keyword_weight", keyword_weight)):
        if not (isinstance(weight, (int, float)) and not isinstance(weight, bool) and math.isfinite(weight)
                and weight >= 0):
            raise InvalidQuery(f"{name} must be a finite number of 0 or more, not {weight!r}")
    if semantic_weight == 0 and keyword_weight == 0:
        raise InvalidQuery("semantic_weight and keyword_weight cannot both be 0")


def filter_keys(index: SearchIndex[Any],
                condition: ColumnExpressionArgument[bool] | None) -> ColumnElement[Any] | None:
    """ARRAY(SELECT <key text> FROM <table> WHERE condition): the keys the search functions may return.
    The key text is the one semsearch stores (sql/keys.sql): a single column's value as JSON text without
    quotes (its plain text for integers, text and uuid), a composite key's JSON array."""
    if condition is None:
        return None
    return func.array(select(stored_key(index)).select_from(index.table).where(condition).correlate(None)
                      .scalar_subquery())


def stored_key(index: SearchIndex[Any]) -> ColumnElement[str]:
    """The key text semsearch stores for each row of the index's table (see filter_keys)."""
    return key_text_of(list(index.table.primary_key.columns))


def key_text_of(values: list[ColumnElement[Any]]) -> ColumnElement[str]:
    """The key text of primary-key values (columns, or values cast to their columns' types)."""
    if len(values) == 1:
        return func.jsonb_build_array(values[0]).op("->>")(literal(0))
    return cast(func.jsonb_build_array(*values), Text)


def key_join(index: SearchIndex[Any], key: ColumnElement[Any]) -> ColumnElement[bool]:
    """The model's row whose key text is `key`, matched through the primary key's own index."""
    keys = list(index.table.primary_key.columns)
    if len(keys) == 1:
        return keys[0] == cast(key, keys[0].type)
    values = cast(key, JSONB)
    return and_(*(c == cast(values[i].astext, c.type) for i, c in enumerate(keys)))


def _rank(index: SearchIndex[ModelT], results: TableValuedAlias, limit: int,
          *extra: ColumnElement[Any], ordered: bool = False) -> Select[ModelT, float, Unpack[tuple[Any, ...]]]:
    """Join the function's keys to the model's rows (any primary key: see sql/keys.sql). ordered: in the
    function's own order (its rank column), not by score."""
    match = key_join(index, results.c.key)
    order = [results.c.rank] if ordered else [results.c.score.desc()]
    return (
        select(type_cast("type[ModelT]", index.model_class), results.c.score.label("score"), *extra)
        .join(results, match)
        # Ties as the search functions cut them: key text, shorter first (numeric order for integer keys).
        .order_by(*order, func.length(results.c.key), results.c.key)
        .limit(limit)
    )


def _check_mmr(mmr: float | None) -> None:
    if mmr is not None and not (isinstance(mmr, (int, float)) and not isinstance(mmr, bool) and 0 <= mmr <= 1):
        raise InvalidQuery(f"mmr must be a number from 0 to 1 (1: relevance only, 0: diversity only), not {mmr!r}")


def _diversified(index: SearchIndex[ModelT], results: TableValuedAlias, limit: int,
                 mmr: float) -> Select[ModelT, float]:
    """The search's rows re-ordered by maximal marginal relevance over the rows' vectors (semsearch.diversify)."""
    pairs = select(func.jsonb_agg(aggregate_order_by(func.jsonb_build_array(results.c.key, results.c.score),
                                                     results.c.score.desc(), func.length(results.c.key),
                                                     results.c.key))).scalar_subquery()
    chosen = func.semsearch.diversify(index.name, pairs, float(mmr), limit).table_valued(*_ARM_COLUMNS)
    return _rank(index, chosen, limit, ordered=True)


def mmr_depth(limit: int, candidates: int | None) -> int:
    """Rows an MMR search chooses from: candidates, else three times the limit (30 at least)."""
    return min(max(candidates or 0, 3 * limit, 30), MAX_RESULTS)


_ARM_COLUMNS = (column("key", Text), column("score", Float), column("rank", Integer))


def semantic(index: SearchIndex[ModelT], query: str | None = None, *, vector: npt.ArrayLike | None = None,
             limit: int = 10, candidates: int | None = None, filter: ColumnExpressionArgument[bool] | None = None,
             mmr: float | None = None, query_model: str | None = None) -> Select[ModelT, float]:
    """query_model: the model that made `vector` (None for a caller's vector: the index's, or the one
    it served just before a switch, by its dimensions). mmr: see _diversified."""
    window = _window(limit, candidates)
    _check_mmr(mmr)
    model = query_model
    if vector is None:
        model, vector = embed_for_search(index, query)
    results = func.semsearch.semantic_search(
        index.name, _vector_param(index, vector, model is not None),
        window if mmr is None else mmr_depth(limit, candidates), filter_keys(index, filter), model
    ).table_valued(*_ARM_COLUMNS)
    if mmr is not None:
        return _diversified(index, results, limit, mmr)
    return _rank(index, results, limit)


def keyword(index: SearchIndex[ModelT], query: str, *, limit: int = 10, candidates: int | None = None,
            syntax: str = "or", filter: ColumnExpressionArgument[bool] | None = None) -> Select[ModelT, float]:
    results = func.semsearch.keyword_search(
        index.name, clean_query(query), _window(limit, candidates), _syntax(syntax), filter_keys(index, filter)
    ).table_valued(*_ARM_COLUMNS)
    return _rank(index, results, limit)


class HybridOptions(TypedDict, total=False):
    """hybrid()'s ranking options, as SearchIndex.hybrid and ahybrid pass them on (for type checkers)."""

    candidates: int | None
    semantic_candidates: int | None
    keyword_candidates: int | None
    fusion: str
    rrf_k: int
    semantic_weight: float
    keyword_weight: float
    keyword_syntax: str
    filter: ColumnExpressionArgument[bool] | None
    mmr: float | None


def hybrid(index: SearchIndex[ModelT], query: str, *, vector: npt.ArrayLike | None = None, limit: int = 10,
           candidates: int | None = None, semantic_candidates: int | None = None,
           keyword_candidates: int | None = None, fusion: str = DEFAULT_FUSION, rrf_k: int = DEFAULT_RRF_K,
           semantic_weight: float = DEFAULT_SEMANTIC_WEIGHT, keyword_weight: float = DEFAULT_KEYWORD_WEIGHT,
           keyword_syntax: str = "or", filter: ColumnExpressionArgument[bool] | None = None, mmr: float | None = None,
           arm_scores: bool = False, query_model: str | None = None) -> Select[ModelT, float, Unpack[tuple[Any, ...]]]:
    """arm_scores=True adds each arm's rank and score to every row (semantic_rank, semantic_score,
    keyword_rank, keyword_score), to tune weights with. A rank is None where the row was not among that
    arm's own candidates (rows that score the same share a rank); with the score fusions each arm still
    scores it (keyword 0 where no query word occurs, semantic None only for a row not embedded yet).
    With rrf, an arm's score is None too where its rank is. mmr: re-ordered by maximal marginal relevance
    (see _diversified), without arm scores."""
    _check_mmr(mmr)
    if mmr is not None and arm_scores:
        raise InvalidQuery("arm_scores and mmr do not go together: MMR re-orders the fused rows")
    semantic_depth = _window(limit, semantic_candidates or candidates, DEFAULT_SEMANTIC_CANDIDATES)
    keyword_depth = _window(limit, keyword_candidates or candidates, DEFAULT_KEYWORD_CANDIDATES)
    _fusion(fusion, rrf_k, semantic_weight, keyword_weight)
    _syntax(keyword_syntax)
    query = clean_query(query)
    model = query_model
    if vector is None:
        model, vector = embed_for_search(index, query)
    results = func.semsearch.hybrid_search(
        index.name, query, _vector_param(index, vector, model is not None),
        limit if mmr is None else mmr_depth(limit, candidates), None, rrf_k, semantic_weight,
        keyword_weight,
        keyword_syntax, filter_keys(index, filter), fusion, semantic_depth, keyword_depth, model
    ).table_valued(column("key", Text), column("score", Float), column("semantic_rank", Integer),
                   column("keyword_rank", Integer), column("semantic_score", Float), column("keyword_score", Float))
    if mmr is not None:
        return _diversified(index, results, limit, mmr)
    extra = [results.c.semantic_rank, results.c.semantic_score, results.c.keyword_rank,
             results.c.keyword_score] if arm_scores else []
    return _rank(index, results, limit, *extra)


def preload(*engines_or_models: Engine | AsyncEngine | str) -> None:
    """Load the models queries will embed with now, and run one warm-up encode, so the first query of
    a process waits for neither. Call it at application start-up with your engine (sync or async):
    each declared SearchIndex's model is then the one its database serves (during a model switch, not
    necessarily the declared one), and queries know where to ask from their first. Model names may be
    given too; with neither, the default model."""
    models = [m for m in engines_or_models if isinstance(m, str)]
    engines = [e if isinstance(e, Engine) else e.sync_engine for e in engines_or_models if not isinstance(e, str)]
    for engine in engines:
        _engines.add(engine)
    for index in declared_search_indexes() if engines else []:
        served = _served_by(engines, index)
        if served is not None:  # an index none of these databases has is not theirs to serve
            models.append(served)
    for model in dict.fromkeys(models or [DEFAULT_MODEL]):
        try:
            encode_queries(get_embedder(model), ["warm-up"])
        except EmbedderUnavailable as exc:  # a service that is down must not keep the application from starting
            log.warning("preload: %s; semantic and hybrid queries raise EmbedderUnavailable until it answers "
                        "(keyword search needs no model)", exc)


def _served_by(engines: list[Engine], index: SearchIndex[Any]) -> str | None:
    """The model the first of the engines' databases that has the index serves (remembered for queries)."""
    return _serving[index.name][0] if _first_serving(engines, index) is not None else None


def _first_serving(engines: list[Engine], index: SearchIndex[Any]) -> Engine | None:
    """The first of the engines whose database has the index; what it serves is remembered for queries."""
    for engine in engines:
        try:
            model, dimensions = _read_serving(engine, index.name)
        except Exception:  # not this engine's database (or it is down)
            continue
        _serving[index.name] = (model, dimensions, time.monotonic())
        return engine
    return None


async def apreload(*engines_or_models: Engine | AsyncEngine | str) -> None:
    """preload() in a worker thread, for an async application's start-up (e.g. FastAPI's lifespan)."""
    await asyncio.to_thread(preload, *engines_or_models)
