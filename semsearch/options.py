"""Every option of an index and its default, in one place.

The SQL functions' defaults (semsearch.create_index, hybrid_search, ...) are rendered from these
values when the schema is installed, so Python, SQL, create_all, Alembic and `semsearch install`
can never disagree.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from .model_specs import check_model_spec

DEFAULT_MODEL = "all-MiniLM-L6-v2"
KNOWN_DIMENSIONS = {DEFAULT_MODEL: 384, "sentence-transformers/all-MiniLM-L6-v2": 384, f"onnx:{DEFAULT_MODEL}": 384}
# The chunk size a known model embeds best: the sequence length it was trained on (all-MiniLM-L6-v2:
# 128 tokens, though it accepts 256; `bench/quality.py --chunk-tokens 256` compares the two on SciFact
# train). chunk_tokens=None means this, or the model's window for other models.
KNOWN_CHUNK_TOKENS = {DEFAULT_MODEL: 128, "sentence-transformers/all-MiniLM-L6-v2": 128, f"onnx:{DEFAULT_MODEL}": 128}
DISTANCES = ("cosine", "l2", "inner_product")
STORAGES = ("vector", "halfvec")  # the store's vector type: float4 or float2 (pgvector's halfvec)


@dataclass(frozen=True)
class IndexOptions:
    """How an index embeds and stores its text.

    model: sentence-transformers model name or path. dimensions: the model's output size (known for
    the default model; give it for others so DDL renders without loading the model). distance: cosine,
    l2 or inner_product. ts_config: text search configuration of the keyword arm. chunk_tokens: longest
    chunk in tokens (None: the length a known model was trained on, else the model's window). chunk_overlap: tokens shared by consecutive chunks.
    hnsw_m, hnsw_ef_construction: HNSW build parameters. weights: the keyword arm's weight per column
    (a dict such as {"title": 2.0}; columns left out weigh 1). bm25_k1, bm25_b: BM25's term-frequency
    saturation and length normalisation. storage: "vector" (float4) or "halfvec" (float2: half the
    store and HNSW size, for large models).
    """

    model: str = DEFAULT_MODEL
    dimensions: int | None = None
    distance: str = "cosine"
    ts_config: str = "english"
    chunk_tokens: int | None = None
    chunk_overlap: int = 32
    hnsw_m: int = 16
    hnsw_ef_construction: int = 64
    weights: tuple[tuple[str, float], ...] | None = None
    bm25_k1: float = 0.9
    bm25_b: float = 0.4
    storage: str = "vector"

    def __post_init__(self) -> None:
        if self.storage not in STORAGES:
            raise ValueError(f"storage must be one of {', '.join(STORAGES)}, not {self.storage!r}")
        if self.distance not in DISTANCES:
            raise ValueError(f"distance must be one of {', '.join(DISTANCES)}, not {self.distance!r}")
        if self.chunk_tokens is not None and self.chunk_tokens < 1:
            raise ValueError("chunk_tokens must be at least 1 (or None for the model's window)")
        if self.chunk_overlap < 0:
            raise ValueError("chunk_overlap must be 0 or more")
        if self.weights is not None:  # a dict, kept as sorted pairs without the default weight 1
            object.__setattr__(self, "weights", tuple(sorted((str(c), float(w) if isinstance(w, int) and not
                                                               isinstance(w, bool) else w)
                                                              for c, w in dict(self.weights).items() if w != 1))
                               or None)
        for column, weight in self.weights or ():
            if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not 0 <= weight < float("inf"):
                raise ValueError(f"weights[{column!r}] must be a finite number of 0 or more, not {weight!r}")
        if not 0 <= self.bm25_k1 <= 100 or not 0 <= self.bm25_b <= 1:
            raise ValueError("bm25_k1 must be from 0 to 100 and bm25_b from 0 to 1")
        check_model_spec(self.model)
        if self.chunk_tokens is None and self.model in KNOWN_CHUNK_TOKENS:
            object.__setattr__(self, "chunk_tokens", KNOWN_CHUNK_TOKENS[self.model])
        if self.chunk_tokens is not None and self.chunk_overlap >= self.chunk_tokens:  # (as semsearch.check_chunking)
            raise ValueError(f"chunk_overlap ({self.chunk_overlap}) must be less than chunk_tokens ({self.chunk_tokens}): "
                             "consecutive chunks share chunk_overlap tokens, so give a smaller chunk_overlap too, e.g. "
                             f"chunk_overlap={self.chunk_tokens // 4}")
        known = KNOWN_DIMENSIONS.get(self.model)
        if self.dimensions is None and known:
            object.__setattr__(self, "dimensions", known)
        elif known and self.dimensions != known:
            raise ValueError(f"model {self.model!r} makes {known}-dimensional vectors, not {self.dimensions}: "
                             "leave dimensions out for a known model")

    def check_weights(self, columns: list[str]) -> None:
        """weights must name the index's columns and leave at least one column weighing more than 0."""
        weights = dict(self.weights or ())
        unknown = sorted(set(weights) - set(columns))
        if unknown:
            raise ValueError(f"weights name column(s) {', '.join(unknown)} that the index does not have "
                             f"(its columns: {', '.join(columns)})")
        if not any(weights.get(c, 1.0) for c in columns):
            raise ValueError("weights cannot all be 0: the keyword arm would find nothing")

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "weights": dict(self.weights) if self.weights else None}


