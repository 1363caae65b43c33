"""A server-rendered search page over the demo's documents: FastAPI, async SQLAlchemy, Jinja2.

Fill the database with `make demo`, then, from the repository root:

    .venv/bin/uvicorn examples.webapp.app:app

It serves whatever database `semsearch demo` used (SEMSEARCH_DATABASE_URL, DATABASE_URL, or the
embedded server).
"""
from __future__ import annotations

from contextlib import asynccontextmanager
from pathlib import Path
from typing import Literal

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates
from markupsafe import Markup, escape
from sqlalchemy import Text, column, func, inspect, literal, select
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine

import semsearch
from semsearch.database import async_sqlalchemy_url, database_url
from semsearch.demo import Doc

Mode = Literal["hybrid", "semantic", "keyword"]
MODES: tuple[Mode, ...] = ("hybrid", "semantic", "keyword")
RESULTS_PER_PAGE = 10
SNIPPET_CHARS = 200

templates = Jinja2Templates(directory=Path(__file__).parent / "templates")


@asynccontextmanager
async def lifespan(app: FastAPI):
    engine = create_async_engine(async_sqlalchemy_url(database_url()))
    async with engine.connect() as connection:
        if not await connection.run_sync(lambda sync: inspect(sync).has_table(Doc.__tablename__)):
            raise RuntimeError(f"{engine.url.render_as_string(hide_password=True)} has no demo data: "
                               "run `make demo` first, it fills the database this app serves")
    app.state.sessions = async_sessionmaker(engine, expire_on_commit=False)
    # Loading the model takes seconds: pay it before the first request, off the event loop (the engine:
    # the model the database serves, which is not the declared one while a model switch is built).
    await semsearch.apreload(engine)
    yield
    await engine.dispose()


app = FastAPI(title="semsearch demo", lifespan=lifespan)


async def search(request: Request, query: str, mode: Mode) -> list[dict]:
    builders = {"hybrid": Doc.search.ahybrid, "semantic": Doc.search.asemantic,
                "keyword": Doc.search.akeyword}
    stmt = await builders[mode](query, limit=RESULTS_PER_PAGE)
    async with request.app.state.sessions() as session:
        rows = (await session.execute(stmt)).all()
        snippets = await highlighted(session, query, [snippet(doc.doc) for doc, _ in rows])
    return [result(doc, score, text) for (doc, score), text in zip(rows, snippets)]


async def highlighted(session: AsyncSession, query: str, texts: list[str]) -> list[Markup]:
    """The snippets with the query's words marked (semsearch.highlight, stems included). Each is escaped
    first, so the only markup in it is the <mark> tags."""
    escaped = func.unnest(literal([str(escape(t)) for t in texts], ARRAY(Text))).table_valued(
        column("text", Text), with_ordinality="n").render_derived()
    marked = select(func.semsearch.highlight(Doc.search.name, query, escaped.c.text)).order_by(escaped.c.n)
    return [Markup(text) for text in (await session.execute(marked)).scalars()]


def result(doc: Doc, score: float, snippet_html: Markup | str) -> dict:
    return {"id": doc.id, "name": doc.name, "kind": doc.kind, "snippet": snippet_html, "score": score}


def snippet(text: str) -> str:
    """The start of a docstring on one line, cut at a word boundary."""
    flat = " ".join(text.split())
    if len(flat) <= SNIPPET_CHARS:
        return flat
    return flat[:SNIPPET_CHARS].rsplit(" ", 1)[0] + " …"


@app.get("/", response_class=HTMLResponse)
async def search_page(request: Request, q: str = "", mode: Mode = "hybrid"):
    query = q.strip()
    results = await search(request, query, mode) if query else []
    return templates.TemplateResponse(request, "search.html", {
        "query": query, "mode": mode, "modes": MODES, "results": results, "like": None})


@app.get("/similar/{key}", response_class=HTMLResponse)
async def similar_page(request: Request, key: int):
    """The documents most like one, from its stored vectors (no model call)."""
    async with request.app.state.sessions() as session:
        doc = await session.get(Doc, key)
        if doc is None:
            raise HTTPException(404, f"no document {key}")
        rows = (await session.execute(Doc.search.similar(doc, limit=RESULTS_PER_PAGE))).all()
    return templates.TemplateResponse(request, "search.html", {
        "query": "", "mode": "hybrid", "modes": MODES, "like": doc.name,
        "results": [result(d, score, snippet(d.doc)) for d, score in rows]})
