"""`semsearch demo`: index the Python standard library's docstrings, then ask it questions.

A real corpus on every machine with no download. The demo uses only the public API: a model with
a SearchIndex, create_all, the worker, and hybrid search through the ORM.
"""
from __future__ import annotations

import contextlib
import importlib
import inspect
import io
import sys
import time
import warnings

from sqlalchemy import String, Text, create_engine, func, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from .database import sqlalchemy_url
from .declaration import SearchIndex
from .service import report, run_workers
from .worker import Worker

QUESTIONS = [
    "how do I parse command line options",
    "compress a file",
    "measure elapsed time",
    "send an email",
    "read a CSV file",
    "run a shell command and capture its output",
]

# Modules that open windows, print on import, or belong to another platform.
SKIP = {"antigravity", "this", "idlelib", "tkinter", "turtle", "turtledemo", "lib2to3", "ensurepip",
        "pydoc_data", "msvcrt", "winreg", "winsound", "nt", "msilib", "_msi", "xxsubtype", "venv",
        "crypt", "nis", "spwd", "ossaudiodev", "sunau", "audioop", "readline", "curses"}


class DemoBase(DeclarativeBase):
    pass


class Doc(DemoBase):
    __tablename__ = "semsearch_demo_docs"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String, unique=True)
    kind: Mapped[str] = mapped_column(String)
    doc: Mapped[str] = mapped_column(Text)
    search = SearchIndex("name", "doc", name="demo_docs")


def stdlib_docstrings(limit: int) -> list[dict]:
    """Docstrings of public stdlib modules, classes and functions, modules first."""
    modules, members = [], []
    with warnings.catch_warnings():  # importing and reading deprecated modules warns
        warnings.simplefilter("ignore")
        for module_name in sorted(sys.stdlib_module_names):
            if module_name.startswith("_") or module_name in SKIP:
                continue
            try:
                with contextlib.redirect_stdout(io.StringIO()):
                    module = importlib.import_module(module_name)
            except Exception:
                continue
            doc = inspect.getdoc(module)
            if doc and len(doc) > 40:
                modules.append({"name": module_name, "kind": "module", "doc": doc})
            for attr, obj in sorted(vars(module).items()):
                if attr.startswith("_") or getattr(obj, "__module__", None) != module_name:
                    continue
                if not (inspect.isclass(obj) or inspect.isfunction(obj) or inspect.isbuiltin(obj)):
                    continue
                doc = inspect.getdoc(obj)
                if doc and len(doc) > 40:
                    members.append({"name": f"{module_name}.{attr}", "kind": "class" if inspect.isclass(obj)
                                    else "function", "doc": doc})
    docs = (modules + members)[:limit]
    for i, d in enumerate(docs, 1):
        d["id"] = i
    return docs


def run_demo(url: str, limit: int = 3000) -> int:
    """The demo's exit status: 0, or the worker's when it could not finish."""
    started = time.monotonic()
    engine = create_engine(sqlalchemy_url(url))
    print(f"database: {engine.url.render_as_string(hide_password=True)}")
    DemoBase.metadata.create_all(engine)

    docs = stdlib_docstrings(limit)
    with Session(engine) as session:
        # Upsert: unchanged rows fire no embedding work (the trigger compares the indexed columns).
        for start in range(0, len(docs), 1000):
            stmt = insert(Doc).values(docs[start:start + 1000])
            session.execute(stmt.on_conflict_do_update(
                index_elements=[Doc.id], set_={"name": stmt.excluded.name, "kind": stmt.excluded.kind,
                                               "doc": stmt.excluded.doc}))
        removed = session.execute(Doc.__table__.delete().where(Doc.id > len(docs))).rowcount
        session.commit()
        print(f"{len(docs)} docstrings from the standard library in {Doc.__tablename__}")

    embed_started = time.monotonic()
    outcome = run_workers([Worker(url, indexes=[Doc.search.name])], drain=True, show_progress=True)
    if outcome.errors or outcome.signal:
        report(outcome, several=False)
        return outcome.exit_status
    changed = max(outcome.settled - removed, 0)  # the worker settles each removed row too
    done = ([f"embedded and keyword-indexed {changed} new or changed documents"] if changed else []) + \
        ([f"removed {removed} documents from the index"] if removed else [])
    if done:
        print(f"{' and '.join(done)} in {time.monotonic() - embed_started:.1f}s")
    else:
        print("nothing to embed: every document is unchanged since the last run, and its vectors are reused")

    with Session(engine) as session:
        embedded = session.execute(select(func.count()).select_from(Doc)).scalar()
        print(f"{embedded} documents searchable\n")
        for question in QUESTIONS:
            print(f"Q: {question}")
            for doc, score in session.execute(Doc.search.hybrid(question, limit=5)):
                summary = doc.doc.strip().splitlines()[0][:80]
                print(f"   {score:.4f}  {doc.name:<38} {summary}")
            print()
    print(f"demo finished in {time.monotonic() - started:.1f}s "
          "(run it again: the data is reused and nothing is re-embedded)")
    return 0
