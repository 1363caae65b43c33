-- Versions of an index's vectors (schema 0004): a new model, dimensions, distance or storage is built
-- beside the current version, written to with it, switched to in one transaction and the old one
-- retired. Queries keep using the current version until the switch; the worker drives each step
-- (semsearch/versions.py).

-- The registry row as a version of it sees it: the same index with that version's store and vectors,
-- so every function that takes an index (search arms, build_hnsw, apply_access) serves any version.
CREATE OR REPLACE FUNCTION semsearch.as_version(ix semsearch.indexes, version_store name, version_model text,
    version_dimensions integer, version_distance text, version_storage text)
RETURNS semsearch.indexes LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    ix.store_table := version_store;
    ix.model := version_model;
    ix.dimensions := version_dimensions;
    ix.distance := version_distance;
    ix.storage := version_storage;
    RETURN ix;
END $$;

CREATE OR REPLACE FUNCTION semsearch.build_version(ix semsearch.indexes)
RETURNS semsearch.indexes LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT semsearch.as_version(ix, b.store_table, b.model, b.dimensions, b.distance, b.storage)
      FROM semsearch.builds b WHERE b.index_id = ix.id
$$;

-- A store: one row per chunk. semsearch never writes to the application's table.
CREATE OR REPLACE FUNCTION semsearch.create_store(ix semsearch.indexes)
RETURNS void LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $fn$
BEGIN
    EXECUTE format($$
        CREATE TABLE semsearch.%I (
            key          text NOT NULL,
            chunk        integer NOT NULL,
            content      text NOT NULL,
            embedding    %s.%s(%s) NOT NULL,
            model        text NOT NULL,
            content_hash bytea NOT NULL,
            embedded_at  timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (key, chunk)
        )$$, ix.store_table, semsearch.vector_schema(), ix.storage, ix.dimensions);
END $fn$;

-- Start building a version with these vectors (alter_index calls it). The same target again changes
-- nothing; another target replaces the build in progress; the current version's own target cancels it.
CREATE OR REPLACE FUNCTION semsearch.start_build(ix semsearch.indexes, new_model text, new_dimensions integer,
    new_distance text, new_storage text, new_chunk_tokens integer, new_chunk_overlap integer, work_mem text)
RETURNS void LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    b      semsearch.builds;
    target semsearch.indexes;
    next_version integer;
BEGIN
    SELECT * INTO b FROM semsearch.builds WHERE index_id = ix.id FOR UPDATE;
    IF FOUND AND (b.model, b.dimensions, b.distance, b.storage, b.chunk_tokens, b.chunk_overlap)
                 IS NOT DISTINCT FROM (new_model, new_dimensions, new_distance, new_storage, new_chunk_tokens, new_chunk_overlap) THEN
        UPDATE semsearch.builds SET maintenance_work_mem = coalesce(work_mem, maintenance_work_mem) WHERE index_id = ix.id;
        RETURN;
    END IF;
    IF FOUND THEN
        PERFORM semsearch.cancel_build(ix);
    END IF;
    IF (ix.model, ix.dimensions, ix.distance, ix.storage) = (new_model, new_dimensions, new_distance, new_storage) THEN
        -- Back to the current vectors: chunking alone changes in place (alter_index).
        IF (ix.chunk_tokens, ix.chunk_overlap) IS DISTINCT FROM (new_chunk_tokens, new_chunk_overlap) THEN
            PERFORM semsearch.alter_index(ix.name, jsonb_build_object('chunk_tokens', new_chunk_tokens,
                                                                      'chunk_overlap', new_chunk_overlap));
        END IF;
        RETURN;
    END IF;
    -- Wait for the batches writing the current store now: each that commits later reads the build and
    -- writes both versions, so the walk (which starts after this commits) misses no row.
    EXECUTE format('LOCK TABLE semsearch.%I IN SHARE MODE', ix.store_table);
    next_version := greatest(ix.version, b.version) + 1;
    target := semsearch.as_version(ix, format('store_%s_v%s', ix.name, next_version), new_model, new_dimensions,
                                   new_distance, new_storage);
    PERFORM semsearch.create_store(target);
    PERFORM semsearch.apply_access(target);
    INSERT INTO semsearch.builds (index_id, version, model, dimensions, distance, storage, chunk_tokens, chunk_overlap,
                                  store_table, maintenance_work_mem, rows_total)
    VALUES (ix.id, next_version, new_model, new_dimensions, new_distance, new_storage, new_chunk_tokens,
            new_chunk_overlap, target.store_table, work_mem,
            (SELECT greatest(reltuples, 0)::bigint FROM pg_class WHERE oid = ix.source));
    PERFORM pg_notify('semsearch', ix.id::text);
