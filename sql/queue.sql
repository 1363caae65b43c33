-- Triggers and queue: statement-level triggers with transition tables enqueue the keys of rows whose
-- indexed columns changed (one queue INSERT per statement); backfill queues rows that existed before.

-- The body of an index's trigger function. Compared with the installed one, so an unchanged index
-- never replaces it.
CREATE OR REPLACE FUNCTION semsearch.trigger_body(ix semsearch.indexes)
RETURNS text LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    first_key name := ix.key_columns[1];
    join_on   text;
    new_cols  text;
    old_cols  text;
BEGIN
    SELECT string_agg(format('n.%1$I = o.%1$I', c), ' AND ') INTO join_on FROM unnest(ix.key_columns) c;
    SELECT string_agg(format('n.%I', c), ', '), string_agg(format('o.%I', c), ', ')
      INTO new_cols, old_cols FROM unnest(ix.columns) c;
    RETURN format($body$
BEGIN  -- semsearch trigger, version 5
    IF TG_OP = 'INSERT' THEN
        INSERT INTO semsearch.queue (index_id, keys)
        SELECT %1$s, array_agg(%2$s) FROM new_rows n HAVING count(*) > 0;
    ELSIF TG_OP = 'UPDATE' THEN
        INSERT INTO semsearch.queue (index_id, keys)
        SELECT %1$s, array_agg(CASE WHEN n.%3$I IS NULL THEN %4$s ELSE %2$s END)
          FROM new_rows n FULL JOIN old_rows o ON %5$s
         WHERE n.%3$I IS NULL OR o.%3$I IS NULL OR ROW(%6$s) IS DISTINCT FROM ROW(%7$s)
        HAVING count(*) > 0;
    ELSIF TG_OP = 'DELETE' THEN
        INSERT INTO semsearch.queue (index_id, keys)
        SELECT %1$s, array_agg(%4$s) FROM old_rows o HAVING count(*) > 0;
    ELSIF TG_WHEN = 'BEFORE' THEN  -- TRUNCATE of one partition: its rows leave the index
        PERFORM semsearch.queue_rows_of(%1$s, TG_RELID);
        RETURN NULL;
    ELSE -- TRUNCATE of the table: nothing left to embed or to serve
        PERFORM semsearch.truncate_index(%1$s);
        RETURN NULL;
    END IF;
    IF FOUND AND EXISTS (SELECT 1 FROM semsearch.listeners) THEN  -- a worker waits: wake it
        PERFORM pg_notify('semsearch', '%1$s');
    END IF;
    RETURN NULL;
EXCEPTION WHEN OTHERS THEN
    -- The table changed under the index (a renamed or dropped column, a new key): the application's
    -- statement must still succeed. Queue every key the statement touched, by the columns' current
    -- names, and flag the index; semsearch.refresh_index repairs it (workers call it when idle).
    PERFORM semsearch.flag_schema_change(%1$s, SQLERRM);
    BEGIN
        IF TG_OP IN ('INSERT', 'UPDATE') THEN
            EXECUTE semsearch.fallback_enqueue_sql(%1$s, 'new_rows');
        END IF;
        IF TG_OP IN ('UPDATE', 'DELETE') THEN
            EXECUTE semsearch.fallback_enqueue_sql(%1$s, 'old_rows');
        END IF;
        PERFORM pg_notify('semsearch', '%1$s');
    EXCEPTION WHEN OTHERS THEN
        PERFORM semsearch.request_backfill_by_id(%1$s);  -- queue everything again once repaired
    END;
    RETURN NULL;
END $body$, ix.id, semsearch.key_text_sql(ix, 'n'), first_key, semsearch.key_text_sql(ix, 'o'),
            join_on, new_cols, old_cols);
END $fn$;

