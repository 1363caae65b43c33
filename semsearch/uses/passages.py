"""Passages for retrieval-augmented generation: chunks ranked one by one (semsearch.passages), with the
row they come from, their place in its text and, on request, the query's words marked."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any
from typing import cast as type_cast

from sqlalchemy import Float, Integer, Select, Text, case, column, func, null, select

from ..errors import InvalidQuery
from ..query import _check_mmr, _is_int, _vector_param, clean_query, embed_for_search, filter_keys
from ..query import _window as check_limit
from ..query import key_join

if TYPE_CHECKING:
    import numpy.typing as npt
    from sqlalchemy import ColumnExpressionArgument

    from ..declaration import ModelT, SearchIndex

PASSAGE_MODES = ("hybrid", "semantic", "keyword")


def passages(index: SearchIndex[ModelT], query: str, *, limit: int = 10, mode: str = "hybrid",
             filter: ColumnExpressionArgument[bool] | None = None, highlight: bool = False,
             per_document: int | None = None, mmr: float | None = None, candidates: int | None = None,
             start_tag: str = "<mark>", stop_tag: str = "</mark>", vector: npt.ArrayLike | None = None,
             query_model: str | None = None) -> Select[ModelT, str, float, int, int | None, int | None]:
    """(Model, passage, score, chunk_index, start, end) rows, best first. start and end: the passage's
    character offsets in the row's indexed text (its columns joined by a blank line, as the worker reads
    them); None where that text has changed since the passage was embedded."""
    check_limit(limit, candidates)
    if mode not in PASSAGE_MODES:
        raise InvalidQuery(f"mode must be one of {', '.join(PASSAGE_MODES)}, not {mode!r}")
    if per_document is not None and (not _is_int(per_document) or per_document < 1):
        raise InvalidQuery(f"per_document must be an integer of 1 or more (or None: no cap), not {per_document!r}")
    _check_mmr(mmr)
    for tag in (start_tag, stop_tag):
        if not isinstance(tag, str) or '"' in tag:
            raise InvalidQuery(f"highlight tags must be strings without double quotes, not {tag!r}")
    query = clean_query(query)
    model = query_model
    embedding: Any = null()
    if mode != "keyword":
        if vector is None:
            model, vector = embed_for_search(index, query)
        embedding = _vector_param(index, vector, model is not None)
    results = func.semsearch.passages(
        index.name, query, embedding, limit, mode, per_document, filter_keys(index, filter),
        None if mmr is None else float(mmr), candidates, model,
    ).table_valued(column("key", Text), column("chunk_index", Integer), column("passage", Text),
                   column("score", Float), with_ordinality="ordinality")
    text = func.concat_ws("\n\n", *(index.table.c[name] for name in index.columns))
    found = func.strpos(text, results.c.passage)
    start = case((found > 0, found - 1))
    passage = (func.semsearch.highlight(index.name, query, results.c.passage, start_tag, stop_tag)
               if highlight else results.c.passage)
    return type_cast(Any, (
        select(type_cast("type[ModelT]", index.model_class), passage.label("passage"), results.c.score.label("score"),
               results.c.chunk_index.label("chunk_index"), start.label("start"),
               (start + func.length(results.c.passage)).label("end"))
        .join(results, key_join(index, results.c.key))
        .order_by(results.c.ordinality)
    ))


def highlight(index: SearchIndex[Any], query: str, passage: str, start_tag: str = "<mark>",
              stop_tag: str = "</mark>") -> Select[str]:
    """A select of the passage with the query's words (and their stems) marked: semsearch.highlight."""
    return select(func.semsearch.highlight(index.name, clean_query(query), passage, start_tag, stop_tag))
