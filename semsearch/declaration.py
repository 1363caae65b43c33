"""SearchIndex: declare on a SQLAlchemy model which text columns are searchable.

    class Article(Base):
        __tablename__ = "articles"
        ...
        search = SearchIndex("title", "body")

`Base.metadata.create_all(engine)` (or `await conn.run_sync(Base.metadata.create_all)`) then installs
the semsearch schema and the index's store, HNSW and GIN indexes and triggers, through the same
DDL (semsearch.ddl) that Alembic's operations and `semsearch install` run.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Generic, Literal, Sequence, overload

from sqlalchemy import Connection, MetaData, Select, Table, event, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Mapper
from typing_extensions import TypeVar, Unpack

from .ddl import CreateSearchIndex, DropSearchIndex
from .declared import remember
from .embedders import with_model_dimensions
from .errors import NotInstalled
from .options import IndexOptions
from .query import HybridOptions, embed_for_search_async, embed_query, hybrid, keyword, semantic
from .uses import classify as _classify
from .uses import clusters as _clusters
from .uses import duplicates as _duplicates
from .uses import outliers as _outliers
from .uses import passages as _passages
from .uses import similar as _similar
from .uses.rows import Bind, run_async

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt
    from sqlalchemy import ColumnExpressionArgument
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession

    from .uses.classify import EmbeddingClassifier, Prediction
    from .uses.clusters import Clusters
    from .uses.duplicates import DuplicateGroup

log = logging.getLogger("semsearch")

# The model class an index is declared on: Article.search is a SearchIndex[Article], whose queries
# select (Article, score) rows. Any until the index is read from its class.
ModelT = TypeVar("ModelT", default=Any)
OwnerT = TypeVar("OwnerT")


@dataclass
class IndexDefinition:
    """An index as DDL sees it: name, table, columns and options (shared by SearchIndex and Alembic)."""

    name: str
    table: str
    columns: list[str]
    schema: str | None = None
    options: IndexOptions = field(default_factory=IndexOptions)

    def __post_init__(self) -> None:
        if not self.columns:
            raise ValueError("a search index needs at least one column name, e.g. SearchIndex('title', 'body')")

    def create_ddl(self) -> CreateSearchIndex:
        return CreateSearchIndex(self.name, self.table, self.columns, self.schema, with_model_dimensions(self.options))

    def create(self, connection: Connection) -> None:
        connection.execute(self.create_ddl())

    def drop(self, connection: Connection) -> None:
        connection.execute(DropSearchIndex(self.name))


class SearchIndex(Generic[ModelT]):
    """A searchable set of text columns on a model; also the entry point for its queries.

    Options (model, dimensions, distance, ts_config, chunk_tokens, chunk_overlap, hnsw_m,
    hnsw_ef_construction) and their defaults: semsearch.options.IndexOptions.
    In a SQLModel `table=True` model, declare it as `search: ClassVar[SearchIndex] = SearchIndex(...)`.
    """

    def __init__(self, *columns: str, name: str | None = None, **options: Any) -> None:
        if not columns:
            raise ValueError("SearchIndex needs at least one column name, e.g. SearchIndex('title', 'body')")
        self.columns = list(columns)
        self._name = name
        self.options = IndexOptions(**options)  # fail at declaration time, not at create_all
        self.model_class: type[ModelT] | None = None
        self.attribute: str | None = None

    def __set_name__(self, owner: type[ModelT], attribute: str) -> None:
        self.model_class = owner
        self.attribute = attribute
        remember(self)

    def __get__(self, instance: object, owner: type[OwnerT]) -> SearchIndex[OwnerT]:
        """The index itself, typed by the class it is read from, so that its queries' rows are typed."""
        return self  # type: ignore[return-value]

    @property
    def table(self) -> Table:
        table: Table | None = getattr(self.model_class, "__table__", None)
        if table is None:
            raise TypeError("SearchIndex must be declared on a mapped SQLAlchemy model class")
        return table

    @property
    def name(self) -> str:
        """name=, else <table>_<attribute> (<schema>_<table>_<attribute> for a table in a named schema)."""
        if self._name:
            return self._name
        parts = [self.table.schema, self.table.name, self.attribute] if self.table.schema else \
            [self.table.name, self.attribute]
        return "_".join(str(part) for part in parts).lower()

    @property
    def model(self) -> str:
        return self.options.model

    def definition(self) -> IndexDefinition:
        missing = [c for c in self.columns if c not in self.table.c]
        if missing:
            raise ValueError(f"SearchIndex on {self.table.name}: no column(s) {', '.join(missing)}; "
                             f"the table has {', '.join(self.table.c.keys())}")
        return IndexDefinition(self.name, self.table.name, self.columns, schema=self.table.schema,
                               options=self.options)

    def embed_query(self, query: str) -> npt.NDArray[np.float32]:
        """The query's embedding by the model this index serves (a numpy array), e.g. for the SQL functions."""
        return embed_query(self, query)

    # Queries (semsearch.query): each returns a Select of (Model, score); the a* twins embed the
    # query text in a worker thread, so an event loop never waits on the model.
    # filter= (a condition on the model, e.g. Article.tenant_id == 7) applies inside each arm, before
    # its top candidates are taken; a .where() on the returned select filters only those candidates.
    def semantic(self, query: str | None = None, *, vector: npt.ArrayLike | None = None, limit: int = 10,
                 candidates: int | None = None, filter: ColumnExpressionArgument[bool] | None = None,
                 mmr: float | None = None) -> Select[ModelT, float]:
        """mmr (0 to 1): re-order by maximal marginal relevance, for results that do not repeat each other."""
        return semantic(self, query, vector=vector, limit=limit, candidates=candidates, filter=filter, mmr=mmr)

    def keyword(self, query: str, *, limit: int = 10, candidates: int | None = None, syntax: str = "or",
                filter: ColumnExpressionArgument[bool] | None = None) -> Select[ModelT, float]:
        """BM25 ranking. syntax: "or" (natural language), "websearch" ("quoted", OR, -excluded), "phrase"
        or "prefix"."""
        return keyword(self, query, limit=limit, candidates=candidates, syntax=syntax, filter=filter)

    @overload
    def hybrid(self, query: str, *, vector: npt.ArrayLike | None = None, limit: int = 10,
               arm_scores: Literal[False] = False, **options: Unpack[HybridOptions]) -> Select[ModelT, float]: ...

    @overload
    def hybrid(self, query: str, *, vector: npt.ArrayLike | None = None, limit: int = 10,
               arm_scores: Literal[True], **options: Unpack[HybridOptions]) -> Select[
                   ModelT, float, int | None, float | None, int | None, float | None]: ...

    @overload
    def hybrid(self, query: str, *, vector: npt.ArrayLike | None = None, limit: int = 10, arm_scores: bool,
               **options: Unpack[HybridOptions]) -> Select[ModelT, float, Unpack[tuple[Any, ...]]]: ...

    def hybrid(self, query: str, *, vector: npt.ArrayLike | None = None, limit: int = 10, arm_scores: bool = False,
               **options: Unpack[HybridOptions]) -> Select[ModelT, float, Unpack[tuple[Any, ...]]]:
        """Both arms, fused. Options: fusion ("rrf", "minmax", "zscore"), rrf_k, semantic_weight,
        keyword_weight, candidates (each arm's depth) or semantic_candidates / keyword_candidates,
        keyword_syntax, filter, arm_scores (each arm's rank and score on every row). Defaults:
        semsearch.options."""
        return hybrid(self, query, vector=vector, limit=limit, arm_scores=arm_scores, **options)

    async def asemantic(self, query: str | None = None, *, vector: npt.ArrayLike | None = None, limit: int = 10,
                        candidates: int | None = None, filter: ColumnExpressionArgument[bool] | None = None,
                        mmr: float | None = None) -> Select[ModelT, float]:
        model = None
        if vector is None:
            model, vector = await embed_for_search_async(self, query)
        return semantic(self, vector=vector, limit=limit, candidates=candidates, filter=filter, mmr=mmr,
                        query_model=model)

    async def akeyword(self, query: str, *, limit: int = 10, candidates: int | None = None,
                       syntax: str = "or",
                       filter: ColumnExpressionArgument[bool] | None = None) -> Select[ModelT, float]:
        return self.keyword(query, limit=limit, candidates=candidates, syntax=syntax, filter=filter)

    @overload
    async def ahybrid(self, query: str, *, vector: npt.ArrayLike | None = None, limit: int = 10,
                      arm_scores: Literal[False] = False, **options: Unpack[HybridOptions]) -> Select[ModelT, float]: ...

    @overload
    async def ahybrid(self, query: str, *, vector: npt.ArrayLike | None = None, limit: int = 10,
                      arm_scores: Literal[True], **options: Unpack[HybridOptions]) -> Select[
                          ModelT, float, int | None, float | None, int | None, float | None]: ...

    @overload
    async def ahybrid(self, query: str, *, vector: npt.ArrayLike | None = None, limit: int = 10, arm_scores: bool,
                      **options: Unpack[HybridOptions]) -> Select[ModelT, float, Unpack[tuple[Any, ...]]]: ...

    async def ahybrid(self, query: str, *, vector: npt.ArrayLike | None = None, limit: int = 10,
                      arm_scores: bool = False,
                      **options: Unpack[HybridOptions]) -> Select[ModelT, float, Unpack[tuple[Any, ...]]]:
        model = None
        if vector is None:
            model, vector = await embed_for_search_async(self, query)
        return hybrid(self, query, vector=vector, limit=limit, arm_scores=arm_scores, query_model=model, **options)

    # Beyond search (semsearch.uses): passages, similar, recommend and outliers return selects like the
    # searches; duplicates, classify, classifier and clusters run their statements on `session` (a
    # Session, Connection or Engine; by default the engine of this process whose database has the
    # index) and return results. Each honours filter= and row-level security as the searches do.
    def passages(self, query: str, *, limit: int = 10, mode: str = "hybrid",
                 filter: ColumnExpressionArgument[bool] | None = None, highlight: bool = False,
                 per_document: int | None = None, mmr: float | None = None, candidates: int | None = None,
                 start_tag: str = "<mark>", stop_tag: str = "</mark>",
                 vector: npt.ArrayLike | None = None) -> Select[ModelT, str, float, int, int | None, int | None]:
        """Chunks ranked one by one, for a prompt: (Model, passage, score, chunk_index, start, end) rows.
        mode: "hybrid", "semantic" or "keyword"; highlight: mark the query's words (start_tag, stop_tag);
        per_document: at most that many passages of one row; mmr (0 to 1): diversify."""
        return _passages.passages(self, query, limit=limit, mode=mode, filter=filter, highlight=highlight,
                                  per_document=per_document, mmr=mmr, candidates=candidates, start_tag=start_tag,
                                  stop_tag=stop_tag, vector=vector)

    async def apassages(self, query: str, *, limit: int = 10, mode: str = "hybrid",
                        filter: ColumnExpressionArgument[bool] | None = None, highlight: bool = False,
                        per_document: int | None = None, mmr: float | None = None, candidates: int | None = None,
                        start_tag: str = "<mark>",
                        stop_tag: str = "</mark>") -> Select[ModelT, str, float, int, int | None, int | None]:
        model, vector = None, None
        if mode != "keyword":
            model, vector = await embed_for_search_async(self, query)
        return _passages.passages(self, query, limit=limit, mode=mode, filter=filter, highlight=highlight,
                                  per_document=per_document, mmr=mmr, candidates=candidates, start_tag=start_tag,
                                  stop_tag=stop_tag, vector=vector, query_model=model)

    def similar(self, row_or_key: Any, *, limit: int = 10,
                filter: ColumnExpressionArgument[bool] | None = None) -> Select[ModelT, float]:
        """(Model, score) rows nearest to a row (a model instance or its primary key), never the row itself,
        from its stored vectors: no model call."""
        return _similar.similar(self, row_or_key, limit=limit, filter=filter)

    def recommend(self, positive: Sequence[Any], negative: Sequence[Any] = (), *, limit: int = 10,
                  filter: ColumnExpressionArgument[bool] | None = None) -> Select[ModelT, float]:
        """(Model, score) rows near the positive rows (or keys) and away from the negative ones, none of
        them returned: one search from mean(positive) + (mean(positive) - mean(negative))."""
        return _similar.recommend(self, positive, negative, limit=limit, filter=filter)

    def outliers(self, limit: int = 20, *, k: int = 10,
                 filter: ColumnExpressionArgument[bool] | None = None) -> Select[ModelT, float]:
        """(Model, score) rows farthest from their k nearest rows, most anomalous first."""
        return _outliers.outliers(self, limit, k=k, filter=filter)

    def duplicates(self, threshold: float = 0.95, *, filter: ColumnExpressionArgument[bool] | None = None,
                   session: Bind = None) -> list[DuplicateGroup[Any]]:
        """Groups of near-copies (keys, and each pair's similarity), largest first."""
        return _duplicates.duplicates(self, threshold, filter=filter, session=session)

    async def aduplicates(self, threshold: float = 0.95, *, filter: ColumnExpressionArgument[bool] | None = None,
                          session: AsyncSession | AsyncConnection | AsyncEngine | None = None) -> list[DuplicateGroup[Any]]:
        return await run_async(self, session, lambda bind: _duplicates.duplicates(self, threshold, filter=filter,
                                                                                  session=bind))

    def classify(self, rows_or_texts: Sequence[Any] | str, *, label: Any, k: int = 10,
                 filter: ColumnExpressionArgument[bool] | None = None, session: Bind = None) -> list[Prediction]:
        """Per input (row, key or text): (label, confidence) from its k nearest labelled rows."""
        return _classify.classify(self, rows_or_texts, label=label, k=k, filter=filter, session=session)

    async def aclassify(self, rows_or_texts: Sequence[Any] | str, *, label: Any, k: int = 10,
                        filter: ColumnExpressionArgument[bool] | None = None,
                        session: AsyncSession | AsyncConnection | AsyncEngine | None = None) -> list[Prediction]:
        return await run_async(self, session, lambda bind: _classify.classify(self, rows_or_texts, label=label, k=k,
                                                                              filter=filter, session=bind))

    def classifier(self, *, label: Any, filter: ColumnExpressionArgument[bool] | None = None,
                   session: Bind = None) -> EmbeddingClassifier:
        """A logistic regression (scikit-learn) fitted on the labelled rows' vectors, with its
        cross-validated accuracy; predict(rows_or_texts) and predict_proba(rows_or_texts)."""
        return _classify.classifier(self, label=label, filter=filter, session=session)

    async def aclassifier(self, *, label: Any, filter: ColumnExpressionArgument[bool] | None = None,
                          session: AsyncSession | AsyncConnection | AsyncEngine | None = None) -> EmbeddingClassifier:
        return await run_async(self, session, lambda bind: _classify.classifier(self, label=label, filter=filter,
                                                                                session=bind))

    def clusters(self, k: int | None = 20, *, method: str = "kmeans",
                 filter: ColumnExpressionArgument[bool] | None = None, session: Bind = None,
                 table: str | None = None, **options: Any) -> Clusters:
        """Clusters of the rows ("kmeans" with k clusters, or "hdbscan"), each with its keys, size,
        central rows and keywords; table= writes the assignment (key columns, cluster) for SQL."""
        return _clusters.clusters(self, k, method=method, filter=filter, session=session, table=table, **options)

    async def aclusters(self, k: int | None = 20, *, method: str = "kmeans",
                        filter: ColumnExpressionArgument[bool] | None = None,
                        session: AsyncSession | AsyncConnection | AsyncEngine | None = None,
                        table: str | None = None, **options: Any) -> Clusters:
        return await run_async(self, session, lambda bind: _clusters.clusters(
            self, k, method=method, filter=filter, session=bind, table=table, **options))


