"""How the uses beyond search grow with the table, measured in one run: near-duplicates (and outliers)
at 1k and 5k rows. An all-pairs join grows as the square (25x for 5x the rows); through the HNSW index
each row costs one nearest-neighbour scan, so the growth stays near 5x (a little more: the graph is
deeper).

Rows: SciFact abstracts (../shared/data/scifact), with 1% near-copies. Their vectors are the real
embeddings of the abstracts (computed once and cached, as bench/search_latency.py does), a copy's the
original's plus a little noise, loaded through the worker with a zero-cost embedder that returns them:
the bench measures semsearch's database side, not the model. Each use is timed as the median of 3 runs
through the public API (SearchIndex.duplicates, SearchIndex.outliers). Last lines:
  duplicates_growth  t(duplicates at 5k rows) / t(at 1k)
  outliers_growth    t(outliers at 5k rows) / t(at 1k)
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import psycopg
from sqlalchemy import Integer, Text, create_engine
from sqlalchemy.orm import DeclarativeBase, Session, mapped_column

from common import SCIFACT, LookupEmbedder, corpus, scratch_database
from search_latency import scifact_vectors

from semsearch import SearchIndex, Worker
from semsearch.database import sqlalchemy_url

SIZES = (1_000, 5_000)
COPIES = 0.01  # share of rows that are near-copies of another row


class Base(DeclarativeBase):
    pass


def declare(rows: int) -> type:
    """A model of its own per size: docs_<rows>, its index served by the lookup-<rows> embedder."""
    return type(f"Doc{rows}", (Base,), {"__tablename__": f"docs_{rows}", "id": mapped_column(Integer, primary_key=True),
                                         "body": mapped_column(Text, nullable=False),
                                         "search": SearchIndex("body", model=f"lookup-{rows}", dimensions=384)})


def load(url: str, models: dict[int, type], base: np.ndarray, texts: list[str]) -> None:
    """Each table: the first n abstracts, a COPIES share of them replaced by copies of earlier rows."""
    rng = np.random.default_rng(5)
    engine = create_engine(sqlalchemy_url(url))
    Base.metadata.create_all(engine)
    embedders = {}
    for rows, model in models.items():
        source = np.arange(rows)
        copies = rng.choice(np.arange(rows // 2, rows), int(rows * COPIES), replace=False)
        source[copies] = rng.integers(0, rows // 2, len(copies))
        vectors = base[source] + np.where(np.isin(np.arange(rows), copies)[:, None],
                                          rng.normal(0, 0.004, (rows, base.shape[1])), 0)
        vectors = (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)
        embedders[f"lookup-{rows}"] = LookupEmbedder(f"lookup-{rows}", vectors)
        with Session(engine) as session:
            session.add_all(model(id=i + 1, body=f"{i} {texts[s]}") for i, s in enumerate(source))
            session.commit()
    Worker(url, batch_size=256, poll_interval=0.2, embedder_factory=embedders.__getitem__).run(drain=True)
    engine.dispose()
    # Timed on the structures an application has: every store with its HNSW index, statistics current
    # (the planner's row counts size each scan).
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")
        missing = conn.execute("SELECT store_table FROM semsearch.indexes i WHERE to_regclass(format('semsearch.%I', "
                               "i.store_table || '_hnsw')) IS NULL").fetchall()
        if missing:
            raise SystemExit(f"no HNSW index on {missing} after the drain")


def timed(work) -> float:
    times = []
    for _ in range(3):
        started = time.perf_counter()
        work()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    if not SCIFACT.exists():
        raise SystemExit(f"needs the SciFact corpus at {SCIFACT}")
    docs = corpus(max(SIZES))
    texts = [f"{t}\n\n{b}" for t, b in docs]
    base = scifact_vectors([{"title": t, "text": b} for t, b in docs])[:len(docs)]
    models = {rows: declare(rows) for rows in SIZES}
    with scratch_database() as url:
        load(url, models, base, texts)
        engine = create_engine(sqlalchemy_url(url))
        duplicates, outliers = {}, {}
        for rows, model in models.items():
            with Session(engine) as session:
                groups = model.search.duplicates(0.95, session=session)
                duplicates[rows] = timed(lambda: model.search.duplicates(0.95, session=session))
                outliers[rows] = timed(lambda: session.execute(model.search.outliers(20)).all())
            print(f"{rows} rows: duplicates {duplicates[rows]:.2f} s ({len(groups)} groups, "
                  f"{sum(len(g.keys) for g in groups)} rows), outliers {outliers[rows]:.2f} s", flush=True)
        engine.dispose()
    small, large = SIZES
    print(f"duplicates_growth: {duplicates[large] / duplicates[small]:.2f}")
    print(f"outliers_growth: {outliers[large] / outliers[small]:.2f}")


if __name__ == "__main__":
    main()
