"""Any primary key: one column of any type with a btree order, or several columns, through triggers,
queue, backfill (worker and CLI), worker, store and ORM queries."""
import datetime
import decimal
import subprocess
import sys
import uuid

import pytest
from sqlalchemy import Date, Numeric, String, create_engine, delete, update
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from semsearch import SearchIndex
from semsearch.database import sqlalchemy_url

from .helpers import drain, store_rows

KEYS = {
    "int": (int, None, [3, 1, 2]),
    "bigint": (int, None, [2**40 + 1, 2**40, -5]),
    "text": (str, String, ["b", "a'quote", "c d"]),
    "uuid": (uuid.UUID, None, [uuid.UUID(int=3), uuid.UUID(int=1), uuid.uuid4()]),
    "date": (datetime.date, Date, [datetime.date(2024, 2, 29), datetime.date(1999, 12, 31), datetime.date(2030, 1, 1)]),
    "numeric": (decimal.Decimal, Numeric(12, 3), [decimal.Decimal("1.500"), decimal.Decimal("-2.250"),
                                                 decimal.Decimal("1000000.001")]),
}


def single_key_model(kind):
    python_type, column_type, _ = KEYS[kind]
    from sqlalchemy import BigInteger

    class Base(DeclarativeBase):
        pass

    key_column = mapped_column(BigInteger if kind == "bigint" else column_type, primary_key=True) \
        if (column_type or kind == "bigint") else mapped_column(primary_key=True)

    class Doc(Base):
        __tablename__ = f"docs_{kind}"
        __annotations__ = {"id": Mapped[python_type], "body": Mapped[str]}
        id = key_column
        body = mapped_column()
        search = SearchIndex("body")

    return Base, Doc


def composite_key_model():
    class Base(DeclarativeBase):
        pass

    class Doc(Base):
        __tablename__ = "docs_composite"
        tenant: Mapped[uuid.UUID] = mapped_column(primary_key=True)
        day: Mapped[datetime.date] = mapped_column(primary_key=True)
        slug: Mapped[str] = mapped_column(primary_key=True)
        body: Mapped[str]
        search = SearchIndex("body")

    return Base, Doc


def exercise(db_url, conn, Base, Doc, make_keys, fake_embedder):
    """Insert, search, update, delete; then a backfill of rows that predate the index."""
    engine = create_engine(sqlalchemy_url(db_url))
    Base.metadata.create_all(engine)
    keys = make_keys()
    with Session(engine) as session:
        for n, key in enumerate(keys):
            session.add(Doc(**key, body=f"document number {n} about topic{n}"))
        session.commit()
    drain(db_url, fake_embedder("all-MiniLM-L6-v2"))
    assert len(store_rows(conn, Doc.search.name)) == 3

    with Session(engine) as session:
        found = session.execute(Doc.search.keyword("topic1")).all()
        assert [(row[0].body, round(row[1], 6) > 0) for row in found] == [("document number 1 about topic1", True)]
        pk = {k: getattr(found[0][0], k) for k in keys[1]}
        assert pk == keys[1]
        ranked = session.execute(Doc.search.hybrid("document topic2", vector=[0.1] * 384, limit=3)).all()
        assert ranked[0][0].body.endswith("topic2") and len(ranked) == 3
        session.execute(update(Doc).filter_by(**keys[2]).values(body="rewritten about zebras"))
        session.execute(delete(Doc).filter_by(**keys[0]))
        session.commit()
    drain(db_url, fake_embedder("all-MiniLM-L6-v2"))
    assert sorted(c[0] for c in store_rows(conn, Doc.search.name).values()) == [
        "document number 1 about topic1", "rewritten about zebras"]
    with Session(engine) as session:
        assert [r[0].body for r in session.execute(Doc.search.keyword("zebras"))] == ["rewritten about zebras"]

    # Rows written before the index exists are queued by a backfill, in key order, in small steps.
    table = Doc.__table__.fullname
    conn.execute(f"SELECT semsearch.drop_index('{Doc.search.name}')")
    conn.execute(f"SELECT semsearch.create_index('{Doc.search.name}', '{table}', ARRAY['body'], "
                 "'all-MiniLM-L6-v2', 384)")
    out = subprocess.run([sys.executable, "-m", "semsearch.cli", "backfill", Doc.search.name, "--step", "1",
                          "--url", db_url], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "queued 2 row(s)" in out.stdout
    drain(db_url, fake_embedder("all-MiniLM-L6-v2"))
    assert len(store_rows(conn, Doc.search.name)) == 2
    engine.dispose()


@pytest.mark.parametrize("kind", list(KEYS))
def test_single_column_key_of_any_type(kind, db_url, conn, fake_embedder):
    Base, Doc = single_key_model(kind)
    values = KEYS[kind][2]
    exercise(db_url, conn, Base, Doc, lambda: [{"id": v} for v in values], fake_embedder)
    column_type = conn.execute(f"SELECT format_type(atttypid, atttypmod) FROM pg_attribute "
                               f"WHERE attrelid = 'docs_{kind}'::regclass AND attname = 'id'").fetchone()[0]
    assert column_type == {"int": "integer", "bigint": "bigint", "text": "character varying", "uuid": "uuid",
                           "date": "date", "numeric": "numeric(12,3)"}[kind]
    if kind == "date":  # the key text never depends on the session's DateStyle
        assert sorted(store_rows(conn, Doc.search.name)) == ["1999-12-31", "2030-01-01"]


def test_composite_key(db_url, conn, fake_embedder):
    Base, Doc = composite_key_model()
    tenant = uuid.uuid4()
    keys = [{"tenant": tenant, "day": datetime.date(2024, 1, 2), "slug": "a,b"},
            {"tenant": tenant, "day": datetime.date(2024, 1, 1), "slug": 'quote"d'},
            {"tenant": uuid.UUID(int=0), "day": datetime.date(2024, 1, 2), "slug": "[x]"}]
    exercise(db_url, conn, Base, Doc, lambda: keys, fake_embedder)
    assert conn.execute("SELECT key_columns::text[] FROM semsearch.indexes").fetchone() == (["tenant", "day", "slug"],)
    assert sorted(store_rows(conn, "docs_composite_search")) == [
        '["00000000-0000-0000-0000-000000000000", "2024-01-02", "[x]"]',
        f'["{tenant}", "2024-01-01", "quote\\"d"]']


def test_worker_backfill_of_a_uuid_table(db_url, conn, fake_embedder):
    """The worker's own backfill (no max(uuid)), for a table that had rows before its index."""
    conn.execute("CREATE TABLE notes (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), body text)")
    conn.execute("INSERT INTO notes (body) SELECT 'note ' || i FROM generate_series(1, 25) i")
    Base, _ = single_key_model("int")
    from semsearch import install

    install(create_engine(sqlalchemy_url(db_url)))
    conn.execute("SELECT semsearch.create_index('notes_search', 'notes', ARRAY['body'], 'all-MiniLM-L6-v2', 384)")
    assert conn.execute("SELECT backfill_pending FROM semsearch.indexes").fetchone() == (True,)
    drain(db_url, fake_embedder("all-MiniLM-L6-v2"))
    assert len(store_rows(conn, "notes_search")) == 25
