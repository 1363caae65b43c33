"""Near-duplicate rows: pairs at least `threshold` similar (semsearch.near_duplicates, one HNSW scan per
row), grouped into connected components, largest first."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from sqlalchemy import Float, Text, column, func, select

from ..errors import InvalidQuery
from ..query import filter_keys
from .rows import Bind, connection, key_values, text_array

if TYPE_CHECKING:
    from sqlalchemy import ColumnElement, ColumnExpressionArgument, Connection

    from ..declaration import SearchIndex

K = TypeVar("K")
PROBES_PER_STATEMENT = 500  # rows probed per call: statements stay short, and progress can be shown


@dataclass
class DuplicateGroup(Generic[K]):
    """Rows that are near-copies of each other, directly or through a chain of pairs."""

    keys: list[K]
    pairs: list[tuple[K, K, float]] = field(default_factory=list)  # (key_a, key_b, similarity), most similar first

    def __len__(self) -> int:
        return len(self.keys)


def check_threshold(threshold: float) -> float:
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 < threshold <= 1 \
            or math.isnan(threshold):
        raise InvalidQuery(f"threshold must be a cosine similarity greater than 0 and at most 1, not {threshold!r} "
                           "(0.95 finds near-copies)")
    return float(threshold)


def duplicate_pairs(conn: Connection, name: str, threshold: float, keys: ColumnElement[Any] | None = None,
                    progress: Any = None) -> list[tuple[str, str, float]]:
    """Every pair (key texts) of the rows the role can read (within `keys`), probed in batches; progress:
    a tqdm-like bar to update with the rows probed."""
    threshold = check_threshold(threshold)
    vectors = func.semsearch.document_vectors(name, keys).table_valued(column("key", Text))
    probes = [row[0] for row in conn.execute(select(vectors.c.key).order_by(func.length(vectors.c.key), vectors.c.key))]
    if progress is not None:
        progress.reset(total=len(probes))
    pairs: dict[tuple[str, str], float] = {}
    for start in range(0, len(probes), PROBES_PER_STATEMENT):
        batch = probes[start:start + PROBES_PER_STATEMENT]
        found = func.semsearch.near_duplicates(name, threshold, keys, text_array(batch)).table_valued(
            column("key_a", Text), column("key_b", Text), column("similarity", Float))
        for a, b, similarity in conn.execute(select(found)):
            pairs[(a, b)] = similarity
        if progress is not None:
            progress.update(len(batch))
    return sorted(((a, b, s) for (a, b), s in pairs.items()), key=lambda p: (-p[2], len(p[0]), p[0], len(p[1]), p[1]))


def group_pairs(pairs: list[tuple[str, str, float]]) -> list[DuplicateGroup[str]]:
    """Connected components of the pairs, largest first (then by first key)."""
    parent: dict[str, str] = {}

    def root(key: str) -> str:
        while parent.setdefault(key, key) != key:
            parent[key] = parent[parent[key]]
            key = parent[key]
        return key

    for a, b, _ in pairs:
        parent[root(a)] = root(b)
    groups: dict[str, DuplicateGroup[str]] = {}
    order = lambda key: (len(key), key)  # noqa: E731 - the search functions' key order
    for key in sorted(parent, key=order):
        groups.setdefault(root(key), DuplicateGroup([])).keys.append(key)
    for a, b, similarity in pairs:
        groups[root(a)].pairs.append((a, b, similarity))
    return sorted(groups.values(), key=lambda g: (-len(g.keys), order(g.keys[0])))


def duplicates(index: SearchIndex[Any], threshold: float = 0.95, *,
               filter: ColumnExpressionArgument[bool] | None = None, session: Bind = None,
               progress: Any = None) -> list[DuplicateGroup[Any]]:
    """Groups of the model's primary keys (tuples for a composite key)."""
    with connection(index, session) as conn:
        groups = group_pairs(duplicate_pairs(conn, index.name, threshold, filter_keys(index, filter), progress))
        values = key_values(conn, index, sorted({k for g in groups for k in g.keys}))
    # (a row deleted since it was embedded is no duplicate any more)
    kept = [DuplicateGroup([values[k] for k in g.keys if k in values],
                           [(values[a], values[b], s) for a, b, s in g.pairs if a in values and b in values])
            for g in groups]
    return [g for g in kept if len(g.keys) > 1]
