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
import weakref
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Generic, Literal, overload

from sqlalchemy import Connection, MetaData, Select, Table, event, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Mapper
from typing_extensions import TypeVar, Unpack

from .ddl import CreateSearchIndex, DropSearchIndex
from .errors import NotInstalled
from .options import IndexOptions

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt
    from sqlalchemy import ColumnExpressionArgument

    from .query import HybridOptions

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
        return CreateSearchIndex(self.name, self.table, self.columns, self.schema, self.options.with_dimensions())

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
        _search_indexes.add(self)

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
        from .query import embed_query

        return embed_query(self, query)

    # Queries (semsearch.query): each returns a Select of (Model, score); the a* twins embed the
    # query text in a worker thread, so an event loop never waits on the model.
    # filter= (a condition on the model, e.g. Article.tenant_id == 7) applies inside each arm, before
    # its top candidates are taken; a .where() on the returned select filters only those candidates.
    def semantic(self, query: str | None = None, *, vector: npt.ArrayLike | None = None, limit: int = 10,
                 candidates: int | None = None,
                 filter: ColumnExpressionArgument[bool] | None = None) -> Select[ModelT, float]:
        from .query import semantic

        return semantic(self, query, vector=vector, limit=limit, candidates=candidates, filter=filter)

    def keyword(self, query: str, *, limit: int = 10, candidates: int | None = None, syntax: str = "or",
                filter: ColumnExpressionArgument[bool] | None = None) -> Select[ModelT, float]:
        """BM25 ranking. syntax: "or" (natural language), "websearch" ("quoted", OR, -excluded), "phrase"
        or "prefix"."""
        from .query import keyword

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
        from .query import hybrid

        return hybrid(self, query, vector=vector, limit=limit, arm_scores=arm_scores, **options)

    async def asemantic(self, query: str | None = None, *, vector: npt.ArrayLike | None = None, limit: int = 10,
                        candidates: int | None = None,
                        filter: ColumnExpressionArgument[bool] | None = None) -> Select[ModelT, float]:
        from .query import embed_for_search_async, semantic

        model = None
        if vector is None:
            model, vector = await embed_for_search_async(self, query)
        return semantic(self, vector=vector, limit=limit, candidates=candidates, filter=filter, query_model=model)

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
        from .query import embed_for_search_async, hybrid

        model = None
        if vector is None:
            model, vector = await embed_for_search_async(self, query)
        return hybrid(self, query, vector=vector, limit=limit, arm_scores=arm_scores, query_model=model, **options)


_search_indexes: "weakref.WeakSet[SearchIndex]" = weakref.WeakSet()


def declared_search_indexes() -> list[SearchIndex]:
    """Every SearchIndex declared on a model class of this process."""
    return [index for index in list(_search_indexes) if index.model_class is not None]


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