# Options alter_index changes in place.
ALTERABLE = ("ts_config", "chunk_tokens", "chunk_overlap", "hnsw_m", "hnsw_ef_construction", "weights", "bm25_k1",
             "bm25_b")
# Options whose change builds a new version of the vectors in the background (sql/versions.sql); its
# HNSW build may take maintenance_work_mem (e.g. "1GB"; default: the server's setting).
VERSIONED = ("model", "dimensions", "distance", "storage")
OPTION_NAMES = tuple(f.name for f in fields(IndexOptions))

# Defaults that exist only on the SQL side of a query or of DDL.
# Hybrid search: each arm's depth before fusion, and the fusion. Chosen on the SciFact train split
# (bench/quality.py): min-max normalised scores with equal weights beat reciprocal rank fusion
# (nDCG@10 0.742 against 0.734 at its best k); the semantic arm needs fewer candidates than the keyword arm.
DEFAULT_SEMANTIC_CANDIDATES = 30
DEFAULT_KEYWORD_CANDIDATES = 30
FUSIONS = ("rrf", "minmax", "zscore")  # see semsearch.hybrid_search in sql/search.sql
DEFAULT_FUSION = "minmax"
DEFAULT_RRF_K = 60
DEFAULT_SEMANTIC_WEIGHT = 1.0
DEFAULT_KEYWORD_WEIGHT = 1.0
KEYWORD_TERM_DEPTH = 1000      # postings the keyword arm reads per query term, best impact first
HYBRID_KEYWORD_TERM_DEPTH = 300  # ... in hybrid search, which also scores the semantic arm's candidates exactly
# Fusion: an arm whose candidates' scores span less than this fraction of their size is tied: vectors and
# term frequencies are stored as float4, so such differences are rounding, and scaling them to 0..1
# (min-max) or to unit deviation (z-score) would rank rows by noise.
TIED_SCORES = 1e-6
EXACT_FILTER_KEYS = 500        # a filter with at most this many keys is scored row by row (no HNSW, no postings)
MIN_EF_SEARCH = 100            # HNSW candidate list of the semantic arm, at least
EF_SEARCH_ROWS = 100_000       # ... and MIN_EF_SEARCH more per this many chunk rows in the store (to 1000)
KEYWORD_SYNTAXES = ("or", "websearch", "phrase", "prefix")  # see semsearch.keyword_query in sql/search.sql
MAX_RESULTS = 10_000           # largest limit or candidates a search accepts
MAX_QUERY_CHARS = 10_000       # a longer query text is cut to this length
OUTLIER_SUSPECTS = 0.05       # share of rows outliers() scores again without each other as neighbours
MAX_SCAN_TUPLES = 1_000_000    # most HNSW tuples a filtered (row-level security) semantic arm visits
SCAN_MEM_MULTIPLIER = 10       # ... and the memory it may use for that, in multiples of work_mem
DDL_LOCK_TIMEOUT = "5s"        # longest wait for a lock on an application table


def sql_defaults() -> dict[str, Any]:
    """The values the SQL files' {{placeholders}} stand for."""
    import json

    options = {k: v for k, v in asdict(IndexOptions()).items() if k not in ("dimensions", "weights")}
    return {**options, "semantic_candidates": DEFAULT_SEMANTIC_CANDIDATES,
            "keyword_candidates": DEFAULT_KEYWORD_CANDIDATES, "fusion": DEFAULT_FUSION, "rrf_k": DEFAULT_RRF_K,
            "semantic_weight": DEFAULT_SEMANTIC_WEIGHT, "keyword_weight": DEFAULT_KEYWORD_WEIGHT,
            "keyword_term_depth": KEYWORD_TERM_DEPTH,
            "hybrid_keyword_term_depth": HYBRID_KEYWORD_TERM_DEPTH, "tied_scores": TIED_SCORES,
            "exact_filter_keys": EXACT_FILTER_KEYS,
            "min_ef_search": MIN_EF_SEARCH, "ef_search_rows": EF_SEARCH_ROWS, "ddl_lock_timeout": DDL_LOCK_TIMEOUT,
            "max_results": MAX_RESULTS, "max_query_chars": MAX_QUERY_CHARS, "max_scan_tuples": MAX_SCAN_TUPLES,
            "scan_mem_multiplier": SCAN_MEM_MULTIPLIER, "outlier_suspects": OUTLIER_SUSPECTS,
            "known_dimensions": json.dumps(KNOWN_DIMENSIONS), "known_chunk_tokens": json.dumps(KNOWN_CHUNK_TOKENS)}
