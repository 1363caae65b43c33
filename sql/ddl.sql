-- Per-index DDL: store table, HNSW and GIN indexes, triggers, backfill request.
-- The single source of truth for it: create_all, Alembic's op.create_search_index / alter_search_index /
-- drop_search_index (online or rendered by `alembic upgrade --sql`) and semsearch install call these.
-- Defaults written as a name in double braces are filled in from semsearch.options when the schema is installed.

-- Is the index's visibility function (the store's row-level security) written for another table or key
-- than its table has now (renamed, moved or re-keyed since the last worker pass)? Plain catalog reads.
CREATE OR REPLACE FUNCTION semsearch.visibility_outdated(ix semsearch.indexes)
RETURNS boolean LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT EXISTS (SELECT 1 FROM pg_class WHERE oid = ix.source)
       AND (SELECT d.description FROM pg_proc p
              JOIN pg_description d ON d.objoid = p.oid AND d.classoid = 'pg_proc'::regclass AND d.objsubid = 0
             WHERE p.pronamespace = 'semsearch'::regnamespace AND p.proname = 'visible_' || ix.name)
           IS DISTINCT FROM format('%s %s', ix.source::text,
               (SELECT array_agg(a.attname ORDER BY k.n) FROM pg_index x, unnest(x.indkey) WITH ORDINALITY k(attnum, n),
                       pg_attribute a
                 WHERE x.indrelid = ix.source AND x.indisprimary AND a.attrelid = ix.source AND a.attnum = k.attnum))
$$;

-- The registry row of an index, with an error that says what to do. SECURITY DEFINER: application roles
-- search without any right on the registry itself. A table renamed, moved or
-- re-keyed since the last worker pass is followed now, so searches keep working (the check runs on
-- every search, in plain catalog reads; the repair takes no lock on the table). Not on a standby,
-- which cannot write.
CREATE OR REPLACE FUNCTION semsearch.registered_index(index_name text)
RETURNS semsearch.indexes LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    ix semsearch.indexes;
BEGIN
    SELECT * INTO ix FROM semsearch.indexes i WHERE i.name = index_name;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'semsearch index "%" does not exist', index_name
            USING HINT = 'Declare it (SearchIndex on a model + create_all, or semsearch.create_index) first; '
                         'semsearch status lists the existing ones.';
    END IF;
    IF NOT pg_is_in_recovery() AND semsearch.visibility_outdated(ix) THEN
        PERFORM semsearch.refresh_index(ix.id);
        PERFORM semsearch.install_visibility(i) FROM semsearch.indexes i WHERE i.id = ix.id;
        SELECT * INTO ix FROM semsearch.indexes i WHERE i.id = ix.id;
    END IF;
    RETURN ix;
END $$;

-- The index every search starts from, under the caller's rights. On a standby after such a change the
-- old visibility function names a table that is gone: a role under the store's row-level security
-- gets an error that says what to do, not "relation does not exist" (a role without it is answered).
CREATE OR REPLACE FUNCTION semsearch.lookup_index(index_name text)
RETURNS semsearch.indexes LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    ix semsearch.indexes := semsearch.registered_index(index_name);
BEGIN
    IF pg_is_in_recovery() AND row_security_active(format('semsearch.%I', ix.store_table))
       AND semsearch.visibility_outdated(ix) THEN
        RAISE EXCEPTION 'semsearch index "%": its table changed on the primary (now %), which has not updated the index yet',
            index_name, ix.source::text
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'This is a read-only standby: search the primary once, or wait for a worker''s pass '
                         '(within its --poll-interval), then search here again.';
    END IF;
    RETURN ix;
END $$;

-- The schema the vector extension lives in, quoted: every function pins search_path to pg_catalog, so
-- vector's type, operators and operator classes are always named with it.
CREATE OR REPLACE FUNCTION semsearch.vector_schema()
RETURNS text LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT quote_ident(n.nspname) FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace
     WHERE e.extname = 'vector'
$$;

-- Signatures this version replaced, here and in search.sql (installed after this file): a new trailing
-- argument would otherwise make calls ambiguous, and CREATE OR REPLACE cannot rename an argument.
DO $$
DECLARE
    fn regprocedure;
