"""The rows least like any other (semsearch.outliers): the distance to their k nearest rows."""
from __future__ import annotations

from typing import TYPE_CHECKING

from sqlalchemy import Float, Select, Text, column, func

from ..errors import InvalidQuery
from ..query import _is_int, _rank, _window, filter_keys

if TYPE_CHECKING:
    from sqlalchemy import ColumnExpressionArgument

    from ..declaration import ModelT, SearchIndex


def outliers(index: SearchIndex[ModelT], limit: int = 20, *, k: int = 10,
             filter: ColumnExpressionArgument[bool] | None = None) -> Select[ModelT, float]:
    """(Model, score) rows, most anomalous first: score is the mean cosine distance from the row's vector
    to its k nearest rows' (0: identical neighbours, up to 2)."""
    _window(limit, None)
    if not _is_int(k) or k < 1:
        raise InvalidQuery(f"k must be an integer of 1 or more (the neighbours each row is compared with), not {k!r}")
    results = func.semsearch.outliers(index.name, limit, k, filter_keys(index, filter)).table_valued(
        column("key", Text), column("score", Float))
    return _rank(index, results, limit)