END $$;

CREATE OR REPLACE FUNCTION semsearch.cancel_build(ix semsearch.indexes)
RETURNS void LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    store name := (SELECT b.store_table FROM semsearch.builds b WHERE b.index_id = ix.id);
BEGIN
    IF store IS NOT NULL THEN
        EXECUTE format('DROP TABLE IF EXISTS semsearch.%I', store);
    END IF;
    DELETE FROM semsearch.builds WHERE index_id = ix.id;
    DELETE FROM semsearch.build_keys WHERE index_id = ix.id;
END $$;

-- What a worker's batch writes to, read inside the batch's transaction: the current version, and the
-- one being built (NULL columns when none). The build row is held (FOR KEY SHARE) until the batch
-- commits, so a phase change or the switch waits for batches that saw the previous state.
CREATE OR REPLACE FUNCTION semsearch.batch_versions(index_id integer)
RETURNS TABLE (store_table name, model text, dimensions integer, storage text, chunk_tokens integer,
               chunk_overlap integer, build_store name, build_model text, build_dimensions integer, build_storage text,
               build_chunk_tokens integer, build_chunk_overlap integer, build_phase text, build_problem text)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    b semsearch.builds;
BEGIN
    SELECT * INTO b FROM semsearch.builds x WHERE x.index_id = batch_versions.index_id FOR KEY SHARE;
    RETURN QUERY SELECT i.store_table, i.model, i.dimensions, i.storage, i.chunk_tokens, i.chunk_overlap,
                        b.store_table, b.model, b.dimensions, b.storage, b.chunk_tokens, b.chunk_overlap, b.phase, b.problem
                   FROM semsearch.indexes i WHERE i.id = batch_versions.index_id;
END $$;

-- The next step_rows keys of the build's walk over the table, in key order ('{}' when the walk is
-- through; NULL when no build is filling). The walk's position moves with the caller's transaction.
-- A step that reaches the table's end ends the walk: rows written since the build started are queued,
-- and their batches write both versions, so chasing new keys would only race steady inserts.
CREATE OR REPLACE FUNCTION semsearch.build_walk(index_id integer, step_rows integer)
RETURNS text[] LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    ix   semsearch.indexes;
    b    semsearch.builds;
    keys text[];
BEGIN
    SELECT * INTO b FROM semsearch.builds x WHERE x.index_id = build_walk.index_id AND x.phase = 'embedding'
       AND x.problem IS NULL FOR NO KEY UPDATE;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    SELECT * INTO STRICT ix FROM semsearch.indexes i WHERE i.id = b.index_id;
    IF b.walk_through THEN
        RETURN '{}';
    END IF;
    EXECUTE format('SELECT coalesce(array_agg(k), ''{}'') FROM (%s) s', semsearch.keys_after_sql(ix))
        INTO keys USING b.walk_after, step_rows;
    UPDATE semsearch.builds x SET walk_after = coalesce(keys[cardinality(keys)], x.walk_after),
           rows_done = x.rows_done + cardinality(keys), walk_through = cardinality(keys) < step_rows
     WHERE x.index_id = b.index_id;
    RETURN keys;
END $$;

