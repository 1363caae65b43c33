-- One row per index: what the worker has left to do, is doing, has done and could not do.
-- in_flight counts keys a worker holds right now (its per-key advisory locks). store_bytes: the store
-- on disk with its HNSW index (not the keyword tables); bytes_per_document: that over the documents in it.
-- version, dimensions: the current version of the vectors; build: the version being built and how far it is.
-- first_fill: the store fills without its HNSW index, built when the backfill is through.
-- model_revision: the revision of the model that made the current version's vectors (NULL until a
-- worker has loaded it; '' for a model without one, such as an OpenAI-compatible server's).
-- An installation made before a column was added to the status: drop and recreate.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_proc WHERE oid = to_regprocedure('semsearch.index_status()')
               AND NOT 'model_revision' = ANY(proargnames)) THEN
        DROP VIEW IF EXISTS semsearch.status;
        DROP FUNCTION semsearch.index_status();
    END IF;
END $$;

CREATE OR REPLACE FUNCTION semsearch.index_status()
RETURNS TABLE (index_name text, source_table text, model text, pending bigint, in_flight bigint, failed bigint,
               oldest_pending_age interval, embedded_last_minute bigint, documents bigint,
               backfilling boolean, problem text, store_bytes bigint, bytes_per_document bigint, version integer,
               build text, dimensions integer, first_fill boolean, model_revision text)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    ix semsearch.indexes;
BEGIN
    FOR ix IN SELECT * FROM semsearch.indexes ORDER BY id LOOP
        index_name := ix.name;
        source_table := CASE WHEN EXISTS (SELECT 1 FROM pg_class WHERE oid = ix.source) THEN ix.source::text
                             ELSE '(dropped table)' END;
        model := ix.model;
        SELECT count(DISTINCT k), now() - min(q.queued_at) INTO pending, oldest_pending_age
          FROM semsearch.queue q, unnest(q.keys) k WHERE q.index_id = ix.id;
        backfilling := ix.backfill_pending;
        problem := CASE WHEN source_table = '(dropped table)'
                        THEN format('table changed: its table was dropped; SELECT semsearch.drop_index(%L) removes the index', ix.name)
                        ELSE ix.problem END;
        SELECT count(*) INTO in_flight FROM pg_locks l
         WHERE l.locktype = 'advisory' AND l.objsubid = 2 AND l.classid = ix.id::oid
           AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database());
        SELECT count(*) INTO failed FROM semsearch.failures f WHERE f.index_id = ix.id;
        EXECUTE format('SELECT count(DISTINCT key) FILTER (WHERE embedded_at > now() - interval ''1 minute''), '
                       'count(DISTINCT key) FROM semsearch.%I', ix.store_table)
           INTO embedded_last_minute, documents;
        store_bytes := pg_total_relation_size(format('semsearch.%I', ix.store_table)::regclass);
        bytes_per_document := store_bytes / nullif(documents, 0);
        version := ix.version;
        dimensions := ix.dimensions;
        build := semsearch.build_progress(ix.id);
        first_fill := ix.hnsw_pending;
        model_revision := ix.model_revision;
        RETURN NEXT;
    END LOOP;
END $$;

CREATE OR REPLACE VIEW semsearch.status AS SELECT * FROM semsearch.index_status();