-- The application truncated the index's table: nothing is left to embed or to serve, in any version.
CREATE OR REPLACE FUNCTION semsearch.truncate_index(index_id integer)
RETURNS void LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    ix semsearch.indexes;
BEGIN
    SELECT * INTO STRICT ix FROM semsearch.indexes i WHERE i.id = truncate_index.index_id;
    DELETE FROM semsearch.queue q WHERE q.index_id = ix.id;
    DELETE FROM semsearch.failures f WHERE f.index_id = ix.id;
    EXECUTE format('TRUNCATE semsearch.%I, %s, %s, %s, %s', ix.store_table, semsearch.keyword_table(ix, 'docs'),
                   semsearch.keyword_table(ix, 'postings'), semsearch.keyword_table(ix, 'terms'),
                   semsearch.keyword_table(ix, 'stats'));
    PERFORM semsearch.truncate_build(ix.id);
    UPDATE semsearch.indexes i SET bm25_avgdl = NULL WHERE i.id = ix.id;
END $$;

-- Run DDL that locks an application table, with a lock timeout and an error that names the table:
-- semsearch never waits forever behind an open transaction while every writer queues behind it.
CREATE OR REPLACE FUNCTION semsearch.run_on_source(ix semsearch.indexes, statement text)
RETURNS void LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    previous text := current_setting('lock_timeout');
BEGIN
    PERFORM set_config('lock_timeout', {{ddl_lock_timeout}}, true);
    BEGIN
        EXECUTE statement;
    EXCEPTION WHEN lock_not_available THEN
        PERFORM set_config('lock_timeout', previous, true);
        RAISE EXCEPTION 'semsearch could not lock table % for index "%" within %: another transaction is using it',
            ix.source, ix.name, {{ddl_lock_timeout}}
            USING ERRCODE = 'lock_not_available',
                  HINT = format('Let that transaction finish (see SELECT pid, state, xact_start, query FROM pg_stat_activity '
                                'WHERE pid = ANY(SELECT pid FROM pg_locks WHERE relation = %L::regclass)), then run this again.',
                                ix.source::text);
    END;
    PERFORM set_config('lock_timeout', previous, true);
END $$;

-- The tables an index's triggers are on: its table and, for a partitioned table, every partition
-- (statement triggers fire only for the table a statement names, and a statement may name a partition).
CREATE OR REPLACE FUNCTION semsearch.trigger_tables(ix semsearch.indexes)
RETURNS SETOF regclass LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT ix.source WHERE EXISTS (SELECT 1 FROM pg_class WHERE oid = ix.source)
    UNION SELECT relid FROM pg_partition_tree(ix.source)
$$;

-- Install (or update) an index's trigger function and its four triggers on each of its tables. Replaces
-- the function only when its text changed and creates only missing triggers, so re-running it takes no
-- table lock. A partition's TRUNCATE trigger runs BEFORE, to queue the rows it is about to lose.
CREATE OR REPLACE FUNCTION semsearch.install_triggers(ix semsearch.indexes)
RETURNS void LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    fn       name := 'enqueue_' || ix.name;
    body     text := semsearch.trigger_body(ix);
    op       text;
    trigger  name;
    tab      regclass;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_proc p WHERE p.pronamespace = 'semsearch'::regnamespace
                   AND p.proname = fn AND p.prosrc = body) THEN
        -- SECURITY DEFINER: an application role writes its own table without any right on semsearch's.
        EXECUTE format('CREATE OR REPLACE FUNCTION semsearch.%I() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER '
                       'SET search_path = pg_catalog, pg_temp AS %L', fn, body);
        EXECUTE format('REVOKE ALL ON FUNCTION semsearch.%I() FROM PUBLIC', fn);
    END IF;
    FOR tab IN SELECT semsearch.trigger_tables(ix) LOOP
        FOREACH op IN ARRAY ARRAY['insert', 'update', 'delete', 'truncate'] LOOP
            trigger := 'semsearch_' || ix.name || '_' || op;
            CONTINUE WHEN EXISTS (SELECT 1 FROM pg_trigger t WHERE t.tgrelid = tab AND t.tgname = trigger);
            PERFORM semsearch.run_on_source(ix, format('CREATE TRIGGER %I %s %s ON %s %s FOR EACH STATEMENT EXECUTE FUNCTION semsearch.%I()',
                trigger, CASE WHEN op = 'truncate' AND tab <> ix.source THEN 'BEFORE' ELSE 'AFTER' END, upper(op), tab,
                CASE op WHEN 'insert' THEN 'REFERENCING NEW TABLE AS new_rows'
                        WHEN 'update' THEN 'REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows'
                        WHEN 'delete' THEN 'REFERENCING OLD TABLE AS old_rows'
                        ELSE '' END,
                fn));
        END LOOP;
    END LOOP;