@event.listens_for(Mapper, "instrument_class")
def _attach_declared_indexes(mapper: Mapper[Any], class_: type[Any]) -> None:
    """Attach a model's indexes to the MetaData its table really lives in (a Flask-SQLAlchemy
    __bind_key__ model has its own), once the mapper knows that table."""
    for value in list(vars(class_).values()):
        if isinstance(value, SearchIndex) and value.model_class is class_:
            attach(mapper.local_table.metadata, value)


def attach(metadata: MetaData, index: SearchIndex) -> None:
    """create_all installs semsearch and creates the indexes; drop_all drops them first."""
    indexes = metadata.info.setdefault("semsearch_indexes", [])
    if not indexes:
        event.listen(metadata, "after_create", _after_create)
        event.listen(metadata, "before_drop", _before_drop)
    if index in indexes:
        return
    clash = next((other for other in indexes if other.name == index.name), None)
    if clash is not None:
        raise ValueError(f"two search indexes named {index.name!r} ({clash.model_class.__name__}.{clash.attribute} "
                         f"and {index.model_class.__name__}.{index.attribute}): give one SearchIndex(..., name=...)")
    indexes.append(index)


def declared_indexes(metadata: MetaData) -> list[SearchIndex]:
    return list(metadata.info.get("semsearch_indexes", []))


