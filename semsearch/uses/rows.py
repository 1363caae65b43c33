"""What the uses share: a row's key as semsearch stores it, keys back as the model's values, a
connection to run on, and vectors for rows or texts."""
from __future__ import annotations

import asyncio
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Sequence, TypeVar

import numpy as np
from pgvector.sqlalchemy import Vector
from sqlalchemy import Column, Connection, Engine, Text, cast, column, func, inspect, literal, select
from sqlalchemy.dialects.postgresql import ARRAY, array
from sqlalchemy.orm import Session

from ..embedders import get_embedder
from ..errors import InvalidQuery, ModelUnavailable
from ..query import engine_for, key_join, key_text_of, serving_model

if TYPE_CHECKING:
    from sqlalchemy import ColumnElement

    from ..declaration import SearchIndex


def _key_tuple(index: SearchIndex[Any], row_or_key: Any) -> tuple[Any, ...]:
    """A model instance's primary key, or a key given as a value (a tuple for a composite key)."""
    keys = list(index.table.primary_key.columns)
    if isinstance(row_or_key, index.model_class):  # type: ignore[arg-type]
        identity = inspect(row_or_key).identity or tuple(getattr(row_or_key, c.key) for c in keys)
        values = tuple(identity)
    else:
        values = tuple(row_or_key) if isinstance(row_or_key, (tuple, list)) else (row_or_key,)
    if len(values) != len(keys) or any(v is None for v in values):
        raise InvalidQuery(f"{row_or_key!r} is not a row of {index.table.name} or its primary key "
                           f"({', '.join(c.name for c in keys)})")
    return tuple(_as_key_type(v, c) for v, c in zip(values, keys))


def _as_key_type(value: Any, key: Column[Any]) -> Any:
    """A key given as text ("42" for an integer key, from a URL say) as the column's type, or an error."""
    try:
        python_type = key.type.python_type
    except NotImplementedError:
        return value
    if isinstance(value, python_type) or not isinstance(value, str):
        return value
    try:
        return python_type(value)
    except (TypeError, ValueError):
        raise InvalidQuery(f"{value!r} is not a {key.name} of {key.table.name} ({python_type.__name__})") from None


def key_text(index: SearchIndex[Any], row_or_key: Any) -> ColumnElement[str]:
    """The key text semsearch stores for a row (sql/keys.sql), computed by the server from the values."""
    keys = list(index.table.primary_key.columns)
    return key_text_of([cast(literal(v), c.type) for v, c in zip(_key_tuple(index, row_or_key), keys)])


def sklearn() -> Any:
    """scikit-learn, or an error that says how to install it."""
    try:
        import sklearn
    except ImportError as exc:
        raise ModelUnavailable("classify, classifier and clusters need scikit-learn: pip install 'semsearch[uses]'") from exc
    return sklearn


def text_array(values: Sequence[str]) -> ColumnElement[Any]:
    """Key texts as a bound text[] parameter."""
    return literal(list(values), ARRAY(Text))


def key_texts(index: SearchIndex[Any], rows_or_keys: Iterable[Any]) -> ColumnElement[Any]:
    items = list(rows_or_keys)
    if not items:
        return cast(literal("{}"), ARRAY(Text))
    return array([key_text(index, item) for item in items], type_=Text)


def key_values(conn: Connection, index: SearchIndex[Any], texts: Sequence[str]) -> dict[str, Any]:
    """{key text: primary key value (a tuple for a composite key)} for the given key texts."""
    if not texts:
        return {}
    given = func.unnest(text_array(texts)).table_valued(column("key", Text)).render_derived()
    keys = list(index.table.primary_key.columns)
    rows = conn.execute(select(given.c.key, *keys).select_from(given).join(index.table, key_join(index, given.c.key)))
    return {row[0]: (row[1] if len(keys) == 1 else tuple(row[1:])) for row in rows}


Bind = Session | Connection | Engine | None
T = TypeVar("T")


