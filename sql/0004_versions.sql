-- semsearch schema, version 0004: versions of an index's vectors. A change of model, dimensions,
-- distance or storage (with the chunking that comes with it) builds a new version in the background (semsearch.builds) while queries keep
-- using the current one (semsearch.indexes.store_table); when it is complete, the registry switches to
-- it in one transaction, and the old store is kept a short while (semsearch.retired_stores) for the
-- queries that still embed with the old model, then dropped.

DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'semsearch.indexes'::regclass
                   AND attname = 'version' AND NOT attisdropped) THEN
        ALTER TABLE semsearch.indexes ADD COLUMN version integer NOT NULL DEFAULT 1;
    END IF;
END $$;

-- The version being built, one per index at most. Its store has no HNSW index while it fills (phase
-- embedding: the worker walks the table in key order after walk_after, and writes of the application
-- go to both versions); then the HNSW index is built once (indexing: writes meanwhile are noted in
-- build_keys); then those keys are embedded (ready) and the version becomes current.
CREATE TABLE IF NOT EXISTS semsearch.builds (
    index_id        integer PRIMARY KEY REFERENCES semsearch.indexes (id) ON DELETE CASCADE,
    version         integer NOT NULL,
    model           text NOT NULL,
    dimensions      integer NOT NULL CHECK (dimensions BETWEEN 1 AND 16000),
    distance        text NOT NULL CHECK (distance IN ('cosine', 'l2', 'inner_product')),
    storage         text NOT NULL CHECK (storage IN ('vector', 'halfvec')),
    chunk_tokens    integer CHECK (chunk_tokens > 0),
    chunk_overlap   integer NOT NULL CHECK (chunk_overlap >= 0),
    store_table     name NOT NULL,
    maintenance_work_mem text,  -- for the HNSW build (NULL: the server's setting)
    phase           text NOT NULL DEFAULT 'embedding' CHECK (phase IN ('embedding', 'indexing', 'ready')),
    walk_after      text,
    rows_total      bigint,     -- the table's rows when the build started (an estimate, for progress)
    rows_done       bigint NOT NULL DEFAULT 0,
    model_revision  text,
    problem         text,
    started_at      timestamptz NOT NULL DEFAULT now()
);

DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'semsearch.builds'::regclass
                   AND attname = 'chunk_tokens' AND NOT attisdropped) THEN  -- (a pre-release 0004)
        ALTER TABLE semsearch.builds ADD COLUMN chunk_tokens integer CHECK (chunk_tokens > 0),
                                     ADD COLUMN chunk_overlap integer NOT NULL DEFAULT 32 CHECK (chunk_overlap >= 0);
    END IF;
END $$;

-- Keys written while the new version's HNSW index was being built: embedded into it before the switch.
CREATE TABLE IF NOT EXISTS semsearch.build_keys (
    index_id    integer NOT NULL REFERENCES semsearch.indexes (id) ON DELETE CASCADE,
    key         text NOT NULL,
    PRIMARY KEY (index_id, key)
);

-- Stores of versions that were current until a switch: searches whose vector comes from that model
-- are served from them until they are dropped (semsearch.drop_retired_stores).
CREATE TABLE IF NOT EXISTS semsearch.retired_stores (
    index_id    integer NOT NULL REFERENCES semsearch.indexes (id) ON DELETE CASCADE,
    store_table name NOT NULL,
    model       text NOT NULL,
    dimensions  integer NOT NULL,
    distance    text NOT NULL,
    storage     text NOT NULL,
    retired_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (index_id, store_table)
);

INSERT INTO semsearch.schema_version (version) VALUES ('0004') ON CONFLICT DO NOTHING;
