"""The uses on the command line, for operators (no model classes needed): `semsearch similar`,
`duplicates`, `outliers` and `clusters`, each over an index by name."""
from __future__ import annotations

import json
import sys
from contextlib import contextmanager
from typing import Any, Callable, Iterator

from sqlalchemy import Connection, Float, Text, column, create_engine, func, select

from ..errors import SemsearchError
from ..options import MAX_RESULTS, OUTLIER_SUSPECTS
from .clusters import METHODS, cluster_keys
from .duplicates import PROBES_PER_STATEMENT, check_threshold, duplicate_pairs, group_pairs
from .rows import text_array


def add_commands(add: Callable[..., Any]) -> None:
    p = add("similar", cmd_similar, "rows most like a row, from its stored vectors (no model call)")
    p.add_argument("index", help="the index's name (`semsearch status` lists them)")
    p.add_argument("key", help="the row's primary key as semsearch stores it: its value (e.g. 42), or a JSON array "
                               "for a composite key")
    p.add_argument("--limit", type=int, default=10, metavar="N", help="how many rows to show (1 to 10000)")

    p = add("duplicates", cmd_duplicates, "groups of near-copies: rows whose vectors are at least --threshold similar")
    p.add_argument("index", help="the index's name")
    p.add_argument("--threshold", type=float, default=0.95, metavar="SIMILARITY",
                   help="cosine similarity from which two rows count as copies (0 < x <= 1)")
    p.add_argument("--json", action="store_true", help="print the groups as JSON: [{keys, pairs: [[a, b, similarity]]}]")

    p = add("outliers", cmd_outliers, "rows least like any other: farthest from their k nearest rows")
    p.add_argument("index", help="the index's name")
    p.add_argument("--limit", type=int, default=20, metavar="N", help="how many rows to show")
    p.add_argument("-k", type=int, default=10, metavar="K", help="nearest rows each row is compared with")

    p = add("clusters", cmd_clusters, "group the rows (k-means or HDBSCAN); one line per cluster: size, keywords "
                                      "and the start of a central row")
    p.add_argument("index", help="the index's name")
    p.add_argument("-k", type=int, default=20, metavar="K", help="how many clusters (k-means)")
    p.add_argument("--method", choices=METHODS, default="kmeans", help="kmeans (k clusters) or hdbscan (finds "
                                                                       "their number, leaves noise out)")
    p.add_argument("--json", action="store_true", help="print the clusters as JSON")


@contextmanager
def _connection(args: Any) -> Iterator[Connection]:
    from ..database import command_url, sqlalchemy_url
    from ..schema import require_installed

    engine = create_engine(sqlalchemy_url(command_url(args.url, args.command)))
    try:
        with engine.connect() as conn:
            require_installed(conn.connection.driver_connection)
            yield conn
    finally:
        engine.dispose()


def _snippets(conn: Connection, index: str, keys: list[str]) -> dict[str, str]:
    rows = func.semsearch.row_snippets(index, text_array(keys)).table_valued(column("key", Text), column("snippet", Text))
    return {key: " ".join(text.split()) for key, text in conn.execute(select(rows.c.key, rows.c.snippet))}


def _limit(value: int, option: str = "--limit") -> None:
    if not 1 <= value <= MAX_RESULTS:
        raise SemsearchError(f"{option} must be a whole number from 1 to {MAX_RESULTS}, not {value}")


def cmd_similar(args: Any) -> None:
    _limit(args.limit)
    with _connection(args) as conn:
        found = func.semsearch.similar(args.index, args.key, args.limit).table_valued(column("key", Text),
                                                                                   column("score", Float))
        rows = conn.execute(select(found.c.key, found.c.score)).all()
        snippets = _snippets(conn, args.index, [key for key, _ in rows] + [args.key])
    print(f"like key={args.key}  {snippets.get(args.key, '')[:100]}")
    for rank, (key, score) in enumerate(rows, 1):
        print(f"{rank:2d}. {score:.4f}  key={key}  {snippets.get(key, '')[:100]}")