-- The walk is through: build the HNSW index next. Waits for batches that are writing to the new store.
CREATE OR REPLACE FUNCTION semsearch.build_walked(index_id integer)
RETURNS void LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM 1 FROM semsearch.builds x WHERE x.index_id = build_walked.index_id FOR UPDATE;
    UPDATE semsearch.builds x SET phase = 'indexing' WHERE x.index_id = build_walked.index_id AND x.phase = 'embedding';
END $$;

-- Build the new store's HNSW index, at the build's maintenance_work_mem; then the keys written
-- meanwhile are embedded into it (phase ready).
CREATE OR REPLACE FUNCTION semsearch.build_index(index_id integer)
RETURNS void LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    ix semsearch.indexes;
    b  semsearch.builds;
BEGIN
    -- (Not FOR UPDATE: batches keep going meanwhile, noting their keys.)
    SELECT * INTO b FROM semsearch.builds x WHERE x.index_id = build_index.index_id AND x.phase = 'indexing'
       FOR NO KEY UPDATE;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    SELECT * INTO STRICT ix FROM semsearch.indexes i WHERE i.id = b.index_id;
    IF b.maintenance_work_mem IS NOT NULL THEN
        PERFORM set_config('maintenance_work_mem', b.maintenance_work_mem, true);
    END IF;
    PERFORM semsearch.build_hnsw(semsearch.build_version(ix));
    UPDATE semsearch.builds x SET phase = 'ready' WHERE x.index_id = b.index_id;
END $$;

-- Keys a batch wrote while the new store's HNSW index was being built.
CREATE OR REPLACE FUNCTION semsearch.note_build_keys(index_id integer, keys text[])
RETURNS void LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    INSERT INTO semsearch.build_keys (index_id, key) SELECT index_id, k FROM unnest(keys) k ON CONFLICT DO NOTHING
$$;

-- Up to n noted keys, taken (deleted) in the caller's transaction: a crash puts them back.
CREATE OR REPLACE FUNCTION semsearch.take_build_keys(index_id integer, n integer)
RETURNS text[] LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    WITH taken AS (DELETE FROM semsearch.build_keys x
                    WHERE (x.index_id, x.key) IN (SELECT y.index_id, y.key FROM semsearch.build_keys y
                                                   WHERE y.index_id = take_build_keys.index_id
                                                   ORDER BY y.key LIMIT n FOR UPDATE SKIP LOCKED)
                   RETURNING x.key)
    SELECT coalesce(array_agg(key ORDER BY key), '{}') FROM taken
$$;

-- The build's walk starts over: every row is embedded into the new store again as the walk passes it.
CREATE OR REPLACE FUNCTION semsearch.restart_walk(index_id integer)
RETURNS void LANGUAGE sql SET search_path = pg_catalog, pg_temp AS $$
    UPDATE semsearch.builds x SET phase = 'embedding', walk_after = NULL, walk_through = false, rows_done = 0
     WHERE x.index_id = restart_walk.index_id
$$;

-- The worker cannot make the build's vectors (model missing, other dimensions): the build stops, and
-- starts its walk again once the problem is gone (batches meanwhile remove what they change from it).
CREATE OR REPLACE FUNCTION semsearch.record_build_problem(index_id integer, problem text)
RETURNS void LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    UPDATE semsearch.builds x SET problem = record_build_problem.problem
     WHERE x.index_id = record_build_problem.index_id AND x.problem IS DISTINCT FROM record_build_problem.problem;
    IF FOUND AND problem IS NOT NULL THEN
        PERFORM semsearch.restart_walk(index_id);
    END IF;
END $$;

-- Each worker holds this lock (shared, as long as its connection lives) for the store it writes and the
-- revision of the model it writes it with; a worker of another revision takes over only when no one holds it.
CREATE OR REPLACE FUNCTION semsearch.revision_lock(store_table name, revision text)
RETURNS bigint LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT hashtextextended(format('semsearch revision %s %s', store_table, revision), 0)
$$;

