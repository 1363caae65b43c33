-- Roles and rights. Nothing of semsearch's is open to PUBLIC: an application role gets the search
-- functions and reads of the store rows whose source rows it can read; a worker role gets the queue,
-- the stores and the functions that read the source tables as semsearch's owner. Neither needs
-- superuser or ownership; the role that installed semsearch (its owner) runs these.


-- What each kind of role may call.
CREATE OR REPLACE FUNCTION semsearch.role_functions(kind text)
RETURNS SETOF regprocedure LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT p.oid::regprocedure FROM pg_proc p
     WHERE p.pronamespace = 'semsearch'::regnamespace
       AND p.proname = ANY (CASE kind
           WHEN 'app' THEN ARRAY['semantic_search', 'keyword_search', 'hybrid_search', 'explain', 'lookup_index',
                                 'or_query', 'distance_operator', 'vector_schema', 'check_query_vector', 'semantic_sql',
                                 'keyword_sql', 'keyword_plan', 'semantic_arm', 'semantic_scores', 'keyword_arm', 'keyword_table',
                                 'bm25_sql', 'chunk_rows', 'cover_ef_search', 'check_search_args', 'keyword_query',
                                 'check_keyword_syntax', 'vector_version', 'as_version']
           ELSE ARRAY['read_source', 'backfill_step', 'lock_for_batch', 'source_visibility_problem', 'refresh_index',
                      'lookup_index', 'index_status', 'request_backfill', 'request_backfill_by_id', 'record_model_revision', 'index_keywords',
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