BEGIN
    FOR fn IN SELECT p.oid::regprocedure FROM pg_proc p
               WHERE p.pronamespace = 'semsearch'::regnamespace
                 AND ((p.proname = 'create_index' AND NOT p.proargnames && ARRAY['storage'])
                      OR (p.proname = 'hnsw_operator_class' AND p.pronargs = 1)
                      OR p.proname IN ('arm_sql', 'fusion_value')
                      OR (p.proname IN ('semantic_search', 'keyword_search', 'explain')
                          AND NOT p.proargnames && ARRAY['filter_keys'])
                      OR (p.proname IN ('hybrid_search', 'check_search_args') AND NOT p.proargnames && ARRAY['fusion'])
                      OR (p.proname IN ('semantic_search', 'hybrid_search') AND NOT p.proargnames && ARRAY['query_model'])
                      OR (p.proname = 'start_build' AND p.pronargs = 6)
                      OR (p.proname = 'batch_versions' AND NOT p.proargnames && ARRAY['build_chunk_tokens'])
                      OR (p.proname = 'keyword_arm' AND NOT p.proargnames && ARRAY['rescored'])
                      OR (p.proname = 'keyword_sql' AND NOT p.proargnames && ARRAY['scoring'])
                      OR (p.proname = 'chunk_rows' AND p.pronargs = 1)
                      OR (p.proname = 'cover_ef_search' AND p.pronargs = 1)) LOOP
        EXECUTE format('DROP FUNCTION %s', fn);
    END LOOP;
END $$;

CREATE OR REPLACE FUNCTION semsearch.hnsw_operator_class(distance text, storage text)
RETURNS text LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT semsearch.vector_schema() || '.' || storage ||
           CASE distance WHEN 'cosine' THEN '_cosine_ops' WHEN 'l2' THEN '_l2_ops' ELSE '_ip_ops' END
$$;

-- Column numbers of the given column names in a table (NULL when one is missing).
CREATE OR REPLACE FUNCTION semsearch.column_numbers(source regclass, columns text[])
RETURNS int2[] LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT CASE WHEN count(a.attnum) = cardinality(columns) THEN array_agg(a.attnum ORDER BY u.n) END
      FROM unnest(columns) WITH ORDINALITY u(c, n)
      LEFT JOIN pg_attribute a ON a.attrelid = source AND a.attname = u.c AND a.attnum > 0 AND NOT a.attisdropped
$$;

-- Bring the registry in line with the table as it is now: follow renamed columns and a changed primary
-- key (the trigger function is rewritten; no lock on the table), and report what cannot be followed.
-- Returns the problem, or NULL when the index is healthy. Workers call it when idle; install calls it.
CREATE OR REPLACE FUNCTION semsearch.refresh_index(index_id integer)
RETURNS text LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    ix       semsearch.indexes;
    names    name[];
    key_cols name[];
    issue    text;
BEGIN
    SELECT * INTO ix FROM semsearch.indexes i WHERE i.id = index_id FOR UPDATE;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_class WHERE oid = ix.source) THEN
        issue := format('table changed: its table was dropped; SELECT semsearch.drop_index(%L) removes the index', ix.name);
    ELSE
        SELECT array_agg(a.attname ORDER BY u.n) FILTER (WHERE a.attname IS NOT NULL)
          INTO names FROM unnest(ix.column_attnums) WITH ORDINALITY u(num, n)
          LEFT JOIN pg_attribute a ON a.attrelid = ix.source AND a.attnum = u.num AND NOT a.attisdropped;
        key_cols := semsearch.current_key_columns(ix.source);
        IF cardinality(names) IS DISTINCT FROM cardinality(ix.column_attnums) THEN
            issue := format('table changed: an indexed column of %s was dropped; change the index''s columns '
                              '(op.alter_search_index or semsearch.alter_index) or drop it', ix.source);
        ELSIF key_cols IS NULL THEN
            issue := format('table changed: %s has no primary key any more', ix.source);
        ELSE
            IF names IS DISTINCT FROM ix.columns OR key_cols IS DISTINCT FROM ix.key_columns THEN
                UPDATE semsearch.indexes i SET columns = names, key_columns = key_cols WHERE i.id = ix.id RETURNING * INTO ix;
                PERFORM semsearch.install_triggers(ix);
            END IF;
            PERFORM semsearch.install_visibility(ix);  -- a renamed table or key column
            PERFORM semsearch.follow_partitions(ix);
        END IF;
    END IF;
    IF issue IS NOT NULL THEN
        UPDATE semsearch.indexes i SET problem = issue
         WHERE i.id = ix.id AND i.problem IS DISTINCT FROM issue;
    ELSIF ix.problem LIKE 'table changed: %' THEN
        UPDATE semsearch.indexes i SET problem = NULL WHERE i.id = ix.id;
        PERFORM semsearch.request_backfill_by_id(ix.id);  -- writes during the change may be missing
    END IF;
    RETURN issue;
END $$;

-- (Re)build the store's HNSW index: a store-only operation, the application's table is not touched.
CREATE OR REPLACE FUNCTION semsearch.build_hnsw(ix semsearch.indexes)
RETURNS void LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF to_regclass(format('semsearch.%I', ix.store_table || '_hnsw')) IS NOT NULL THEN  -- (no NOTICE when absent)
        EXECUTE format('DROP INDEX semsearch.%I', ix.store_table || '_hnsw');
    END IF;
    EXECUTE format('CREATE INDEX %I ON semsearch.%I USING hnsw (embedding %s) WITH (m = %s, ef_construction = %s)',
                   ix.store_table || '_hnsw', ix.store_table, semsearch.hnsw_operator_class(ix.distance, ix.storage),
                   ix.hnsw_m, ix.hnsw_ef_construction);