END $fn$;

-- Queue every row of one table (a partition attached, detached or truncated): the worker reads each
-- key's row as it is now, so rows still there are indexed and rows gone leave the index.
CREATE OR REPLACE FUNCTION semsearch.queue_rows_of(index_id integer, tab regclass)
RETURNS void LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    ix semsearch.indexes;
BEGIN
    SELECT * INTO STRICT ix FROM semsearch.indexes i WHERE i.id = queue_rows_of.index_id;
    EXECUTE format('INSERT INTO semsearch.queue (index_id, keys) SELECT %s, array_agg(%s) FROM %s n HAVING count(*) > 0',
                   ix.id, semsearch.key_text_sql(ix, 'n'), tab);
    PERFORM pg_notify('semsearch', ix.id::text);
END $$;

-- Follow the partitions of an index's table (the worker's idle pass): one attached or created since
-- gets the triggers and has its rows queued; one detached loses them and its rows leave the index.
CREATE OR REPLACE FUNCTION semsearch.follow_partitions(ix semsearch.indexes)
RETURNS void LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    tab regclass;
    op  text;
BEGIN
    FOR tab IN SELECT t.tgrelid::regclass FROM pg_trigger t
                WHERE t.tgname = 'semsearch_' || ix.name || '_insert'
                  AND t.tgrelid NOT IN (SELECT semsearch.trigger_tables(ix)) LOOP
        PERFORM semsearch.queue_rows_of(ix.id, tab);
        FOREACH op IN ARRAY ARRAY['insert', 'update', 'delete', 'truncate'] LOOP
            PERFORM semsearch.run_on_source(ix, format('DROP TRIGGER IF EXISTS %I ON %s', 'semsearch_' || ix.name || '_' || op, tab));
        END LOOP;
    END LOOP;
    FOR tab IN SELECT r FROM semsearch.trigger_tables(ix) r
                WHERE NOT EXISTS (SELECT 1 FROM pg_trigger t WHERE t.tgrelid = r AND t.tgname = 'semsearch_' || ix.name || '_insert') LOOP
        PERFORM semsearch.install_triggers(ix);  -- (its triggers first: rows written from now on are queued by them)
        PERFORM semsearch.queue_rows_of(ix.id, tab);
    END LOOP;
END $$;

-- Ask for every row of the source table to be queued. The rows are queued later by
-- semsearch.backfill_step, in short transactions: nothing here scans the table, so DDL that calls this
-- holds its locks only briefly. (`semsearch backfill --where` queues a subset itself, as its caller.)
CREATE OR REPLACE FUNCTION semsearch.request_backfill(index_name text)
RETURNS void LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM semsearch.request_backfill_by_id((semsearch.lookup_index(index_name)).id);
END $$;

-- The worker's model has this revision: recorded, and when the index's vectors were made by another
-- revision, every row is queued again (their content hashes include the revision, so each is
-- re-embedded once). Returns whether it queued them. Refused while a running worker still embeds
-- with the recorded revision (it holds semsearch.revision_lock): two revisions never share a store.
CREATE OR REPLACE FUNCTION semsearch.record_model_revision(index_id integer, revision text)
RETURNS boolean LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    ix       semsearch.indexes;
    previous text;
