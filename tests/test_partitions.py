"""A SearchIndex on a declaratively partitioned table: range by date, each year hash-partitioned by
tenant, the partition key in the primary key. With `semsearch worker` running, rows written through
the ORM (the parent) or psql (a partition by name), updates that move a row to another partition,
deletes, TRUNCATE of one partition, ATTACH PARTITION of a table with rows and DETACH PARTITION all end
with the index holding exactly the table's rows, and searches finding them."""
from __future__ import annotations

import datetime
import os
import signal
import subprocess
import sys
import time

import pytest
from sqlalchemy import create_engine, delete, update
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from semsearch import SearchIndex
from semsearch.database import sqlalchemy_url

from .psql import psql


class Base(DeclarativeBase):
    pass


class Event(Base):
    __tablename__ = "events"
    __table_args__ = {"postgresql_partition_by": "RANGE (created)"}
    tenant: Mapped[str] = mapped_column(primary_key=True)
    created: Mapped[datetime.date] = mapped_column(primary_key=True)
    id: Mapped[int] = mapped_column(primary_key=True)
    body: Mapped[str]
    search = SearchIndex("body")


def year_partition(year: int) -> str:
    return (f"CREATE TABLE events_{year} PARTITION OF events FOR VALUES FROM ('{year}-01-01') TO ('{year + 1}-01-01') "
            "PARTITION BY HASH (tenant);"
            f"CREATE TABLE events_{year}_h0 PARTITION OF events_{year} FOR VALUES WITH (MODULUS 2, REMAINDER 0);"
            f"CREATE TABLE events_{year}_h1 PARTITION OF events_{year} FOR VALUES WITH (MODULUS 2, REMAINDER 1);")