END $$;

-- Column weights given by name ('{"title": 2}'), in column order; NULL when every column weighs 1.
CREATE OR REPLACE FUNCTION semsearch.weights_array(index_name text, columns text[], weights jsonb)
RETURNS float8[] LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    unknown text;
    result  float8[];
BEGIN
    IF weights IS NULL OR weights = 'null' OR weights = '{}' THEN
        RETURN NULL;
    END IF;
    IF jsonb_typeof(weights) <> 'object' OR EXISTS (SELECT 1 FROM jsonb_each(weights) e WHERE jsonb_typeof(e.value) <> 'number'
                                                      OR CASE WHEN jsonb_typeof(e.value) = 'number'
                                                              THEN (e.value)::text::float8 < 0 END) THEN
        RAISE EXCEPTION 'semsearch index "%": weights must map column names to numbers of 0 or more, not %', index_name, weights
            USING ERRCODE = 'data_exception', HINT = 'For example ''{"title": 2}''.';
    END IF;
    SELECT string_agg(k, ', ') INTO unknown FROM jsonb_object_keys(weights) k WHERE NOT k = ANY (columns);
    IF unknown IS NOT NULL THEN
        RAISE EXCEPTION 'semsearch index "%": weights name column(s) % that the index does not have (its columns: %)',
            index_name, unknown, array_to_string(columns, ', ') USING ERRCODE = 'data_exception';
    END IF;
    SELECT array_agg(coalesce((weights ->> c)::float8, 1) ORDER BY n) INTO result FROM unnest(columns) WITH ORDINALITY u(c, n);
    RETURN CASE WHEN 1 = ALL (result) THEN NULL ELSE result END;
END $$;

