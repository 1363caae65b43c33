"""SearchIndex: declare on a SQLAlchemy model which text columns are searchable.

    class Article(Base):
        __tablename__ = "articles"
        ...
        search = SearchIndex("title", "body")

`Base.metadata.create_all(engine)` then installs the semsearch schema and the index's store,
HNSW and GIN indexes and triggers, through the same SQL function (semsearch.create_index) that
Alembic's op.create_search_index and `semsearch install` use.
"""
from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Connection, MetaData, Select, Table, event, text

from .embedder import DEFAULT_MODEL, KNOWN_DIMENSIONS, get_embedder

DISTANCES = ("cosine", "l2", "inner_product")


def validate(columns: list[str], distance: str) -> None:
    if not columns:
        raise ValueError("SearchIndex needs at least one column name, e.g. SearchIndex('title', 'body')")
    if distance not in DISTANCES:
        raise ValueError(f"distance must be one of {', '.join(DISTANCES)}, not {distance!r}")


@dataclass
class IndexDefinition:
    """What semsearch.create_index needs; shared by SearchIndex and the Alembic operation."""

    name: str
    table: str
    columns: list[str]
    schema: str | None = None
    model: str = DEFAULT_MODEL
    dimensions: int | None = None
    distance: str = "cosine"
    ts_config: str = "english"
    chunk_tokens: int | None = None
    chunk_overlap: int = 32
    hnsw_m: int = 16
    hnsw_ef_construction: int = 64

    def __post_init__(self):
        validate(self.columns, self.distance)

    def resolved_dimensions(self) -> int:
        if self.dimensions is None:
            self.dimensions = KNOWN_DIMENSIONS.get(self.model) or get_embedder(self.model).dimensions
        return self.dimensions

    def create(self, connection: Connection) -> None:
        connection.execute(
            text("SELECT semsearch.create_index(:name, CAST(:source AS regclass), CAST(:columns AS text[]), "
                 ":model, :dimensions, :distance, CAST(:ts_config AS regconfig), :chunk_tokens, "
                 ":chunk_overlap, :hnsw_m, :hnsw_ef_construction)"),
            {"name": self.name, "source": self.qualified_table(), "columns": list(self.columns),
             "model": self.model, "dimensions": self.resolved_dimensions(), "distance": self.distance,
             "ts_config": self.ts_config, "chunk_tokens": self.chunk_tokens,
             "chunk_overlap": self.chunk_overlap, "hnsw_m": self.hnsw_m,
             "hnsw_ef_construction": self.hnsw_ef_construction},
        )

    def drop(self, connection: Connection) -> None:
        drop_index(connection, self.name)

    def qualified_table(self) -> str:
        def quote(part: str) -> str:
            return '"' + part.replace('"', '""') + '"'

        return f"{quote(self.schema)}.{quote(self.table)}" if self.schema else quote(self.table)


def drop_index(connection: Connection, name: str) -> None:
    """Drop an index's triggers, store and queued work; a missing index is not an error."""
    connection.execute(text("SELECT semsearch.drop_index(:name, true)"), {"name": name})


class SearchIndex:
    """A searchable set of text columns on a model; also the entry point for its queries."""

    def __init__(self, *columns: str, name: str | None = None, model: str = DEFAULT_MODEL,
                 dimensions: int | None = None, distance: str = "cosine", ts_config: str = "english",
                 chunk_tokens: int | None = None, chunk_overlap: int = 32,
                 hnsw_m: int = 16, hnsw_ef_construction: int = 64):
        self.columns = list(columns)
        self._name = name
        self._options = dict(model=model, dimensions=dimensions, distance=distance, ts_config=ts_config,
                             chunk_tokens=chunk_tokens, chunk_overlap=chunk_overlap, hnsw_m=hnsw_m,
                             hnsw_ef_construction=hnsw_ef_construction)
        validate(self.columns, distance)  # fail at declaration time, not at create_all
        self.model_class = None
        self.attribute = None

    def __set_name__(self, owner, attribute: str) -> None:
        self.model_class = owner
        self.attribute = attribute
        metadata = getattr(owner, "metadata", None)
        if isinstance(metadata, MetaData):
            attach(metadata, self)

    def __get__(self, instance, owner):
        return self

    @property
    def table(self) -> Table:
        table = getattr(self.model_class, "__table__", None)
        if table is None:
            raise TypeError("SearchIndex must be declared on a mapped SQLAlchemy model class")
        return table

    @property
    def name(self) -> str:
        return self._name or f"{self.table.name}_{self.attribute}".lower()

    @property
    def model(self) -> str:
        return self._options["model"]

    def definition(self) -> IndexDefinition:
        missing = [c for c in self.columns if c not in self.table.c]
        if missing:
            raise ValueError(f"SearchIndex on {self.table.name}: no column(s) {', '.join(missing)}; "
                             f"the table has {', '.join(self.table.c.keys())}")
        return IndexDefinition(self.name, self.table.name, self.columns, schema=self.table.schema, **self._options)

    # Queries: see semsearch.query.
    def semantic(self, query: str, *, limit: int = 10, candidates: int | None = None) -> Select:
        from .query import semantic

        return semantic(self, query, limit=limit, candidates=candidates)

    def keyword(self, query: str, *, limit: int = 10, candidates: int | None = None) -> Select:
        from .query import keyword

        return keyword(self, query, limit=limit, candidates=candidates)

    def hybrid(self, query: str, *, limit: int = 10, candidates: int | None = None, rrf_k: int = 60,
               semantic_weight: float = 1.0, keyword_weight: float = 1.0) -> Select:
        from .query import hybrid

        return hybrid(self, query, limit=limit, candidates=candidates, rrf_k=rrf_k,
                      semantic_weight=semantic_weight, keyword_weight=keyword_weight)


def attach(metadata: MetaData, index: SearchIndex) -> None:
    """create_all installs semsearch and creates the indexes; drop_all drops them first."""
    indexes = metadata.info.setdefault("semsearch_indexes", [])
    if not indexes:
        event.listen(metadata, "after_create", _after_create)
        event.listen(metadata, "before_drop", _before_drop)
    indexes.append(index)


def _after_create(metadata: MetaData, connection: Connection, **kw) -> None:
    from .schema import install

    install(connection)
    for index in metadata.info["semsearch_indexes"]:
        index.definition().create(connection)


def _before_drop(metadata: MetaData, connection: Connection, **kw) -> None:
    exists = connection.execute(text("SELECT to_regclass('semsearch.indexes') IS NOT NULL")).scalar()
    if exists:
        tables = kw.get("tables")
        for index in metadata.info["semsearch_indexes"]:
            if tables is None or index.table in tables:
                index.definition().drop(connection)