def wait_for(condition, what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def store_keys(engine) -> set[str]:
    with engine.connect() as c:
        return {k for (k,) in c.exec_driver_sql("SELECT DISTINCT key FROM semsearch.store_events_search")}


def table_keys(engine) -> set[str]:
    with engine.connect() as c:
        return {k for (k,) in c.exec_driver_sql(
            "SELECT jsonb_build_array(tenant, created, id)::text FROM events")}


def settled(engine) -> bool:
    """The worker has nothing left: queue empty, and the store holds exactly the table's rows."""
    with engine.connect() as c:
        queued = c.exec_driver_sql("SELECT count(*) FROM semsearch.queue").scalar()
    return queued == 0 and store_keys(engine) == table_keys(engine)


def found(engine, query: str, mode: str = "hybrid", limit: int = 5) -> list[tuple[str, int]]:
    with Session(engine) as s:
        return [(e.tenant, e.id) for e, _ in s.execute(getattr(Event.search, mode)(query, limit=limit)).all()]


@pytest.fixture
def events(db_url):
    engine = create_engine(sqlalchemy_url(db_url))
    Base.metadata.create_all(engine)
    out = psql(db_url, "-c", year_partition(2024) + year_partition(2025))
    assert out.returncode == 0, out.stderr
    worker = subprocess.Popen([sys.executable, "-m", "semsearch.cli", "worker", "--poll-interval", "0.5"],
                              env={**os.environ, "SEMSEARCH_DATABASE_URL": db_url}, stderr=subprocess.PIPE, text=True)
    try:
        yield engine
    finally:
        worker.send_signal(signal.SIGTERM)
        _, stderr = worker.communicate(timeout=60)
        engine.dispose()
    assert worker.returncode == 0, stderr


def test_partitioned_table_writes_moves_truncate_attach_and_detach(events, db_url):
    engine = events
    with Session(engine) as s:
        s.add_all([
            Event(tenant="acme", created=datetime.date(2024, 3, 1), id=1, body="The printer jams on double-sided pages."),
            Event(tenant="zeta", created=datetime.date(2024, 5, 1), id=2, body="The VPN drops every hour from home."),
            Event(tenant="acme", created=datetime.date(2025, 1, 9), id=3, body="Password reset emails never arrive."),
            Event(tenant="zeta", created=datetime.date(2025, 7, 4), id=4, body="The laptop battery drains in two hours."),
        ])
        s.commit()
    wait_for(lambda: settled(engine), "the ORM's rows")
    assert found(engine, "printer paper jam")[0] == ("acme", 1)

    # psql writes a partition by name (once the worker's pass has put the triggers on the new partitions).
    with engine.connect() as c:
        wait_for(lambda: c.exec_driver_sql("SELECT count(*) FROM pg_trigger WHERE tgname = 'semsearch_events_search_insert'"
                                           ).scalar() == 7, "triggers on every partition")
    out = psql(db_url, "-c", "INSERT INTO events_2025 VALUES ('acme', '2025-02-02', 5, 'The coffee machine leaks water.');"
                             "UPDATE events_2024_h0 SET body = body || ' Also on single-sided pages.' WHERE id = 1 "
                             "OR id = 2;")
    assert out.returncode == 0, out.stderr
    wait_for(lambda: settled(engine), "psql's rows")
    assert found(engine, "coffee machine leaking", "semantic")[0] == ("acme", 5)
    with engine.connect() as c:
        stored = c.exec_driver_sql("SELECT string_agg(content, ' ') FROM semsearch.store_events_search "
                                   "WHERE key LIKE '%%, 1]' OR key LIKE '%%, 2]'").scalar()
    assert stored.count("single-sided") == 1  # the row of the updated partition; the other was not touched

    # An update that moves a row to another year's partition (its key changes with it), and a delete.
    with Session(engine) as s:
        s.execute(update(Event).where(Event.id == 2).values(created=datetime.date(2025, 5, 1)))
        s.execute(delete(Event).where(Event.id == 4))
        s.commit()
    wait_for(lambda: settled(engine), "the move and the delete")
    assert '["zeta", "2025-05-01", 2]' in store_keys(engine)
    assert ("zeta", 2) in found(engine, "vpn connection drops", "keyword")
    assert not [r for r in found(engine, "battery drains", "keyword") if r[1] == 4]

    # TRUNCATE of one partition: its rows leave the index, the others stay.
    with engine.connect() as c:
        truncated = c.exec_driver_sql("SELECT count(*) FROM events_2025_h0").scalar()
        kept = c.exec_driver_sql("SELECT count(*) FROM events").scalar() - truncated
    assert truncated and kept
    out = psql(db_url, "-c", "TRUNCATE events_2025_h0")
    assert out.returncode == 0, out.stderr
    wait_for(lambda: settled(engine), "the truncated partition's rows to leave")
    assert len(store_keys(engine)) == kept

    # ATTACH PARTITION of a table that already has rows: they are queued and embedded.
    out = psql(db_url, "-c", "CREATE TABLE events_2023 (LIKE events INCLUDING ALL);"
                             "INSERT INTO events_2023 VALUES ('acme', '2023-06-01', 6, 'The projector in room 4 shows no picture.'), "
                             "('zeta', '2023-08-01', 7, 'Expense reports are rejected by the portal.');"
                             "ALTER TABLE events ATTACH PARTITION events_2023 FOR VALUES FROM ('2023-01-01') TO ('2024-01-01');")
    assert out.returncode == 0, out.stderr
    wait_for(lambda: settled(engine), "the attached partition's rows")
    assert found(engine, "projector shows nothing")[0] == ("acme", 6)

    # DETACH PARTITION: its rows leave the index and the searches (the SQL functions' too).
    out = psql(db_url, "-c", "ALTER TABLE events DETACH PARTITION events_2023")
    assert out.returncode == 0, out.stderr
    wait_for(lambda: settled(engine), "the detached partition's rows to leave")
    assert not [r for r in found(engine, "projector shows nothing", "keyword") if r[1] in (6, 7)]
    out = psql(db_url, "-At", "-c", "SELECT key FROM semsearch.keyword_search('events_search', 'projector expense portal', 10)")
    assert out.returncode == 0 and out.stdout.strip() == "", out.stdout + out.stderr
    # Writes to the detached table no longer reach the index.
    out = psql(db_url, "-c", "INSERT INTO events_2023 VALUES ('acme', '2023-09-01', 8, 'Detached rows stay out.')")
    assert out.returncode == 0, out.stderr
    time.sleep(1.5)
    assert settled(engine)