-- Chunking in range, with errors that say what to do. An overlap as long as the chunk would advance one
-- token per chunk: a chunk per token. (NULL chunk_tokens, the model's window, is not known here.)
CREATE OR REPLACE FUNCTION semsearch.check_chunking(index_name text, chunk_tokens integer, chunk_overlap integer)
RETURNS void LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF chunk_tokens < 1 OR chunk_overlap IS NULL OR chunk_overlap < 0 THEN
        RAISE EXCEPTION 'semsearch index "%": chunk_tokens must be at least 1 (or NULL) and chunk_overlap 0 or more',
            index_name;
    ELSIF chunk_overlap >= chunk_tokens THEN
        RAISE EXCEPTION 'semsearch index "%": chunk_overlap (%) must be less than chunk_tokens (%)',
            index_name, chunk_overlap, chunk_tokens
            USING HINT = format('Consecutive chunks share chunk_overlap tokens: give a smaller chunk_overlap too, e.g. %s.',
                                chunk_tokens / 4);
    END IF;
END $$;

-- Keyword options in range, with errors that say what to do.
CREATE OR REPLACE FUNCTION semsearch.check_keyword_options(index_name text, columns text[], column_weights float8[],
    bm25_k1 float8, bm25_b float8)
RETURNS void LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF column_weights IS NOT NULL AND (cardinality(column_weights) <> cardinality(columns)
       OR EXISTS (SELECT 1 FROM unnest(column_weights) w WHERE w IS NULL OR w < 0 OR w IN ('NaN', 'Infinity'))
       OR NOT EXISTS (SELECT 1 FROM unnest(column_weights) w WHERE w > 0)) THEN
        RAISE EXCEPTION 'semsearch index "%": column_weights % do not fit columns %', index_name, column_weights, columns
            USING ERRCODE = 'data_exception',
                  HINT = 'Give one finite weight of 0 or more per column, in column order, not all 0.';
    END IF;
    IF bm25_k1 IS NULL OR bm25_k1 < 0 OR bm25_k1 > 100 OR bm25_b IS NULL OR bm25_b NOT BETWEEN 0 AND 1 THEN
        RAISE EXCEPTION 'semsearch index "%": bm25_k1 must be from 0 to 100 and bm25_b from 0 to 1 (not % and %)',
            index_name, bm25_k1, bm25_b USING ERRCODE = 'data_exception';
    END IF;
END $$;

CREATE OR REPLACE FUNCTION semsearch.has_rows(ix semsearch.indexes)
RETURNS boolean LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    found_row boolean;
BEGIN
    EXECUTE format('SELECT EXISTS (SELECT 1 FROM %s)', ix.source) INTO found_row;
    RETURN found_row;
END $$;

-- Ask for a backfill only when the table has rows: an index created with its table (create_all, a
-- migration's create_table) queues each later row once, through its trigger.
CREATE OR REPLACE FUNCTION semsearch.backfill_if_rows(ix semsearch.indexes)
RETURNS void LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF semsearch.has_rows(ix) THEN
        PERFORM semsearch.request_backfill(ix.name);
    END IF;
END $$;

-- A new index's store. On a table with rows it fills without its HNSW index, at COPY speed (searches
-- scan it exactly meanwhile), and the worker builds the index once, when the backfill is through
-- (build_first_hnsw); the keyword postings' indexes likewise. On an empty table they are indexed at
-- once and each row goes in incrementally.
CREATE OR REPLACE FUNCTION semsearch.first_fill(ix semsearch.indexes)
RETURNS void LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF semsearch.has_rows(ix) THEN
        UPDATE semsearch.indexes i SET hnsw_pending = true WHERE i.id = ix.id;
        -- (the postings' indexes too, built with the HNSW index; empty now, so dropped at once)
        EXECUTE format('DROP INDEX IF EXISTS semsearch.%I, semsearch.%I',
                       'store_' || ix.name || '_postings_key', 'store_' || ix.name || '_postings_impact');
        PERFORM semsearch.request_backfill(ix.name);
    ELSE
        PERFORM semsearch.build_hnsw(ix);
    END IF;
END $$;

-- The first fill's HNSW index, built by a worker once the backfill is queued through and at most
-- caught_up keys wait (so that steady writes never hold it off). Returns whether it built it. Its
-- lock on the store holds batches (they skip the index meanwhile), never searches. The index takes
-- the server's maintenance_work_mem: ALTER ROLE <worker> SET maintenance_work_mem = '1GB' speeds it.
CREATE OR REPLACE FUNCTION semsearch.build_first_hnsw(index_id integer, caught_up integer)
RETURNS boolean LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    ix semsearch.indexes;
BEGIN
    SELECT * INTO ix FROM semsearch.indexes i
     WHERE i.id = build_first_hnsw.index_id AND i.hnsw_pending AND NOT i.backfill_pending;
    IF NOT FOUND OR NOT pg_try_advisory_xact_lock(hashtext('semsearch.first_hnsw'), ix.id)
       OR (SELECT coalesce(sum(cardinality(q.keys)), 0) FROM semsearch.queue q
            WHERE q.index_id = ix.id AND q.run_after <= now()) > caught_up THEN
        RETURN false;
    END IF;
    PERFORM set_config('lock_timeout', '5s', true);
    PERFORM semsearch.build_hnsw(ix);
    PERFORM semsearch.build_postings_indexes(ix);
    UPDATE semsearch.indexes i SET hnsw_pending = false WHERE i.id = ix.id AND i.hnsw_pending;
    RETURN FOUND;
END $$;

-- Create an index, or bring an existing one in line with this declaration (see alter_index).
-- Re-running it with the same declaration changes nothing and takes no lock on the application's table.
CREATE OR REPLACE FUNCTION semsearch.create_index(
    index_name      text,
    source          regclass,
    columns         text[],
    model           text DEFAULT {{model}},
    dimensions      integer DEFAULT NULL,  -- NULL: the model's, when semsearch knows it
    distance        text DEFAULT {{distance}},
    ts_config       regconfig DEFAULT {{ts_config}},
    chunk_tokens    integer DEFAULT {{chunk_tokens}},
    chunk_overlap   integer DEFAULT {{chunk_overlap}},
    hnsw_m          integer DEFAULT {{hnsw_m}},
    hnsw_ef_construction integer DEFAULT {{hnsw_ef_construction}},
    weights         jsonb DEFAULT NULL,  -- keyword weight per column, e.g. '{"title": 2}' (others: 1)
    bm25_k1         float8 DEFAULT {{bm25_k1}},
    bm25_b          float8 DEFAULT {{bm25_b}},
    storage         text DEFAULT {{storage}}  -- the store's vector type: vector (float4) or halfvec (float2)
) RETURNS integer LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    ix       semsearch.indexes;
    key_cols name[];
    col      text;
    known    integer;
    changes  jsonb := '{}';
    column_weights float8[];
    build    semsearch.builds;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('semsearch.ddl'));
    IF index_name !~ '^[a-z_][a-z0-9_]{0,39}$' THEN
        RAISE EXCEPTION 'invalid semsearch index name "%"', index_name
            USING HINT = 'Use 1-40 lowercase letters, digits or underscores, starting with a letter or underscore.';
    END IF;
    known := ({{known_dimensions}}::jsonb ->> model)::integer;
    chunk_tokens := coalesce(chunk_tokens, ({{known_chunk_tokens}}::jsonb ->> model)::integer);
    IF dimensions IS NULL THEN
        dimensions := known;
        IF dimensions IS NULL THEN
            RAISE EXCEPTION 'semsearch index "%": give the dimensions of model %', index_name, model
                USING HINT = 'Pass dimensions => N, the length of the vectors the model makes.';
        END IF;
    ELSIF dimensions <> known THEN
        RAISE EXCEPTION 'semsearch index "%": model % makes %-dimensional vectors, not %', index_name, model, known, dimensions
            USING HINT = 'Leave dimensions out (or NULL) for this model.';
    END IF;
    IF distance NOT IN ('cosine', 'l2', 'inner_product') THEN
        RAISE EXCEPTION 'unknown distance "%"', distance USING HINT = 'Use cosine, l2 or inner_product.';
    END IF;
    IF storage IS NULL OR storage NOT IN ('vector', 'halfvec') THEN
        RAISE EXCEPTION 'unknown storage "%"', storage USING HINT = 'Use vector (float4) or halfvec (float2).';
    END IF;
    IF columns IS NULL OR cardinality(columns) = 0 THEN
        RAISE EXCEPTION 'semsearch index "%" needs at least one column', index_name;
    END IF;
    column_weights := semsearch.weights_array(index_name, columns, weights);
    PERFORM semsearch.check_keyword_options(index_name, columns, column_weights, bm25_k1, bm25_b);
    PERFORM semsearch.check_chunking(index_name, chunk_tokens, chunk_overlap);
    key_cols := semsearch.current_key_columns(source);
    IF key_cols IS NULL THEN
        RAISE EXCEPTION 'table % has no primary key', source
            USING HINT = 'semsearch identifies rows by their primary key (one or more columns of any type): add one.';
    END IF;
    FOREACH col IN ARRAY columns LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = source AND a.attname = col
                       AND a.attnum > 0 AND NOT a.attisdropped) THEN
            RAISE EXCEPTION 'column "%" does not exist in table %', col, source;
        END IF;
    END LOOP;

    SELECT * INTO ix FROM semsearch.indexes i WHERE i.name = index_name;
    IF FOUND AND NOT EXISTS (SELECT 1 FROM pg_class WHERE oid = ix.source) THEN
        -- Its table was dropped (and maybe created again): the old index serves nothing.
        PERFORM semsearch.drop_index(index_name);
        ix := NULL;
    END IF;
    IF ix.id IS NOT NULL THEN
        IF ix.source <> source THEN
            RAISE EXCEPTION 'semsearch index "%" already exists on table %', index_name, ix.source
                USING HINT = 'Drop it first with SELECT semsearch.drop_index(''' || index_name || ''') '
                             '(its embeddings are recomputed), or give the new declaration another name.';
        END IF;
        -- Other vectors (model, dimensions, distance, storage): a new version is built in the background,
        -- or the one in progress is kept when it already has them.
        SELECT * INTO build FROM semsearch.builds b WHERE b.index_id = ix.id;
        IF (model, dimensions, distance, storage) IS DISTINCT FROM (build.model, build.dimensions, build.distance, build.storage)
           AND (build.index_id IS NOT NULL
                OR (model, dimensions, distance, storage) IS DISTINCT FROM (ix.model, ix.dimensions, ix.distance, ix.storage)) THEN
            changes := jsonb_build_object('model', model, 'dimensions', dimensions, 'distance', distance, 'storage', storage);
        END IF;
        IF ix.key_columns IS DISTINCT FROM key_cols THEN
            UPDATE semsearch.indexes i SET key_columns = key_cols WHERE i.id = ix.id RETURNING * INTO ix;
            PERFORM semsearch.install_triggers(ix);
        END IF;
        IF ix.columns::text[] IS DISTINCT FROM columns THEN
            changes := changes || jsonb_build_object('columns', columns);
        END IF;
        -- Every option that differs from the registry, as alter_index takes it.
        SELECT changes || coalesce(jsonb_object_agg(w.key, w.value), '{}') INTO changes
          FROM jsonb_each(jsonb_build_object('ts_config', ts_config::text, 'chunk_tokens', chunk_tokens,
                   'chunk_overlap', chunk_overlap, 'hnsw_m', hnsw_m, 'hnsw_ef_construction', hnsw_ef_construction,
                   'bm25_k1', bm25_k1, 'bm25_b', bm25_b)) w
         WHERE w.value IS DISTINCT FROM jsonb_build_object('ts_config', ix.ts_config::text, 'chunk_tokens', ix.chunk_tokens,
                   'chunk_overlap', ix.chunk_overlap, 'hnsw_m', ix.hnsw_m, 'hnsw_ef_construction', ix.hnsw_ef_construction,
                   'bm25_k1', ix.bm25_k1, 'bm25_b', ix.bm25_b) -> w.key;
        IF ix.column_weights IS DISTINCT FROM column_weights OR changes ? 'columns' THEN
            changes := changes || jsonb_build_object('weights', coalesce(weights, '{}'));
        END IF;
        IF changes <> '{}' THEN
            PERFORM semsearch.alter_index(index_name, changes);
        END IF;
        RETURN ix.id;
    END IF;

    INSERT INTO semsearch.indexes (name, source, key_columns, columns, column_attnums, model, dimensions, distance,
                                   ts_config, chunk_tokens, chunk_overlap, hnsw_m, hnsw_ef_construction, store_table,
                                   column_weights, bm25_k1, bm25_b, storage)
    VALUES (index_name, source, key_cols, columns, semsearch.column_numbers(source, columns), model, dimensions,
            distance, ts_config, chunk_tokens, chunk_overlap, hnsw_m, hnsw_ef_construction, 'store_' || index_name,
            column_weights, bm25_k1, bm25_b, storage)
    RETURNING * INTO ix;

    PERFORM semsearch.create_store(ix);
    PERFORM semsearch.build_keyword_tables(ix);
    PERFORM semsearch.apply_access(ix);
    PERFORM semsearch.install_triggers(ix);
    PERFORM semsearch.first_fill(ix);
    RETURN ix.id;
END $fn$;

-- A change of vectors (model, dimensions, distance, storage, with chunking): checked, then built as a new version in
-- the background (semsearch.start_build) while the current one keeps serving. maintenance_work_mem
-- (e.g. '1GB') is what the version's HNSW build may use.
CREATE OR REPLACE FUNCTION semsearch.alter_vectors(ix semsearch.indexes, changes jsonb)
RETURNS void LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    b          semsearch.builds;
    new_model  text;
    known      integer;
    dims       integer;
    dist       text;
    store_type text;
    chunks     integer;
    overlap    integer;
    work_mem   text := changes ->> 'maintenance_work_mem';
BEGIN
    SELECT * INTO b FROM semsearch.builds x WHERE x.index_id = ix.id;
    -- Options left out keep the build's in progress, else the current version's.
    new_model := coalesce(changes ->> 'model', b.model, ix.model);
    known := ({{known_dimensions}}::jsonb ->> new_model)::integer;
    dims := coalesce((changes ->> 'dimensions')::integer, CASE WHEN changes ? 'model' THEN known END,
                     b.dimensions, ix.dimensions);
    dist := coalesce(changes ->> 'distance', b.distance, ix.distance);
    store_type := coalesce(changes ->> 'storage', b.storage, ix.storage);
    -- Chunking given, else the build's, else the new model's default when the model changes, else the current.
    chunks := CASE WHEN changes ? 'chunk_tokens' THEN (changes ->> 'chunk_tokens')::integer
                   WHEN changes ? 'model' AND new_model <> coalesce(b.model, ix.model)
                        THEN ({{known_chunk_tokens}}::jsonb ->> new_model)::integer
                   WHEN b.index_id IS NOT NULL THEN b.chunk_tokens ELSE ix.chunk_tokens END;
    overlap := coalesce((changes ->> 'chunk_overlap')::integer, b.chunk_overlap, ix.chunk_overlap);
    IF new_model IS NULL OR new_model = '' THEN
        RAISE EXCEPTION 'semsearch index "%": model must be a model name', ix.name;
    ELSIF dims IS NULL OR (changes ? 'model' AND NOT changes ? 'dimensions' AND known IS NULL
                           AND new_model <> ix.model) THEN
        RAISE EXCEPTION 'semsearch index "%": give the dimensions of model %', ix.name, new_model
            USING HINT = 'Pass dimensions with the model: the length of the vectors it makes.';
    ELSIF known IS NOT NULL AND dims <> known THEN
        RAISE EXCEPTION 'semsearch index "%": model % makes %-dimensional vectors, not %', ix.name, new_model, known, dims
            USING HINT = 'Leave dimensions out for this model.';
    ELSIF dims NOT BETWEEN 1 AND 16000 THEN
        RAISE EXCEPTION 'semsearch index "%": dimensions must be from 1 to 16000, not %', ix.name, dims;
    ELSIF dist NOT IN ('cosine', 'l2', 'inner_product') THEN
        RAISE EXCEPTION 'unknown distance "%"', dist USING HINT = 'Use cosine, l2 or inner_product.';
    ELSIF store_type NOT IN ('vector', 'halfvec') THEN
        RAISE EXCEPTION 'unknown storage "%"', store_type USING HINT = 'Use vector (float4) or halfvec (float2).';
    END IF;
    PERFORM semsearch.check_chunking(ix.name, chunks, overlap);
    IF work_mem IS NOT NULL THEN  -- refused now, not when the worker reaches the HNSW build (the
        PERFORM set_config('maintenance_work_mem', work_mem, true);  -- function's SET clause restores it)
    END IF;
    PERFORM semsearch.start_build(ix, new_model, dims, dist, store_type, chunks, overlap, work_mem);
END $$;

-- Change an index in place. `changes` holds the options to change, e.g.
--   SELECT semsearch.alter_index('articles_search', '{"columns": ["title"], "hnsw_m": 24}');
-- columns -> the trigger function is replaced and rows re-queued; chunk_tokens / chunk_overlap -> rows
-- re-queued (only text whose chunks change is re-embedded); hnsw_m / hnsw_ef_construction -> the HNSW
-- index is rebuilt; ts_config, weights -> rows' keywords are indexed again (not re-embedded);
-- bm25_k1 / bm25_b -> the postings' impacts are recomputed. Only semsearch's tables are rebuilt: the
-- application's table is never locked for long.
CREATE OR REPLACE FUNCTION semsearch.alter_index(index_name text, changes jsonb)
RETURNS void LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    ix      semsearch.indexes;
    old     semsearch.indexes;
    unknown text;
    col     text;
    new_columns text[];
    new_weights float8[];
    new_chunks  integer;
    new_overlap integer;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('semsearch.ddl'));
    old := semsearch.lookup_index(index_name);
    SELECT string_agg(k, ', ') INTO unknown FROM jsonb_object_keys(changes) k
     WHERE k NOT IN ('columns', 'ts_config', 'chunk_tokens', 'chunk_overlap', 'hnsw_m', 'hnsw_ef_construction',
                     'weights', 'bm25_k1', 'bm25_b', 'model', 'dimensions', 'distance', 'storage', 'maintenance_work_mem');
    IF unknown IS NOT NULL THEN
        RAISE EXCEPTION 'semsearch.alter_index: unknown option(s) %', unknown
            USING HINT = 'It changes columns, ts_config, chunk_tokens, chunk_overlap, hnsw_m, hnsw_ef_construction, '
                         'weights, bm25_k1, bm25_b and (building a new version in the background) model, dimensions, '
                         'distance and storage, whose HNSW build takes maintenance_work_mem.';
    END IF;
    -- Other vectors build a new version; so does chunking that comes with them or changes during a build.
    IF changes ?| ARRAY['model', 'dimensions', 'distance', 'storage', 'maintenance_work_mem']
       OR (changes ?| ARRAY['chunk_tokens', 'chunk_overlap'] AND EXISTS (SELECT 1 FROM semsearch.builds b
                                                                          WHERE b.index_id = old.id)) THEN
        PERFORM semsearch.alter_vectors(old, changes);
        changes := changes - 'chunk_tokens' - 'chunk_overlap';
    END IF;
    IF changes ? 'columns' THEN
        FOR col IN SELECT jsonb_array_elements_text(changes -> 'columns') LOOP
            IF NOT EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = old.source AND a.attname = col
                           AND a.attnum > 0 AND NOT a.attisdropped) THEN
                RAISE EXCEPTION 'column "%" does not exist in table %', col, old.source;
            END IF;
        END LOOP;
    END IF;
    new_columns := CASE WHEN changes ? 'columns' THEN ARRAY(SELECT jsonb_array_elements_text(changes -> 'columns'))
                        ELSE old.columns END;
    -- New columns without new weights: every column weighs 1.
    new_weights := CASE WHEN changes ? 'weights' THEN semsearch.weights_array(old.name, new_columns, changes -> 'weights')
                        WHEN changes ? 'columns' THEN NULL ELSE old.column_weights END;
    -- Checked before writing, for errors that say what to do (not the table's CHECK constraints).
    PERFORM semsearch.check_keyword_options(old.name, new_columns, new_weights,
        coalesce((changes ->> 'bm25_k1')::float8, old.bm25_k1), coalesce((changes ->> 'bm25_b')::float8, old.bm25_b));
    new_chunks := CASE WHEN changes ? 'chunk_tokens' THEN (changes ->> 'chunk_tokens')::integer ELSE old.chunk_tokens END;
    new_overlap := CASE WHEN changes ? 'chunk_overlap' THEN (changes ->> 'chunk_overlap')::integer ELSE old.chunk_overlap END;
    PERFORM semsearch.check_chunking(old.name, new_chunks, new_overlap);
    UPDATE semsearch.indexes i SET
        columns = new_columns::name[],
        column_attnums = CASE WHEN changes ? 'columns' THEN semsearch.column_numbers(i.source, new_columns)
                              ELSE i.column_attnums END,
        ts_config = CASE WHEN changes ? 'ts_config' THEN (changes ->> 'ts_config')::regconfig ELSE i.ts_config END,
        chunk_tokens = new_chunks,
        chunk_overlap = new_overlap,
        hnsw_m = CASE WHEN changes ? 'hnsw_m' THEN (changes ->> 'hnsw_m')::integer ELSE i.hnsw_m END,
        hnsw_ef_construction = CASE WHEN changes ? 'hnsw_ef_construction'
                                    THEN (changes ->> 'hnsw_ef_construction')::integer ELSE i.hnsw_ef_construction END,
        column_weights = new_weights,
        bm25_k1 = CASE WHEN changes ? 'bm25_k1' THEN (changes ->> 'bm25_k1')::float8 ELSE i.bm25_k1 END,
        bm25_b = CASE WHEN changes ? 'bm25_b' THEN (changes ->> 'bm25_b')::float8 ELSE i.bm25_b END
     WHERE i.id = old.id
    RETURNING * INTO ix;
    IF ix.columns IS DISTINCT FROM old.columns THEN
        PERFORM semsearch.install_triggers(ix);
    END IF;
    IF (ix.bm25_k1, ix.bm25_b) IS DISTINCT FROM (old.bm25_k1, old.bm25_b) THEN
        -- Impacts at the new k1 and b (refresh_keyword_stats recomputes them when bm25_avgdl is NULL).
        UPDATE semsearch.indexes i SET bm25_avgdl = NULL WHERE i.id = ix.id;
        PERFORM semsearch.refresh_keyword_stats(ix.id);
    END IF;
    IF ix.ts_config <> old.ts_config OR ix.column_weights IS DISTINCT FROM old.column_weights THEN
        -- Every row's keywords are indexed again as the worker reaches it (their hash includes both);
        -- until then the old ones keep serving. The embeddings are kept.
        PERFORM semsearch.backfill_if_rows(ix);
    END IF;
    IF (ix.hnsw_m, ix.hnsw_ef_construction) IS DISTINCT FROM (old.hnsw_m, old.hnsw_ef_construction)
       AND NOT ix.hnsw_pending THEN  -- (a first fill's index is built with them when it is through)
        PERFORM semsearch.build_hnsw(ix);
    END IF;
    IF (ix.columns, ix.chunk_tokens, ix.chunk_overlap) IS DISTINCT FROM (old.columns, old.chunk_tokens, old.chunk_overlap) THEN
        PERFORM semsearch.backfill_if_rows(ix);
    END IF;
END $fn$;

-- Remove an index: triggers, trigger function, store, queue entries, registry row.
CREATE OR REPLACE FUNCTION semsearch.drop_index(index_name text, missing_ok boolean DEFAULT false)
RETURNS void LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    ix      semsearch.indexes;
    trigger text;
    store   name;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('semsearch.ddl'));
    SELECT * INTO ix FROM semsearch.indexes i WHERE i.name = index_name;
    IF NOT FOUND THEN
        IF missing_ok THEN RETURN; END IF;
        PERFORM semsearch.lookup_index(index_name);
    END IF;
    -- (on its table and any partitions; none left if the table was dropped)
    FOR trigger IN SELECT format('%I ON %s', t.tgname, t.tgrelid::regclass) FROM pg_trigger t
                    WHERE t.tgname IN (SELECT 'semsearch_' || ix.name || '_' || op
                                         FROM unnest(ARRAY['insert', 'update', 'delete', 'truncate']) op) LOOP
        PERFORM semsearch.run_on_source(ix, 'DROP TRIGGER ' || trigger);
    END LOOP;
    EXECUTE format('DROP FUNCTION IF EXISTS semsearch.%I()', 'enqueue_' || ix.name);
    PERFORM semsearch.cancel_build(ix);
    FOR store IN SELECT r.store_table FROM semsearch.retired_stores r WHERE r.index_id = ix.id LOOP
        EXECUTE format('DROP TABLE IF EXISTS semsearch.%I', store);
    END LOOP;
    EXECUTE format('DROP TABLE IF EXISTS semsearch.%I, %s, %s, %s, %s', ix.store_table, semsearch.keyword_table(ix, 'docs'),
                   semsearch.keyword_table(ix, 'postings'), semsearch.keyword_table(ix, 'terms'), semsearch.keyword_table(ix, 'stats'));
    EXECUTE format('DROP FUNCTION IF EXISTS semsearch.%I(text)', 'visible_' || ix.name);
    DELETE FROM semsearch.queue q WHERE q.index_id = ix.id;
    DELETE FROM semsearch.indexes i WHERE i.id = ix.id;
END $$;

-- Install's pass over every index: follow schema changes and bring trigger functions up to date.
-- One broken index is reported (WARNING, and in semsearch.status) and never stops the others.
CREATE OR REPLACE FUNCTION semsearch.refresh_all()
RETURNS void LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    ix semsearch.indexes;
BEGIN
    FOR ix IN SELECT * FROM semsearch.indexes ORDER BY id LOOP
        BEGIN
            -- An index made before schema 0002 gets its keyword tables; its rows are then queued again
            -- (only their keywords are new: the embeddings are kept).
            IF semsearch.build_keyword_tables(ix) AND EXISTS (SELECT 1 FROM pg_class WHERE oid = ix.source) THEN
                PERFORM semsearch.backfill_if_rows(ix);
            END IF;
            IF semsearch.refresh_index(ix.id) IS NULL THEN
                SELECT * INTO ix FROM semsearch.indexes i WHERE i.id = ix.id;
                PERFORM semsearch.install_triggers(ix);
            END IF;
        EXCEPTION WHEN OTHERS THEN
            RAISE WARNING 'semsearch index "%": %', ix.name, SQLERRM;
        END;
    END LOOP;
END $$;
