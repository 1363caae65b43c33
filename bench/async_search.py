"""How long an async application's event loop stalls while searches run.

A FastAPI-style process: an AsyncEngine (postgresql+psycopg_async) and 5 searches at once, repeated.
A ticker coroutine asks to wake every millisecond and records how late it wakes: the loop's longest
stall. Measured in one run for the sync builders (the query is embedded on the loop) and for the
async ones (embedded in a worker thread). The model is warm for both.
"""
from __future__ import annotations

import asyncio
import time

from sqlalchemy import Text, create_engine
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from common import corpus, scratch_database
from semsearch import SearchIndex, Worker, preload
from semsearch.database import async_sqlalchemy_url, sqlalchemy_url

DOCS = 300
CONCURRENT = 5
ROUNDS = 20
QUERIES = ["what causes inflammation in the lungs", "gene expression in stem cells",
           "vaccine efficacy in older adults", "effects of exercise on the heart",
           "bacterial resistance to antibiotics", "sleep and memory consolidation"]


class Base(DeclarativeBase):
    pass


class Paper(Base):
    __tablename__ = "papers"
    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str] = mapped_column(Text)
    body: Mapped[str] = mapped_column(Text)
    search = SearchIndex("title", "body")


async def measure(engine, build) -> tuple[float, float]:
    """(longest loop stall in ms, wall seconds) over ROUNDS rounds of CONCURRENT searches."""
    stalls: list[float] = []
    running = True

    async def ticker():
        while running:
            before = time.perf_counter()
            await asyncio.sleep(0.001)
            stalls.append((time.perf_counter() - before - 0.001) * 1000)

    async def one(query: str):
        async with engine.connect() as conn:
            return (await conn.execute(await build(query))).all()

    tick = asyncio.create_task(ticker())
    await asyncio.sleep(0.05)
    started = time.perf_counter()
    for r in range(ROUNDS):
        results = await asyncio.gather(*(one(QUERIES[(r + i) % len(QUERIES)]) for i in range(CONCURRENT)))
        assert all(results)
    wall = time.perf_counter() - started
    running = False
    await tick
    return max(stalls), wall


async def sync_builder(query: str):
    return Paper.search.hybrid(query, limit=10)  # embeds on the event loop


async def async_builder(query: str):
    return await Paper.search.ahybrid(query, limit=10)


def main() -> None:
    docs = corpus(DOCS)
    with scratch_database() as url:
        engine = create_engine(sqlalchemy_url(url))
        Base.metadata.create_all(engine)
        with Session(engine) as session:
            session.add_all(Paper(id=i, title=t, body=b[:600]) for i, (t, b) in enumerate(docs))
            session.commit()
        Worker(url).run(drain=True)
        engine.dispose()
        preload()

        async def run():
            aengine = create_async_engine(async_sqlalchemy_url(url),
                                          pool_size=CONCURRENT)
            await measure(aengine, async_builder)  # warm the pool and the plans
            sync_stall, sync_wall = await measure(aengine, sync_builder)
            async_stall, async_wall = await measure(aengine, async_builder)
            await aengine.dispose()
            return sync_stall, sync_wall, async_stall, async_wall

        sync_stall, sync_wall, async_stall, async_wall = asyncio.run(run())
    print(f"{ROUNDS} rounds of {CONCURRENT} concurrent hybrid searches over {DOCS} documents")
    print(f"sync builders:  longest loop stall {sync_stall:.1f} ms, {ROUNDS * CONCURRENT / sync_wall:.1f} searches/s")
    print(f"async builders: longest loop stall {async_stall:.1f} ms, {ROUNDS * CONCURRENT / async_wall:.1f} searches/s")
    print(f"sync_loop_stall_ms: {sync_stall:.1f}")
    print(f"loop_stall_ms: {async_stall:.1f}")


if __name__ == "__main__":
    main()