BEGIN
    SELECT * INTO STRICT ix FROM semsearch.indexes i WHERE i.id = index_id FOR UPDATE;
    previous := ix.model_revision;
    IF previous IS NOT DISTINCT FROM revision THEN
        RETURN false;
    END IF;
    PERFORM semsearch.refuse_other_revision(ix, ix.store_table, ix.model, previous, revision);
    UPDATE semsearch.indexes i SET model_revision = revision WHERE i.id = index_id;
    IF previous IS NULL THEN  -- first record (an index created before revisions were kept, or new)
        RETURN false;
    END IF;
    PERFORM semsearch.request_backfill_by_id(index_id);
    RETURN true;
END $$;

CREATE OR REPLACE FUNCTION semsearch.request_backfill_by_id(index_id integer)
RETURNS void LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    UPDATE semsearch.indexes i SET backfill_pending = true, backfill_after = NULL WHERE i.id = index_id;
    PERFORM pg_notify('semsearch', 'backfill');
END $$;

-- A trigger met a table that changed under its index: say so where status and workers look.
CREATE OR REPLACE FUNCTION semsearch.flag_schema_change(index_id integer, error text)
RETURNS void LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    UPDATE semsearch.indexes i SET problem = 'table changed: ' || error
     WHERE i.id = index_id AND i.problem IS DISTINCT FROM 'table changed: ' || error;
END $$;

-- Queue every key of a transition table by the key columns' current names (the trigger's fallback).
CREATE OR REPLACE FUNCTION semsearch.fallback_enqueue_sql(index_id integer, transition text)
RETURNS text LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    ix semsearch.indexes;
BEGIN
    SELECT * INTO STRICT ix FROM semsearch.indexes i WHERE i.id = index_id;
    ix.key_columns := semsearch.current_key_columns(ix.source);
    RETURN format('INSERT INTO semsearch.queue (index_id, keys) SELECT %s, array_agg(%s) FROM %I t HAVING count(*) > 0',
                  ix.id, semsearch.key_text_sql(ix, 't'), transition);
END $$;

-- Queue the next step_rows keys of a requested backfill, in key order. Returns how many were queued:
-- 0 when the table is done (the request is then cleared), NULL when no backfill is requested.
-- Workers call it; `semsearch backfill` calls it with a progress bar. Run it in its own short
-- transaction: it locks the registry row, so concurrent callers take turns.
CREATE OR REPLACE FUNCTION semsearch.backfill_step(index_name text, step_rows integer DEFAULT 1000)
RETURNS integer LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    ix   semsearch.indexes;
    n    integer;
    last text;
BEGIN
    SELECT * INTO ix FROM semsearch.indexes i WHERE i.name = index_name AND i.backfill_pending FOR UPDATE;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    PERFORM semsearch.lock_for_batch(ix.id);
    EXECUTE format(
        'WITH batch AS (SELECT k, row_number() OVER () AS o FROM (%s) s), '
        '     keys AS (SELECT array_agg(k ORDER BY o) AS ks FROM batch), '
        '     queued AS (INSERT INTO semsearch.queue (index_id, keys) SELECT %s, ks FROM keys WHERE ks IS NOT NULL) '
        'SELECT coalesce(cardinality(ks), 0), ks[cardinality(ks)] FROM keys',
        semsearch.keys_after_sql(ix), ix.id)
        INTO n, last USING ix.backfill_after, step_rows;
    IF n = 0 THEN
        UPDATE semsearch.indexes i SET backfill_pending = false, backfill_after = NULL
         WHERE i.id = ix.id;
    ELSE
        UPDATE semsearch.indexes i SET backfill_after = last WHERE i.id = ix.id;
        PERFORM pg_notify('semsearch', ix.id::text);
    END IF;
    RETURN n;
END $$;