CREATE OR REPLACE FUNCTION semsearch.refuse_other_revision(ix semsearch.indexes, store name, model text,
    recorded text, revision text)
RETURNS void LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF recorded IS NOT NULL AND NOT pg_try_advisory_xact_lock(semsearch.revision_lock(store, recorded)) THEN
        RAISE EXCEPTION 'semsearch index "%": another worker embeds % with model % at revision %, this one has revision %',
            ix.name, store, model, recorded, revision
            USING ERRCODE = 'object_in_use',
                  HINT = 'Run every worker with the same model files: upgrade (or stop) the others, and this worker '
                         'takes over, embedding every row once with its revision, when the last of them is gone.';
    END IF;
END $$;

-- The revision of the build's model, recorded by the first worker that writes the new version. A worker
-- of another revision takes over only when no worker of the recorded one runs; the walk then starts
-- again (the content hashes include the revision, so every row is embedded anew). Returns whether it did.
CREATE OR REPLACE FUNCTION semsearch.record_build_revision(index_id integer, revision text)
RETURNS boolean LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    ix semsearch.indexes;
    b  semsearch.builds;
BEGIN
    SELECT * INTO b FROM semsearch.builds x WHERE x.index_id = record_build_revision.index_id FOR NO KEY UPDATE;
    IF NOT FOUND OR b.model_revision IS NOT DISTINCT FROM revision THEN
        RETURN false;
    END IF;
    SELECT * INTO STRICT ix FROM semsearch.indexes i WHERE i.id = b.index_id;
    PERFORM semsearch.refuse_other_revision(ix, b.store_table, b.model, b.model_revision, revision);
    UPDATE semsearch.builds x SET model_revision = revision WHERE x.index_id = b.index_id;
    IF b.model_revision IS NOT NULL THEN
        PERFORM semsearch.restart_walk(b.index_id);
    END IF;
    RETURN b.model_revision IS NOT NULL;
END $$;

-- Switch to the built version, in one transaction: the registry names its store and model, the old
-- store is retired (kept for queries embedded by the old model, then dropped). Returns whether it
-- switched: not while keys written during the HNSW build wait, or a batch that saw the build is open.
CREATE OR REPLACE FUNCTION semsearch.finish_build(index_id integer, revision text)
RETURNS boolean LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    ix semsearch.indexes;
    b  semsearch.builds;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('semsearch.ddl'));
    SELECT * INTO b FROM semsearch.builds x WHERE x.index_id = finish_build.index_id AND x.phase = 'ready'
       AND x.problem IS NULL FOR UPDATE;
    IF NOT FOUND OR EXISTS (SELECT 1 FROM semsearch.build_keys k WHERE k.index_id = b.index_id) THEN
        RETURN false;
    END IF;
    SELECT * INTO STRICT ix FROM semsearch.indexes i WHERE i.id = b.index_id FOR UPDATE;
    INSERT INTO semsearch.retired_stores (index_id, store_table, model, dimensions, distance, storage)
    VALUES (ix.id, ix.store_table, ix.model, ix.dimensions, ix.distance, ix.storage) ON CONFLICT DO NOTHING;
    UPDATE semsearch.indexes i SET store_table = b.store_table, model = b.model, dimensions = b.dimensions,
           distance = b.distance, storage = b.storage, chunk_tokens = b.chunk_tokens, chunk_overlap = b.chunk_overlap,
           version = b.version, model_revision = nullif(revision, ''), hnsw_pending = false
     WHERE i.id = ix.id;
    DELETE FROM semsearch.builds x WHERE x.index_id = b.index_id;
    RETURN true;
END $$;

-- Drop the stores retired more than `grace` ago; one still in use by a search is tried again later.
CREATE OR REPLACE FUNCTION semsearch.drop_retired_stores(index_id integer, grace interval)
RETURNS integer LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    r       semsearch.retired_stores;
    dropped integer := 0;
