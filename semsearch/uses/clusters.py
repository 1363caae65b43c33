"""Groups of similar rows: scikit-learn's KMeans (MiniBatchKMeans for big sets) or HDBSCAN over the row
vectors, each cluster named by its most central rows and by the keyword index's terms that are frequent
in it and rare elsewhere. The assignment can be written to a table for SQL (GROUP BY cluster)."""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from sqlalchemy import Column, Integer, MetaData, Table, Text, column, func, insert, literal, select
from sqlalchemy.dialects.postgresql import ARRAY

from ..errors import InvalidQuery
from ..query import _is_int, filter_keys
from .rows import Bind, connection, key_values, sklearn, stored_vectors, text_array

if TYPE_CHECKING:
    from sqlalchemy import ColumnElement, ColumnExpressionArgument, Connection

    from ..declaration import SearchIndex

METHODS = ("kmeans", "hdbscan")
MINIBATCH_ABOVE = 20_000  # rows from which KMeans runs in mini-batches
HDBSCAN_CLUSTER_SHARE = 0.005  # HDBSCAN's default smallest cluster: this share of the rows (5 at least)


@dataclass
class Cluster:
    label: int
    keys: list[Any]          # its rows' primary keys, most central first
    central: list[Any]       # the few rows nearest its centre
    keywords: list[str]      # terms (stems, as the keyword index holds them) frequent here and rare elsewhere

    @property
    def size(self) -> int:
        return len(self.keys)


@dataclass
class Clusters:
    clusters: list[Cluster]  # largest first
    assignment: dict[Any, int] = field(default_factory=dict)  # key -> cluster label (-1: HDBSCAN's noise)
    noise: list[Any] = field(default_factory=list)

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self.clusters)

    def __len__(self) -> int:
        return len(self.clusters)

    def __getitem__(self, i: int) -> Cluster:
        return self.clusters[i]


def cluster_keys(conn: Connection, name: str, k: int | None, method: str, keys: ColumnElement[Any] | None = None,
                 central: int = 3, keywords: int = 5, min_cluster_size: int | None = None,
                 random_state: int = 0) -> Clusters:
    """Clusters of key texts (the CLI's; the ORM maps them to the model's keys)."""
    if method not in METHODS:
        raise InvalidQuery(f"method must be one of {', '.join(METHODS)}, not {method!r}")
    vectors = stored_vectors(conn, name, keys)
    ordered = sorted(vectors, key=lambda key: (len(key), key))
    if method == "kmeans" and (not _is_int(k) or not 2 <= k <= len(ordered)):  # type: ignore[operator]
        raise InvalidQuery(f"k must be an integer from 2 to the number of rows ({len(ordered)}), not {k!r}")
    if method == "hdbscan" and len(ordered) < 2:
        raise InvalidQuery(f"clustering needs at least 2 embedded rows, not {len(ordered)}")
    x = np.stack([vectors[key] for key in ordered])
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)  # cosine: k-means on the unit sphere
    labels = _fit(x, k, method, min_cluster_size, random_state)
    terms = _terms(conn, name, ordered)
    document_frequency = Counter(t for key in ordered for t in terms.get(key, ()))
    clusters = []
    for label in sorted(set(labels) - {-1}):
        members = [i for i, value in enumerate(labels) if value == label]
        centre = x[members].mean(axis=0)
        by_centrality = sorted(members, key=lambda i: -float(x[i] @ centre))
        in_cluster = Counter(t for i in members for t in terms.get(ordered[i], ()))
        clusters.append(Cluster(int(label), [ordered[i] for i in by_centrality],
                                [ordered[i] for i in by_centrality[:central]],
                                _characteristic(in_cluster, len(members), document_frequency, len(ordered), keywords)))
    clusters.sort(key=lambda c: (-c.size, c.label))
    assignment = {ordered[i]: int(value) for i, value in enumerate(labels)}
    return Clusters(clusters, assignment, [key for key, value in assignment.items() if value == -1])