def cmd_duplicates(args: Any) -> None:
    from ..service import progress_bar

    check_threshold(args.threshold)  # (before a progress bar shows)
    with _connection(args) as conn:
        with progress_bar(0, f"probing {args.index}") as bar:
            groups = group_pairs(duplicate_pairs(conn, args.index, args.threshold, progress=bar))
        snippets = _snippets(conn, args.index, [key for group in groups for key in group.keys])
    if args.json:
        print(json.dumps([{"keys": g.keys, "pairs": [[a, b, round(s, 6)] for a, b, s in g.pairs]} for g in groups],
                         indent=2))
        return
    if not groups:
        print(f"no rows of {args.index} are at least {args.threshold} similar", file=sys.stderr)
    for number, group in enumerate(groups, 1):
        print(f"group {number}: {len(group.keys)} rows, similarity {min(s for *_, s in group.pairs):.4f} "
              f"to {max(s for *_, s in group.pairs):.4f}")
        for key in group.keys:
            print(f"  key={key}  {snippets.get(key, '')[:100]}")


def cmd_outliers(args: Any) -> None:
    """semsearch.outliers in batches, for the progress bar: every row scored once, then the most
    anomalous share (OUTLIER_SUSPECTS) scored again without each other as neighbours, as the SQL
    function does in one call."""
    import math

    from ..service import progress_bar

    _limit(args.limit)
    with _connection(args) as conn:
        keys = func.semsearch.document_vectors(args.index).table_valued(column("key", Text))
        probes = [row[0] for row in conn.execute(select(keys.c.key))]

        def scores(batch: list[str], excluded: list[str] | None) -> list[tuple[str, float]]:
            rows = func.semsearch.outliers(args.index, len(batch), args.k, None, text_array(batch),
                                           None if excluded is None else text_array(excluded)).table_valued(
                column("key", Text), column("score", Float))
            return list(conn.execute(select(rows.c.key, rows.c.score)).tuples())

        found: dict[str, float] = {}
        suspects = math.ceil(len(probes) * OUTLIER_SUSPECTS)
        with progress_bar(len(probes) + suspects, f"probing {args.index}") as bar:
            for start in range(0, len(probes), PROBES_PER_STATEMENT):
                batch = probes[start:start + PROBES_PER_STATEMENT]
                found.update(scores(batch, None))
                bar.update(len(batch))
            ranked = sorted(found, key=lambda key: (-found[key], len(key), key))[:suspects]
            if len(probes) - len(ranked) > args.k:
                found.update(scores(ranked, ranked))
            bar.update(len(ranked))
        top = sorted(found.items(), key=lambda r: (-r[1], len(r[0]), r[0]))[:args.limit]
        snippets = _snippets(conn, args.index, [key for key, _ in top])
    for rank, (key, score) in enumerate(top, 1):
        print(f"{rank:2d}. {score:.4f}  key={key}  {snippets.get(key, '')[:100]}")


def cmd_clusters(args: Any) -> None:
    with _connection(args) as conn:
        result = cluster_keys(conn, args.index, args.k, args.method)
        snippets = _snippets(conn, args.index, [c.central[0] for c in result.clusters])
    if args.json:
        print(json.dumps([{"label": c.label, "size": c.size, "keywords": c.keywords, "central": c.central,
                           "keys": c.keys} for c in result.clusters] + ([{"label": -1, "size": len(result.noise),
                                                                          "keys": result.noise}] if result.noise else []),
                         indent=2))
        return
    for c in result.clusters:
        title = snippets.get(c.central[0], "")[:70]
        print(f"{c.size:6d}  {', '.join(c.keywords):<50}  key={c.central[0]}  {title}")
    if result.noise:
        print(f"{len(result.noise):6d}  (noise: rows in no cluster)")
