-- Roles and rights. Nothing of semsearch's is open to PUBLIC: an application role gets the search
-- functions and reads of the store rows whose source rows it can read; a worker role gets the queue,
-- the stores and the functions that read the source tables as semsearch's owner. Neither needs
-- superuser or ownership; the role that installed semsearch (its owner) runs these.

-- Per index: its store's row-level security and grants.

-- semsearch.visible_<index>(key): may the caller read the source row of this key, with every indexed
-- column? The store's row-level security policy calls it, under the caller's own rights and the source
-- table's row-level security, so a role reads store rows (text, key, vector) only where it could read
-- the same values in the table. Its text names the table, not the policy: the application stays free
-- to drop or rename its table, and refresh_index rewrites the function. search_path is pinned, so the
-- caller's search_path cannot swap an operator or type in it.
CREATE OR REPLACE FUNCTION semsearch.visibility_body(ix semsearch.indexes)
RETURNS text LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT format('SELECT %s AND EXISTS (SELECT 1 FROM %s t WHERE (%s) = (%s))',
                  (SELECT string_agg(format('has_column_privilege(%L, %L, ''SELECT'')', ix.source::text, c), ' AND ')
                     FROM unnest(ix.columns || ix.key_columns) c),
                  ix.source, semsearch.key_columns_sql(ix, 't'), semsearch.key_values_sql(ix, 'key'))
$$;

-- Its comment names the table and key it was written for: lookup_index compares them on every search.
CREATE OR REPLACE FUNCTION semsearch.install_visibility(ix semsearch.indexes)
RETURNS void LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    fn          name := 'visible_' || ix.name;
    body        text := semsearch.visibility_body(ix);
    fingerprint text := format('%s %s', ix.source::text, ix.key_columns::text);
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_proc p WHERE p.pronamespace = 'semsearch'::regnamespace
                   AND p.proname = fn AND p.prosrc = body) THEN
        EXECUTE format('CREATE OR REPLACE FUNCTION semsearch.%I(key text) RETURNS boolean LANGUAGE sql STABLE '
                       'SET search_path = pg_catalog, pg_temp AS %L', fn, body);
    END IF;
    IF obj_description(format('semsearch.%I(text)', fn)::regprocedure, 'pg_proc') IS DISTINCT FROM fingerprint THEN
        EXECUTE format('COMMENT ON FUNCTION semsearch.%I(text) IS %L', fn, fingerprint);
    END IF;
END $$;

