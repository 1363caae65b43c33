-- semsearch schema, version 0003: the revision of the model an index's vectors were made with (a
-- digest of the model folder's files, or the hub snapshot), so that an upgraded model re-embeds the
-- index (semsearch.record_model_revision; NULL: not recorded yet); and the store's vector type
-- (vector: float4, halfvec: float2).

DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'semsearch.indexes'::regclass
                   AND attname = 'model_revision' AND NOT attisdropped) THEN
        ALTER TABLE semsearch.indexes ADD COLUMN model_revision text;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'semsearch.indexes'::regclass
                   AND attname = 'storage' AND NOT attisdropped) THEN
        ALTER TABLE semsearch.indexes ADD COLUMN storage text NOT NULL DEFAULT 'vector'
            CHECK (storage IN ('vector', 'halfvec'));
    END IF;
END $$;

INSERT INTO semsearch.schema_version (version) VALUES ('0003') ON CONFLICT DO NOTHING;
