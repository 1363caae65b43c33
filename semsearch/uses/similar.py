"""Rows like a row (semsearch.similar) and recommendations from liked and disliked rows
(semsearch.recommend): nearest neighbours of stored vectors, no model call."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterable

from sqlalchemy import Float, Select, Text, column, func

from ..errors import InvalidQuery
from ..query import _rank, _window, filter_keys
from .rows import key_text, key_texts

if TYPE_CHECKING:
    from sqlalchemy import ColumnExpressionArgument

    from ..declaration import ModelT, SearchIndex

_RESULT = (column("key", Text), column("score", Float))


def similar(index: SearchIndex[ModelT], row_or_key: Any, *, limit: int = 10,
            filter: ColumnExpressionArgument[bool] | None = None) -> Select[ModelT, float]:
    _window(limit, None)
    results = func.semsearch.similar(index.name, key_text(index, row_or_key), limit,
                                     filter_keys(index, filter)).table_valued(*_RESULT)
    return _rank(index, results, limit)


def recommend(index: SearchIndex[ModelT], positive: Iterable[Any], negative: Iterable[Any] = (), *,
              limit: int = 10, filter: ColumnExpressionArgument[bool] | None = None) -> Select[ModelT, float]:
    _window(limit, None)
    positive, negative = list(positive), list(negative)
    if not positive:
        raise InvalidQuery("recommend needs at least one positive row (the rows a user liked, or their keys)")
    results = func.semsearch.recommend(index.name, key_texts(index, positive), key_texts(index, negative), limit,
                                       filter_keys(index, filter)).table_valued(*_RESULT)
    return _rank(index, results, limit)