-- Grants and row-level security of an index's store, for the roles in semsearch.roles. An application
-- role reads a store row only if it can read the source row it came from (the policy asks the source
-- table, under that role's own rights and row-level security), so searches never show, score or rank
-- another tenant's rows. Worker roles read and write every store row.
CREATE OR REPLACE FUNCTION semsearch.apply_access(ix semsearch.indexes)
RETURNS void LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    store   text := format('semsearch.%I', ix.store_table);
    r       record;
    tab     text;
    workers text;
BEGIN
    PERFORM semsearch.install_visibility(ix);
    -- The store and the keyword tables that name rows: readable row by row, as the source rows are.
    -- (The term and length statistics name no row.)
    FOREACH tab IN ARRAY ARRAY[store, semsearch.keyword_table(ix, 'docs'), semsearch.keyword_table(ix, 'postings')] LOOP
        IF NOT (SELECT relrowsecurity FROM pg_class WHERE oid = tab::regclass) THEN
            EXECUTE format('ALTER TABLE %s ENABLE ROW LEVEL SECURITY', tab);
        END IF;
        IF NOT EXISTS (SELECT 1 FROM pg_policy WHERE polrelid = tab::regclass AND polname = 'semsearch_visible') THEN
            EXECUTE format('CREATE POLICY semsearch_visible ON %s FOR SELECT USING (semsearch.%I(key))',
                           tab, 'visible_' || ix.name);
        END IF;
    END LOOP;
    SELECT string_agg(quote_ident(g.role), ', ' ORDER BY g.role) INTO workers
      FROM semsearch.roles g JOIN pg_roles pr ON pr.rolname = g.role WHERE g.kind = 'worker';
    -- Re-created only when the worker roles changed: it locks the store.
    IF NOT EXISTS (SELECT 1 FROM pg_policy pp WHERE pp.polrelid = store::regclass AND pp.polname = 'semsearch_worker'
                   AND (SELECT string_agg(quote_ident(rolname), ', ' ORDER BY rolname) FROM pg_roles
                         WHERE oid = ANY (pp.polroles)) IS NOT DISTINCT FROM workers) THEN
        IF EXISTS (SELECT 1 FROM pg_policy WHERE polrelid = store::regclass AND polname = 'semsearch_worker') THEN
            EXECUTE format('DROP POLICY semsearch_worker ON %s', store);
        END IF;
        IF workers IS NOT NULL THEN
            EXECUTE format('CREATE POLICY semsearch_worker ON %s FOR ALL TO %s USING (true) WITH CHECK (true)', store, workers);
        END IF;
    END IF;
    -- Workers write the keyword tables only through semsearch.index_keywords (SECURITY DEFINER).
    FOR r IN SELECT role, kind FROM semsearch.roles WHERE role IN (SELECT rolname FROM pg_roles) LOOP
        EXECUTE format('GRANT %s ON %s TO %I', CASE r.kind WHEN 'app' THEN 'SELECT' ELSE 'SELECT, INSERT, DELETE' END,
                       store, r.role);
        IF r.kind = 'app' THEN
            EXECUTE format('GRANT SELECT ON %s, %s, %s, %s TO %I', semsearch.keyword_table(ix, 'docs'),
                           semsearch.keyword_table(ix, 'postings'), semsearch.keyword_table(ix, 'terms'),
                           semsearch.keyword_table(ix, 'stats'), r.role);
        END IF;
    END LOOP;
END $$;

-- Per role.

-- What each kind of role may call.
CREATE OR REPLACE FUNCTION semsearch.role_functions(kind text)
RETURNS SETOF regprocedure LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT p.oid::regprocedure FROM pg_proc p
     WHERE p.pronamespace = 'semsearch'::regnamespace
       AND p.proname = ANY (CASE kind
           WHEN 'app' THEN ARRAY['semantic_search', 'keyword_search', 'hybrid_search', 'explain', 'lookup_index',
                                 'registered_index', 'visibility_outdated',
                                 'or_query', 'distance_operator', 'vector_schema', 'check_query_vector', 'semantic_sql',
                                 'keyword_sql', 'keyword_plan', 'semantic_arm', 'semantic_scores', 'keyword_arm', 'keyword_table',
                                 'bm25_sql', 'chunk_rows', 'cover_ef_search', 'ef_search_floor', 'check_search_args', 'keyword_query',
                                 'check_keyword_syntax', 'vector_version', 'as_version',
                                 -- uses.sql
                                 'document_vectors_sql', 'document_vectors', 'row_vectors', 'mmr_order', 'diversify',
                                 'passages', 'highlight', 'similar', 'recommend_vector', 'recommend', 'probe_keys', 'neighbours_sql',
                                 'row_count', 'near_duplicates', 'knn_distances', 'outliers', 'row_vectors_of', 'row_terms', 'row_snippets']
           ELSE ARRAY['read_source', 'backfill_step', 'lock_for_batch', 'source_visibility_problem', 'refresh_index',
                      'lookup_index', 'registered_index', 'visibility_outdated', 'index_status', 'request_backfill', 'request_backfill_by_id', 'record_model_revision', 'index_keywords',
                      'refresh_keyword_stats', 'batch_versions', 'build_walk', 'build_walked', 'build_index',
                      'note_build_keys', 'take_build_keys', 'record_build_problem', 'finish_build',
                      'drop_retired_stores', 'build_progress', 'build_first_hnsw',
                      'record_build_revision', 'revision_lock']
           END)
$$;

-- Apply every recorded role's rights (again): after each install, since a re-created function or view
-- starts without grants.
CREATE OR REPLACE FUNCTION semsearch.apply_roles()
RETURNS void LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    r  record;
    fn regprocedure;
    ix semsearch.indexes;
BEGIN
    FOR r IN SELECT role, kind FROM semsearch.roles LOOP
        CONTINUE WHEN NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = r.role);
        EXECUTE format('GRANT USAGE ON SCHEMA semsearch TO %I', r.role);
        FOR fn IN SELECT semsearch.role_functions(r.kind) LOOP
            EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO %I', fn, r.role);
        END LOOP;
        IF r.kind = 'worker' THEN
            EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON semsearch.queue, semsearch.failures, '
                           'semsearch.listeners TO %I', r.role);
            EXECUTE format('GRANT USAGE ON ALL SEQUENCES IN SCHEMA semsearch TO %I', r.role);
            EXECUTE format('GRANT SELECT ON semsearch.indexes, semsearch.schema_version, semsearch.status, semsearch.builds, '
                           'semsearch.build_keys, semsearch.retired_stores TO %I', r.role);
            EXECUTE format('GRANT UPDATE (problem) ON semsearch.indexes TO %I', r.role);
        END IF;
    END LOOP;
    FOR ix IN SELECT * FROM semsearch.indexes ORDER BY id LOOP
        CONTINUE WHEN to_regclass(format('semsearch.%I', ix.store_table)) IS NULL
                   OR NOT EXISTS (SELECT 1 FROM pg_class WHERE oid = ix.source);
        BEGIN
            PERFORM semsearch.apply_access(ix);
            IF EXISTS (SELECT 1 FROM semsearch.builds b WHERE b.index_id = ix.id) THEN  -- the version being built
                PERFORM semsearch.apply_access(semsearch.build_version(ix));
            END IF;
        EXCEPTION WHEN OTHERS THEN  -- one index's problem never stops the others (status reports it)
            RAISE WARNING 'semsearch index "%": %', ix.name, SQLERRM;
        END;
    END LOOP;