BEGIN
    FOR r IN SELECT * FROM semsearch.retired_stores x
              WHERE x.index_id = drop_retired_stores.index_id AND x.retired_at < now() - grace LOOP
        BEGIN
            PERFORM set_config('lock_timeout', '200ms', true);
            EXECUTE format('DROP TABLE IF EXISTS semsearch.%I', r.store_table);
            DELETE FROM semsearch.retired_stores x WHERE x.index_id = r.index_id AND x.store_table = r.store_table;
            dropped := dropped + 1;
        EXCEPTION WHEN lock_not_available THEN
            NULL;  -- a search holds it: next time
        END;
    END LOOP;
    RETURN dropped;
END $$;

-- The version a search vector belongs to: the current one, or a retired one whose model made the
-- vector (query_model) or whose dimensions it has, for queries embedded just before a switch. A vector
-- of a model the index has no complete version of is refused with what to do.
CREATE OR REPLACE FUNCTION semsearch.vector_version(ix semsearch.indexes, query_embedding vector, query_model text)
RETURNS semsearch.indexes LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    r semsearch.retired_stores;
BEGIN
    IF query_model IS NOT NULL AND query_model <> ix.model THEN
        SELECT * INTO r FROM semsearch.retired_stores x WHERE x.index_id = ix.id AND x.model = query_model
         ORDER BY x.retired_at DESC LIMIT 1;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'semsearch index "%" holds vectors of model %, not of %', ix.name, ix.model, query_model
                USING ERRCODE = 'data_exception',
                      HINT = format('Embed the query with model %s (SearchIndex queries use the model the index '
                                    'serves; see semsearch status for a version being built).', ix.model);
        END IF;
    ELSIF query_model IS NULL AND EXISTS (SELECT 1 FROM semsearch.retired_stores x WHERE x.index_id = ix.id) THEN
        SELECT * INTO r FROM semsearch.retired_stores x
         WHERE x.index_id = ix.id AND x.dimensions = cardinality(query_embedding::real[])
           AND cardinality(query_embedding::real[]) <> ix.dimensions
         ORDER BY x.retired_at DESC LIMIT 1;
    END IF;
    IF r.store_table IS NULL OR to_regclass(format('semsearch.%I', r.store_table)) IS NULL THEN
        RETURN ix;
    END IF;
    RETURN semsearch.as_version(ix, r.store_table, r.model, r.dimensions, r.distance, r.storage);
END $$;

-- The application's TRUNCATE empties the version being built too.
CREATE OR REPLACE FUNCTION semsearch.truncate_build(index_id integer)
RETURNS void LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    store name := (SELECT b.store_table FROM semsearch.builds b WHERE b.index_id = truncate_build.index_id);
BEGIN
    IF store IS NOT NULL THEN
        EXECUTE format('TRUNCATE semsearch.%I', store);
        DELETE FROM semsearch.build_keys k WHERE k.index_id = truncate_build.index_id;
    END IF;
END $$;

-- A build in progress, in words (semsearch status).
CREATE OR REPLACE FUNCTION semsearch.build_progress(index_id integer)
RETURNS text LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT format('v%s (%s, %s dims): ', b.version, b.model, b.dimensions) ||
           CASE WHEN b.problem IS NOT NULL THEN 'stopped: ' || b.problem
                WHEN b.phase = 'embedding' THEN format('embedded %s', b.rows_done) ||
                     CASE WHEN b.rows_total > 0 THEN format(' of ~%s rows', greatest(b.rows_total, b.rows_done)) ELSE ' rows' END
                WHEN b.phase = 'indexing' THEN format('building the HNSW index (%s rows)', b.rows_done)
                ELSE format('embedding %s rows written meanwhile, then switching',
                            (SELECT count(*) FROM semsearch.build_keys k WHERE k.index_id = b.index_id)) END
      FROM semsearch.builds b WHERE b.index_id = build_progress.index_id
$$;
