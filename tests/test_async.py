"""Async applications: create_async_engine("postgresql+psycopg_async://..."), AsyncSession, and the
a* query builders that embed the query off the event loop, with the real model."""
import asyncio

import numpy as np
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

import semsearch
from semsearch import Worker
from semsearch.database import async_sqlalchemy_url

from .models import Article, Base


ROWS = [
    (1, "Sourdough starter", "Feed the starter flour and water daily to keep the yeast culture alive."),
    (2, "Bicycle repair", "Patch an inner tube: find the puncture, roughen the rubber, apply glue."),
    (3, "Baking bread at home", "Knead the dough, let it rise, then bake in a hot oven until golden."),
]


def test_async_engine_create_all_and_searches(db_url):
    async def main():
        engine = create_async_engine(async_sqlalchemy_url(db_url))
        async with engine.begin() as conn:
            await conn.run_sync(Base.metadata.create_all)
        async with AsyncSession(engine) as session:
            session.add_all([Article(id=i, title=t, body=b) for i, t, b in ROWS])
            await session.commit()
        await asyncio.to_thread(Worker(db_url, poll_interval=0.2).run, True)
        await semsearch.apreload()

        async with AsyncSession(engine) as session:
            hybrid = (await session.execute(await Article.search.ahybrid("how to make bread", limit=2))).all()
            semantic = (await session.execute(await Article.search.asemantic("fixing a flat tyre", limit=1))).all()
            keyword = (await session.execute(await Article.search.akeyword("puncture glue"))).all()
            composed = (await session.execute(
                (await Article.search.ahybrid("bread", limit=3)).where(Article.id != 3))).all()
            sync_hybrid = (await session.execute(Article.search.hybrid("how to make bread", limit=2))).all()
            count = (await session.execute(text("SELECT count(*) FROM semsearch.store_articles_search"))).scalar()
        await engine.dispose()
        return hybrid, semantic, keyword, composed, sync_hybrid, count

    hybrid, semantic, keyword, composed, sync_hybrid, count = asyncio.run(main())
    assert count == 3
    assert {a.id for a, _ in hybrid} == {1, 3}
    assert [(a.id, round(s, 6)) for a, s in hybrid] == [(a.id, round(s, 6)) for a, s in sync_hybrid]
    assert semantic[0][0].id == 2
    assert [a.id for a, _ in keyword] == [2]
    assert 3 not in {a.id for a, _ in composed} and composed


def test_async_builders_return_the_same_select_and_accept_a_vector():
    vector = np.linspace(-1, 1, 384).tolist()

    async def main():
        return (await Article.search.asemantic(vector=vector, limit=4),
                await Article.search.ahybrid("bread", vector=vector, limit=4),
                await Article.search.akeyword("bread", limit=4))

    asemantic, ahybrid, akeyword = asyncio.run(main())
    for built, expected in ((asemantic, Article.search.semantic(vector=vector, limit=4)),
                            (ahybrid, Article.search.hybrid("bread", vector=vector, limit=4)),
                            (akeyword, Article.search.keyword("bread", limit=4))):
        assert str(built.compile()) == str(expected.compile())
        assert built.compile().params == expected.compile().params
    with pytest.raises(ValueError, match="384-dimensional"):
        Article.search.semantic(vector=[0.5, 0.5])


def test_query_embedding_runs_off_the_event_loop(monkeypatch):
    """The loop keeps ticking while a query is embedded (a slow model stands in for the real one)."""
    import threading
    import time

    from semsearch import query

    loop_threads = []

    def slow_embed(index, q):
        loop_threads.append(threading.current_thread())
        time.sleep(0.5)
        return "all-MiniLM-L6-v2", np.ones(384)

    monkeypatch.setattr(query, "embed_for_search", slow_embed)

    async def main():
        ticks = 0

        async def ticker():
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        task = asyncio.create_task(ticker())
        await asyncio.gather(*(Article.search.ahybrid("q") for _ in range(3)))
        task.cancel()
        return ticks

    ticks = asyncio.run(main())
    assert ticks > 20  # a blocking embed would have starved the ticker
    assert all(t is not threading.main_thread() for t in loop_threads)