def _fit(x: np.ndarray, k: int | None, method: str, min_cluster_size: int | None, random_state: int) -> np.ndarray:
    sklearn()
    if method == "hdbscan":
        from sklearn.cluster import HDBSCAN

        size = min(min_cluster_size or max(5, round(len(x) * HDBSCAN_CLUSTER_SHARE)), len(x))
        # min_samples 3: a dense core of a few rows makes a cluster (the default, min_cluster_size, leaves
        # most rows of embedding vectors as noise)
        return np.asarray(HDBSCAN(min_cluster_size=max(size, 2), min_samples=min(3, size), copy=True).fit_predict(x))
    from sklearn.cluster import KMeans, MiniBatchKMeans

    if len(x) > MINIBATCH_ABOVE:
        return np.asarray(MiniBatchKMeans(n_clusters=k, random_state=random_state, n_init=3).fit_predict(x))
    return np.asarray(KMeans(n_clusters=k, random_state=random_state, n_init=4).fit_predict(x))


def _terms(conn: Connection, name: str, keys: list[str]) -> dict[str, set[str]]:
    rows = func.semsearch.row_terms(name, text_array(keys)).table_valued(column("key", Text), column("terms", ARRAY(Text)))
    return {key: set(terms) for key, terms in conn.execute(select(rows.c.key, rows.c.terms))}


def _characteristic(in_cluster: Counter[str], size: int, document_frequency: Counter[str], rows: int,
                    wanted: int) -> list[str]:
    """Terms by how much more often rows of the cluster have them than rows overall (a lift, weighted by
    how many of the cluster's rows have them); a term needs two rows of the cluster (or its only row)."""
    scored = []
    for term, count in in_cluster.items():
        if count < min(2, size):
            continue
        share = count / size
        scored.append((share * math.log(share / (document_frequency[term] / rows)), term))
    return [term for _, term in sorted(scored, key=lambda s: (-s[0], s[1]))[:wanted]]


def clusters(index: SearchIndex[Any], k: int | None = 20, *, method: str = "kmeans",
             filter: ColumnExpressionArgument[bool] | None = None, session: Bind = None, table: str | None = None,
             central: int = 3, keywords: int = 5, min_cluster_size: int | None = None,
             random_state: int = 0) -> Clusters:
    """Clusters of the model's primary keys. table: also (re)create that table with the model's key
    columns and `cluster`, one row per clustered row, so SQL can join it."""
    with connection(index, session, write=table is not None) as conn:
        target = assignment_table(conn, index, table) if table is not None else None
        found = cluster_keys(conn, index.name, k, method, filter_keys(index, filter), central, keywords,
                             min_cluster_size, random_state)
        values = key_values(conn, index, list(found.assignment))
        result = Clusters(
            [Cluster(c.label, [values[x] for x in c.keys if x in values], [values[x] for x in c.central if x in values],
                     c.keywords) for c in found.clusters],
            {values[x]: label for x, label in found.assignment.items() if x in values},
            [values[x] for x in found.noise if x in values])
        if target is not None:
            write_assignment(conn, target, list(index.table.primary_key.columns), result.assignment)
    return result


def assignment_table(conn: Connection, index: SearchIndex[Any], name: str) -> Table:
    """The table clusters(table=name) writes: the model's key columns and `cluster` (-1: HDBSCAN's noise).
    A table of that name that clusters() did not write (its comment says) is never dropped: an error."""
    keys = list(index.table.primary_key.columns)
    mark = f"semsearch clusters of {index.name}"
    target = Table(name, MetaData(), *(Column(c.name, c.type, primary_key=True, autoincrement=False) for c in keys),
                   Column("cluster", Integer, nullable=False, index=True), schema=index.table.schema,
                   comment=mark)
    qualified = f"{index.table.schema}.{name}" if index.table.schema else name
    existing = conn.execute(select(func.to_regclass(literal(qualified)).cast(Text))).scalar()
    if existing is not None:
        comment = conn.execute(select(func.obj_description(func.to_regclass(literal(qualified)), "pg_class"))).scalar()
        if comment != mark:
            raise InvalidQuery(f"table {qualified} exists and clusters() did not write it: give table= a new name "
                               "(a table clusters() wrote is replaced)")
    return target


def write_assignment(conn: Connection, target: Table, keys: list[Column[Any]], assignment: dict[Any, int]) -> None:
    target.drop(conn, checkfirst=True)
    target.create(conn)
    rows = [{**dict(zip((c.name for c in keys), key if len(keys) > 1 else (key,))), "cluster": label}
            for key, label in assignment.items()]
    if rows:
        conn.execute(insert(target), rows)