def _after_create(metadata: MetaData, connection: Connection, **kw: Any) -> None:
    from .schema import install, manages_semsearch

    if not manages_semsearch(connection):
        # An application role (semsearch grant --app) runs create_all at start-up: its tables exist, and
        # so must its indexes; creating or changing them is the owner's job (migrations).
        for index in declared_indexes(metadata):
            try:
                with connection.begin_nested():
                    connection.execute(text("SELECT semsearch.lookup_index(:name)"), {"name": index.name})
            except DBAPIError:
                user = connection.execute(text("SELECT current_user")).scalar()
                raise NotInstalled(f"search index {index.name!r} does not exist, and role {user!r} cannot create it: "
                                   "run create_all or your migrations as the role that installed semsearch") from None
        return
    install(connection)
    for index in declared_indexes(metadata):  # (kw["tables"] holds only the tables created this time)
        _create_or_align(connection, index.definition())


# The version an index serves and the one being built, with their models and dimensions.
_VERSIONS = text("""SELECT i.model, i.dimensions, b.version, b.model, b.dimensions FROM semsearch.indexes i
                     LEFT JOIN semsearch.builds b ON b.index_id = i.id WHERE i.name = :name""")


def _create_or_align(connection: Connection, definition: IndexDefinition) -> None:
    """Create the index, or bring it in line with its declaration. A model without declared dimensions
    takes them from the index when it already has that model, so that a restart never needs the model
    (or an embedding server); a build this starts or cancels is logged, as a stale declaration in a
    rolling deploy would otherwise change models unnoticed."""
    before = connection.execute(_VERSIONS, {"name": definition.name}).first()
    model = definition.options.model
    if definition.options.dimensions is None and before is not None and model in (before[0], before[3]):
        dimensions = before[1] if model == before[0] else before[4]
        definition = replace(definition, options=replace(definition.options, dimensions=dimensions))
    definition.create(connection)
    after = connection.execute(_VERSIONS, {"name": definition.name}).first()
    if before is None or before[2:4] == after[2:4]:
        return
    if after[2] is None:
        log.warning("create_all cancelled the build of version %s (%s) of search index %s: its declaration asks for "
                    "the model it serves, %s", before[2], before[3], definition.name, after[0])
    else:
        log.warning("create_all started building version %s of search index %s with model %s (%s dimensions), as "
                    "declared; it serves %s until a worker has built it", after[2], definition.name, after[3],
                    after[4], after[0])


def _before_drop(metadata: MetaData, connection: Connection, **kw: Any) -> None:
    exists = connection.execute(text("SELECT to_regclass('semsearch.indexes') IS NOT NULL")).scalar()
    if exists:
        tables = kw.get("tables")
        for index in declared_indexes(metadata):
            if tables is None or index.table in tables:
                index.definition().drop(connection)