@contextmanager
def connection(index: SearchIndex[Any], bind: Bind, write: bool = False) -> Iterator[Connection]:
    """The connection to run on: a Session's (its transaction and role), a Connection, a new one of an
    Engine; with none, of the engine of this process whose database has the index. What a new
    connection wrote (write=True) is committed; a caller's session or connection commits its own."""
    if isinstance(bind, Session):
        yield bind.connection()
    elif isinstance(bind, Connection):
        yield bind
    else:
        with (bind or engine_for(index)).connect() as conn:
            yield conn
            if write:
                conn.commit()


async def run_async(index: SearchIndex[Any], bind: Any, work: Callable[[Bind], T]) -> T:
    """An async twin's work: on an AsyncSession's or AsyncConnection's sync side (its transaction and
    role), or on a connection of an AsyncEngine (committed)."""
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession

    if isinstance(bind, (AsyncSession, AsyncConnection)):
        return await bind.run_sync(work)
    if isinstance(bind, AsyncEngine):
        async with bind.connect() as conn:
            result = await conn.run_sync(work)
            await conn.commit()
            return result
    if bind is None and not engine_for(index).dialect.is_async:
        return await asyncio.to_thread(work, None)
    raise InvalidQuery("pass session= (an AsyncSession, AsyncConnection or AsyncEngine) to the async uses")


def embed_documents(index: SearchIndex[Any], texts: Sequence[str]) -> np.ndarray:
    """Texts embedded as the worker embeds a row: its chunks by the model the index serves, averaged."""
    embedder = get_embedder(serving_model(index)[0])
    options = index.options
    chunked = embedder.chunk(list(texts), options.chunk_tokens, options.chunk_overlap)
    flat = embedder.encode([c for chunks in chunked for c in chunks] or [""])
    out, start = [], 0
    for chunks in chunked:
        out.append(flat[start:start + len(chunks)].mean(axis=0) if chunks else np.zeros(flat.shape[1], np.float32))
        start += len(chunks)
    return np.asarray(out, dtype=np.float32)


def stored_vectors(conn: Connection, name: str, keys: ColumnElement[Any] | None) -> dict[str, np.ndarray]:
    """{key text: row vector} (the mean of its chunks) of index `name`, for the keys (None: every row the
    role can read)."""
    vectors = func.semsearch.document_vectors(name, keys).table_valued(column("key", Text),
                                                                             column("embedding", Vector()))
    return {key: np.asarray(vector, dtype=np.float32) for key, vector in conn.execute(select(vectors.c.key,
                                                                                             vectors.c.embedding))}


def vectors_of(conn: Connection, index: SearchIndex[Any], items: Sequence[Any]) -> tuple[np.ndarray, list[str | None]]:
    """One vector per item: a row's (or key's) stored vector, a text's embedding. Also each item's key text
    (None for a text), so that a row is left out of its own neighbours."""
    rows = [i for i, item in enumerate(items) if not isinstance(item, str)]
    texts = [i for i, item in enumerate(items) if isinstance(item, str)]
    keys: list[str | None] = [None] * len(items)
    out = np.zeros((len(items), 0), dtype=np.float32)
    found: dict[int, np.ndarray] = {}
    if rows:
        for start in range(0, len(rows), 500):  # (one column per key: a statement holds at most 1,664)
            batch = rows[start:start + 500]
            for i, key in zip(batch, conn.execute(select(*(key_text(index, items[i]) for i in batch))).one()):
                keys[i] = key
        stored = func.semsearch.row_vectors_of(index.name, text_array([k for k in keys if k is not None])).table_valued(
            column("key", Text), column("embedding", Vector()))
        vectors = {key: vector for key, vector in conn.execute(select(stored.c.key, stored.c.embedding))}
        found.update({i: np.asarray(vectors[keys[i]], dtype=np.float32) for i in rows})
    if texts:
        found.update(zip(texts, embed_documents(index, [items[i] for i in texts])))
    if found:
        out = np.stack([found[i] for i in range(len(items))])
    return out, keys
