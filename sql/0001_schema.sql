-- semsearch schema, version 0001: the tables. Functions and views live in the other files of sql/.
-- Plain SQL on top of pgvector: nothing here needs superuser beyond CREATE EXTENSION vector,
-- so it runs on managed Postgres. Every statement can run again on an installed database, which is
-- what lets the same text serve `semsearch install`, create_all and an offline `alembic upgrade --sql`.

CREATE EXTENSION IF NOT EXISTS vector;
CREATE SCHEMA IF NOT EXISTS semsearch;

-- Which schema files an installation has applied.
CREATE TABLE IF NOT EXISTS semsearch.schema_version (
    version     text PRIMARY KEY,
    applied_at  timestamptz NOT NULL DEFAULT now()
);

-- Registry of declared indexes. Workers read only this table, never the application's models.
CREATE TABLE IF NOT EXISTS semsearch.indexes (
    id              integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name            text NOT NULL UNIQUE CHECK (name ~ '^[a-z_][a-z0-9_]{0,39}$'),
    source          regclass NOT NULL,
    -- The source table's primary key, in key order (one or more columns of any type with a btree order).
    key_columns     name[] NOT NULL CHECK (cardinality(key_columns) > 0),
    columns         name[] NOT NULL CHECK (cardinality(columns) > 0),
    -- The same columns by number: a renamed column is followed (semsearch.refresh_index).
    column_attnums  int2[] NOT NULL,
    model           text NOT NULL,
    dimensions      integer NOT NULL CHECK (dimensions BETWEEN 1 AND 16000),
    distance        text NOT NULL CHECK (distance IN ('cosine', 'l2', 'inner_product')),
    ts_config       regconfig NOT NULL,
    chunk_tokens    integer CHECK (chunk_tokens > 0),
    chunk_overlap   integer NOT NULL CHECK (chunk_overlap >= 0),
    hnsw_m          integer NOT NULL CHECK (hnsw_m BETWEEN 2 AND 100),
    hnsw_ef_construction integer NOT NULL CHECK (hnsw_ef_construction BETWEEN 4 AND 1000),
    store_table     name NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    -- Backfill of rows that existed before the triggers: done in short steps (semsearch.backfill_step),
    -- in key order, resuming after backfill_after (a key in its queued text form).
    backfill_pending boolean NOT NULL DEFAULT false,
    backfill_after  text,
    -- Why workers cannot serve this index right now (its work waits; the other indexes go on).
    problem         text
);

-- Work queue: one row per statement that changed indexed text, holding the changed keys, so a
-- bulk statement costs the application one small INSERT. The worker splits big rows into batches.
-- A key may be queued more than once (an INSERT never waits on a worker's lock); a repeat costs
-- the worker a hash comparison, not an embedding. The text is read when processed, not when queued.
-- Only the primary key is indexed, and there is no foreign key: both would be paid by every write.
CREATE TABLE IF NOT EXISTS semsearch.queue (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    index_id    integer NOT NULL,
    keys        text[] NOT NULL,
    queued_at   timestamptz NOT NULL DEFAULT now(),
    run_after   timestamptz NOT NULL DEFAULT now(),
    attempts    integer NOT NULL DEFAULT 0,
    last_error  text
);

-- Dead letters: items that failed max_attempts times (or can never succeed). Nothing is dropped.
CREATE TABLE IF NOT EXISTS semsearch.failures (
    index_id         integer NOT NULL REFERENCES semsearch.indexes (id) ON DELETE CASCADE,
    key              text NOT NULL,
    error            text NOT NULL,
    attempts         integer NOT NULL,
    first_queued_at  timestamptz NOT NULL,
    failed_at        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (index_id, key)
);

-- Roles given access with semsearch.grant_app_role / grant_worker_role: each new index's store gets
-- their grants and policies too.
CREATE TABLE IF NOT EXISTS semsearch.roles (
    role        name NOT NULL,
    kind        text NOT NULL CHECK (kind IN ('app', 'worker')),
    PRIMARY KEY (role, kind)
);

-- Worker connections waiting for work. The triggers NOTIFY only while one waits: PostgreSQL serialises
-- the commits of notifying transactions, which concurrent writers would otherwise pay for on every write.
-- Unlogged: after a crash it is empty, and a busy worker polls the queue anyway.
CREATE UNLOGGED TABLE IF NOT EXISTS semsearch.listeners (
    pid         integer PRIMARY KEY,
    since       timestamptz NOT NULL DEFAULT now()
);

INSERT INTO semsearch.schema_version (version) VALUES ('0001') ON CONFLICT DO NOTHING;