END $$;

CREATE OR REPLACE FUNCTION semsearch.grant_role(role name, kind text)
RETURNS void LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles r WHERE r.rolname = grant_role.role) THEN
        RAISE EXCEPTION 'role "%" does not exist', role USING HINT = 'CREATE ROLE ... LOGIN first.';
    END IF;
    INSERT INTO semsearch.roles (role, kind) VALUES (role, kind) ON CONFLICT DO NOTHING;
    PERFORM semsearch.apply_roles();
END $$;

-- SELECT semsearch.grant_app_role('app'): the role writes the indexed tables it already has rights on
-- (the triggers run as semsearch's owner) and runs every search function; it reads no queue, failure
-- or registry row, and no store row whose source row it cannot read itself.
CREATE OR REPLACE FUNCTION semsearch.grant_app_role(role name)
RETURNS void LANGUAGE sql SET search_path = pg_catalog, pg_temp AS $$ SELECT semsearch.grant_role(role, 'app') $$;

-- SELECT semsearch.grant_worker_role('worker'): what `semsearch worker` needs. It reads the source
-- tables through semsearch's functions (as semsearch's owner), so it needs no right on them.
CREATE OR REPLACE FUNCTION semsearch.grant_worker_role(role name)
RETURNS void LANGUAGE sql SET search_path = pg_catalog, pg_temp AS $$ SELECT semsearch.grant_role(role, 'worker') $$;

-- Take PUBLIC's default EXECUTE away from functions that have it (a new or re-created function).
DO $$
DECLARE
    fn regprocedure;
BEGIN
    FOR fn IN SELECT p.oid::regprocedure FROM pg_proc p
               WHERE p.pronamespace = 'semsearch'::regnamespace
                 AND p.proname NOT LIKE 'visible\_%'  -- asks the source under the caller's own rights
                 AND (p.proacl IS NULL OR EXISTS (SELECT 1 FROM aclexplode(p.proacl) a WHERE a.grantee = 0)) LOOP
        EXECUTE format('REVOKE ALL ON FUNCTION %s FROM PUBLIC', fn);
    END LOOP;
END $$;
