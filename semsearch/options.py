"""Every option of an index and its default, in one place.

The SQL functions' defaults (semsearch.create_index, hybrid_search, ...) are rendered from these
values when the schema is installed, so Python, SQL, create_all, Alembic and `semsearch install`
can never disagree.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields

DEFAULT_MODEL = "all-MiniLM-L6-v2"
KNOWN_DIMENSIONS = {DEFAULT_MODEL: 384, "sentence-transformers/all-MiniLM-L6-v2": 384}
DISTANCES = ("cosine", "l2", "inner_product")


@dataclass(frozen=True)
class IndexOptions:
    """How an index embeds and stores its text.

    model: sentence-transformers model name or path. dimensions: the model's output size (known for
    the default model; give it for others so DDL renders without loading the model). distance: cosine,
    l2 or inner_product. ts_config: text search configuration of the keyword arm. chunk_tokens: longest
    chunk in tokens (None: the model's window). chunk_overlap: tokens shared by consecutive chunks.
    hnsw_m, hnsw_ef_construction: HNSW build parameters.
    """

    model: str = DEFAULT_MODEL
    dimensions: int | None = None
    distance: str = "cosine"
    ts_config: str = "english"
    chunk_tokens: int | None = None
    chunk_overlap: int = 32
    hnsw_m: int = 16
    hnsw_ef_construction: int = 64

    def __post_init__(self):
        if self.distance not in DISTANCES:
            raise ValueError(f"distance must be one of {', '.join(DISTANCES)}, not {self.distance!r}")
        if self.chunk_tokens is not None and self.chunk_tokens < 1:
            raise ValueError("chunk_tokens must be at least 1 (or None for the model's window)")
        if self.chunk_overlap < 0:
            raise ValueError("chunk_overlap must be 0 or more")
        known = KNOWN_DIMENSIONS.get(self.model)
        if self.dimensions is None and known:
            object.__setattr__(self, "dimensions", known)
        elif known and self.dimensions != known:
            raise ValueError(f"model {self.model!r} makes {known}-dimensional vectors, not {self.dimensions}: "
                             "leave dimensions out for a known model")

    def with_dimensions(self) -> "IndexOptions":
        """These options with the model's dimensions filled in (loads the model only if it is unknown)."""
        if self.dimensions is not None:
            return self
        from .embedder import get_embedder

        return IndexOptions(**{**asdict(self), "dimensions": get_embedder(self.model).dimensions})

    def as_dict(self) -> dict:
        return asdict(self)


# Options alter_index can change in place (the others need a new index).
ALTERABLE = ("ts_config", "chunk_tokens", "chunk_overlap", "hnsw_m", "hnsw_ef_construction")
OPTION_NAMES = tuple(f.name for f in fields(IndexOptions))

# Defaults that exist only on the SQL side of a query or of DDL.
DEFAULT_CANDIDATES = 100       # each search arm's depth before fusion and filters
KEYWORD_SYNTAXES = ("or", "websearch", "phrase", "prefix")  # see semsearch.keyword_query in sql/search.sql
MAX_RESULTS = 10_000           # largest limit or candidates a search accepts
MAX_QUERY_CHARS = 10_000       # a longer query text is cut to this length
MAX_SCAN_TUPLES = 1_000_000    # most HNSW tuples a filtered (row-level security) semantic arm visits
SCAN_MEM_MULTIPLIER = 10       # ... and the memory it may use for that, in multiples of work_mem
DDL_LOCK_TIMEOUT = "5s"        # longest wait for a lock on an application table


def sql_defaults() -> dict:
    """The values the SQL files' {{placeholders}} stand for."""
    import json

    options = {k: v for k, v in asdict(IndexOptions()).items() if k != "dimensions"}
    return {**options, "candidates": DEFAULT_CANDIDATES, "ddl_lock_timeout": DDL_LOCK_TIMEOUT,
            "max_results": MAX_RESULTS, "max_query_chars": MAX_QUERY_CHARS, "max_scan_tuples": MAX_SCAN_TUPLES,
            "scan_mem_multiplier": SCAN_MEM_MULTIPLIER,
            "known_dimensions": json.dumps(KNOWN_DIMENSIONS)}
