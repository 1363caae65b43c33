-- semsearch schema, version 0002: BM25 keyword ranking. Each index keeps its own keyword tables (created
-- by semsearch.build_keyword_tables, sql/keywords.sql); the registry gains the ranking's options and the
-- queue a mark for rows whose keywords are already indexed (keywords do not wait for the model).
-- Columns are added only when missing, so a re-install takes no lock on these tables.

DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'semsearch.indexes'::regclass
                   AND attname = 'bm25_k1' AND NOT attisdropped) THEN
        ALTER TABLE semsearch.indexes
            -- Weight of each indexed column in the keyword ranking, in the order of `columns` (NULL: all 1).
            ADD COLUMN column_weights float8[] CHECK (0 <= ALL (column_weights)),
            -- BM25's term-frequency saturation (k1) and length normalisation (b).
            ADD COLUMN bm25_k1 float8 NOT NULL DEFAULT {{bm25_k1}} CHECK (bm25_k1 >= 0),
            ADD COLUMN bm25_b float8 NOT NULL DEFAULT {{bm25_b}} CHECK (bm25_b BETWEEN 0 AND 1),
            -- The average document length the stored impacts (the order postings are read in) were
            -- computed with; refreshed when the real average drifts (semsearch.refresh_keyword_stats).
            ADD COLUMN bm25_avgdl float8;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'semsearch.queue'::regclass
                   AND attname = 'keywords_done' AND NOT attisdropped) THEN
        ALTER TABLE semsearch.queue ADD COLUMN keywords_done boolean NOT NULL DEFAULT false;
    END IF;
END $$;

INSERT INTO semsearch.schema_version (version) VALUES ('0002') ON CONFLICT DO NOTHING;
