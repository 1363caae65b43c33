"""Search quality on SciFact (BEIR format, ../shared/data/scifact: corpus, train queries, qrels), through
the public API: a model with a SearchIndex, create_all, the worker, and the ORM's three query modes.

Prints nDCG@10 (of limit=10 searches) and recall@100 (of limit=100) per mode; the last lines are
ndcg10_keyword, ndcg10_semantic and ndcg10_hybrid. Embedding the 5,183 abstracts takes a few minutes on a CPU.
--model picks the embedder (e.g. onnx:all-MiniLM-L6-v2); on a kept --database indexed with another
model, that is a model change: the worker builds the new version and switches to it before the queries.
--chunk-tokens sets the index's chunk size (default: the model's, 128 tokens for all-MiniLM-L6-v2); on
a kept --database, that is a new version too.

Before the headline lines, hybrid nDCG@10 per fusion and arm depth (semantic_candidates and
keyword_candidates both), e.g. ndcg10_hybrid_minmax_30 (the defaults), _minmax_50, _rrf_100.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import time
from collections import defaultdict
from contextlib import nullcontext
from pathlib import Path

from sqlalchemy import Text, create_engine, inspect
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from common import SCIFACT, scratch_database
from semsearch import IndexOptions, SearchIndex, Worker
from semsearch.database import sqlalchemy_url

DATA = Path(SCIFACT).parent
MODES = ("keyword", "semantic", "hybrid")
FUSION_VARIANTS = [("minmax", 30), ("minmax", 50), ("minmax", 100), ("zscore", 30), ("zscore", 50),
                   ("rrf", 30), ("rrf", 50), ("rrf", 100)]  # (fusion, depth of each arm)


class Base(DeclarativeBase):
    pass


class Paper(Base):
    __tablename__ = "scifact"
    id: Mapped[str] = mapped_column(Text, primary_key=True)
    title: Mapped[str] = mapped_column(Text)
    body: Mapped[str] = mapped_column(Text)
    search = SearchIndex("title", "body")


def load():
    corpus = [json.loads(line) for line in (DATA / "corpus.jsonl").open()]
    queries = {q["_id"]: q["text"] for q in map(json.loads, (DATA / "queries.jsonl").open())}
    qrels: dict[str, dict[str, int]] = defaultdict(dict)
    with (DATA / "qrels.tsv").open() as f:
        for row in csv.DictReader(f, delimiter="\t"):
            qrels[row["query-id"]][row["corpus-id"]] = int(row["score"])
    return corpus, {q: queries[q] for q in qrels if q in queries}, qrels


def ndcg_at_10(ranked: list[str], relevant: dict[str, int]) -> float:
    dcg = sum(relevant.get(doc, 0) / math.log2(i + 2) for i, doc in enumerate(ranked[:10]))
    ideal = sum(g / math.log2(i + 2) for i, g in enumerate(sorted(relevant.values(), reverse=True)[:10]))
    return dcg / ideal if ideal else 0.0


def recall_at_100(ranked: list[str], relevant: dict[str, int]) -> float:
    return len(set(ranked[:100]) & set(relevant)) / len(relevant)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--queries", type=int, default=0, help="only the first N queries (0: all)")
    parser.add_argument("--database", help="use this database and keep it (loaded and indexed only when its "
                                           "table is missing), instead of a scratch one")
    parser.add_argument("--model", help="the index's model (default: semsearch's default model)")
    parser.add_argument("--chunk-tokens", type=int, help="the index's chunk size in tokens (default: the model's)")
    parser.add_argument("--no-variants", action="store_true", help="skip the fusion and depth variants")
    args = parser.parse_args()
    if args.model or args.chunk_tokens:
        Paper.search.options = IndexOptions(**({"model": args.model} if args.model else {}),
                                            **({"chunk_tokens": args.chunk_tokens} if args.chunk_tokens else {}))
    corpus, queries, qrels = load()
    if args.queries:
        queries = dict(list(queries.items())[:args.queries])
    with (nullcontext(args.database) if args.database else scratch_database()) as url:
        engine = create_engine(sqlalchemy_url(url))
        if not inspect(engine).has_table(Paper.__tablename__):
            Base.metadata.create_all(engine)
            with Session(engine) as session:
                session.add_all(Paper(id=d["_id"], title=d["title"], body=d["text"]) for d in corpus)
                session.commit()
        Base.metadata.create_all(engine)  # (another model than the kept database's: a new version)
        started = time.monotonic()
        Worker(url).run(drain=True)
        print(f"indexed {len(corpus)} documents in {time.monotonic() - started:.0f} s")
        scores = {mode: ([], []) for mode in MODES}
        variants = {v: [] for v in ([] if args.no_variants else FUSION_VARIANTS)}
        with Session(engine) as session:
            for qid, text in queries.items():
                vector = Paper.search.embed_query(text)
                # nDCG@10 of what a search with limit=10 returns (each arm's depth follows the limit);
                # recall@100 of limit=100.
                for mode in MODES:
                    for limit, measure, into in ((10, ndcg_at_10, 0), (100, recall_at_100, 1)):
                        stmt = {"keyword": lambda: Paper.search.keyword(text, limit=limit),
                                "semantic": lambda: Paper.search.semantic(vector=vector, limit=limit),
                                "hybrid": lambda: Paper.search.hybrid(text, vector=vector, limit=limit)}[mode]()
                        ranked = [paper.id for paper, _ in session.execute(stmt)]
                        scores[mode][into].append(measure(ranked, qrels[qid]))
                for fusion, depth in variants:
                    stmt = Paper.search.hybrid(text, vector=vector, limit=10, fusion=fusion, candidates=depth)
                    variants[fusion, depth].append(ndcg_at_10([paper.id for paper, _ in session.execute(stmt)],
                                                              qrels[qid]))
        engine.dispose()
    print(f"{len(queries)} train queries, model {Paper.search.model}, chunk_tokens {Paper.search.options.chunk_tokens}")
    for mode in MODES:
        ndcg, recall = scores[mode]
        print(f"{mode:<9} nDCG@10 {sum(ndcg) / len(ndcg):.4f}  recall@100 {sum(recall) / len(recall):.4f}")
    for (fusion, depth), ndcg in variants.items():
        print(f"ndcg10_hybrid_{fusion}_{depth}: {sum(ndcg) / len(ndcg):.4f}")
    for mode in MODES:
        print(f"ndcg10_{mode}: {sum(scores[mode][0]) / len(scores[mode][0]):.4f}")


if __name__ == "__main__":
    main()
