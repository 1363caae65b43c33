-- semsearch schema, version 0003: the revision of the model an index's vectors were made with (the
-- model package's version, or a digest of a model folder's files), so that an upgraded model
-- re-embeds the index (semsearch.record_model_revision). NULL: not recorded yet.

DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'semsearch.indexes'::regclass
                   AND attname = 'model_revision' AND NOT attisdropped) THEN
        ALTER TABLE semsearch.indexes ADD COLUMN model_revision text;
    END IF;
END $$;

INSERT INTO semsearch.schema_version (version) VALUES ('0003') ON CONFLICT DO NOTHING;
