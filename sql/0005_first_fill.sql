-- semsearch schema, version 0005: an index created on a table with rows fills its store without an
-- HNSW index (rows go in at COPY speed, searches scan the store exactly meanwhile); the worker builds
-- the index once, when the backfill is through (semsearch.build_first_hnsw). A build's walk ends at
-- the first step that reaches the table's end (builds.walk_through).

DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'semsearch.indexes'::regclass
                   AND attname = 'hnsw_pending' AND NOT attisdropped) THEN
        ALTER TABLE semsearch.indexes ADD COLUMN hnsw_pending boolean NOT NULL DEFAULT false;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'semsearch.builds'::regclass
                   AND attname = 'walk_through' AND NOT attisdropped) THEN
        ALTER TABLE semsearch.builds ADD COLUMN walk_through boolean NOT NULL DEFAULT false;
    END IF;
END $$;

INSERT INTO semsearch.schema_version (version) VALUES ('0005') ON CONFLICT DO NOTHING;
