-- Primary keys of any type and any number of columns. The queue and the store hold a key as text:
-- for a one-column key of a type whose text form never depends on session settings (integers, text,
-- uuid) it is that text, for other one-column keys the value's JSON text (ISO dates, exact numerics),
-- and for a composite key a JSON array of its values. These functions write the SQL that encodes a
-- row's key and finds rows by key; every type name in it comes from the catalog, never from a user.

-- The source table's primary key columns, in key order (NULL when it has none).
CREATE OR REPLACE FUNCTION semsearch.current_key_columns(source regclass)
RETURNS name[] LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT array_agg(a.attname ORDER BY k.n)
      FROM pg_index x, unnest(x.indkey) WITH ORDINALITY k(attnum, n), pg_attribute a
     WHERE x.indrelid = source AND x.indisprimary AND a.attrelid = source AND a.attnum = k.attnum
$$;

-- The key's columns with their types, in key order.
CREATE OR REPLACE FUNCTION semsearch.key_columns_typed(ix semsearch.indexes)
RETURNS TABLE (column_name name, type_sql text, type_oid oid, ordinal bigint)
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT k.c, format_type(a.atttypid, a.atttypmod), a.atttypid, k.n
      FROM unnest(ix.key_columns) WITH ORDINALITY k(c, n)
      LEFT JOIN pg_attribute a ON a.attrelid = ix.source AND a.attname = k.c AND NOT a.attisdropped
     ORDER BY k.n
$$;

-- Expression giving the key text of row `alias`.
CREATE OR REPLACE FUNCTION semsearch.key_text_sql(ix semsearch.indexes, alias text)
RETURNS text LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    k record;
BEGIN
    IF cardinality(ix.key_columns) > 1 THEN
        RETURN (SELECT format('jsonb_build_array(%s)::text', string_agg(format('%I.%I', alias, column_name), ', '
                                                                       ORDER BY ordinal))
                  FROM semsearch.key_columns_typed(ix));
    END IF;
    SELECT * INTO k FROM semsearch.key_columns_typed(ix);
    IF k.type_oid IN ('int2'::regtype, 'int4'::regtype, 'int8'::regtype, 'text'::regtype,
                      'varchar'::regtype, 'uuid'::regtype) THEN
        RETURN format('%I.%I::text', alias, k.column_name);
    END IF;
    RETURN format('(to_jsonb(%I.%I) #>> ''{}'')', alias, k.column_name);
END $$;

-- The key's values, decoded from the key text `key_sql`, as a list of typed expressions.
CREATE OR REPLACE FUNCTION semsearch.key_values_sql(ix semsearch.indexes, key_sql text)
RETURNS text LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT CASE WHEN cardinality(ix.key_columns) = 1
                THEN (SELECT format('(%s)::%s', key_sql, type_sql) FROM semsearch.key_columns_typed(ix))
                ELSE (SELECT string_agg(format('((%s)::jsonb ->> %s)::%s', key_sql, ordinal - 1, type_sql), ', '
                                        ORDER BY ordinal)
                        FROM semsearch.key_columns_typed(ix)) END
$$;

-- The key columns of row `alias`, as a list (for ORDER BY, row comparisons and joins).
CREATE OR REPLACE FUNCTION semsearch.key_columns_sql(ix semsearch.indexes, alias text)
RETURNS text LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT string_agg(format('%I.%I', alias, c), ', ' ORDER BY n) FROM unnest(ix.key_columns) WITH ORDINALITY k(c, n)
$$;

-- Condition: row `alias` has one of the keys in the text[] expression `keys_sql` (uses the primary key index).
CREATE OR REPLACE FUNCTION semsearch.key_in_sql(ix semsearch.indexes, alias text, keys_sql text)
RETURNS text LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT CASE WHEN cardinality(ix.key_columns) = 1
                THEN (SELECT format('%I.%I = ANY((%s)::%s[])', alias, column_name, keys_sql, type_sql)
                        FROM semsearch.key_columns_typed(ix))
                ELSE format('(%s) IN (SELECT %s FROM unnest(%s) AS k(k))', semsearch.key_columns_sql(ix, alias),
                            semsearch.key_values_sql(ix, 'k.k'), keys_sql) END
$$;

-- Query: the key texts (column k) of the next $2 rows after key text $1 (NULL: from the first), in key
-- order. The walk of a backfill and of a new version's build.
CREATE OR REPLACE FUNCTION semsearch.keys_after_sql(ix semsearch.indexes)
RETURNS text LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT format('SELECT %1$s AS k FROM %2$s t WHERE ($1::text IS NULL OR (%3$s) > (%4$s)) ORDER BY %3$s LIMIT $2',
                  semsearch.key_text_sql(ix, 't'), ix.source, semsearch.key_columns_sql(ix, 't'),
                  semsearch.key_values_sql(ix, '$1'))
$$;

-- The current text of the given keys: one row per key that still exists, with its indexed columns joined.
-- The worker reads the source through this, so it needs no knowledge of key types and no right on the
-- application's tables: it runs as semsearch's owner (see semsearch.source_visibility_problem).
CREATE OR REPLACE FUNCTION semsearch.read_source(index_id integer, keys text[])
RETURNS TABLE (key text, content text) LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    ix semsearch.indexes;
BEGIN
    SELECT * INTO STRICT ix FROM semsearch.indexes i WHERE i.id = read_source.index_id;
    RETURN QUERY EXECUTE format('SELECT %s, concat_ws(E''\n\n'', %s) FROM %s t WHERE %s',
        semsearch.key_text_sql(ix, 't'),
        (SELECT string_agg(format('t.%I::text', c), ', ' ORDER BY n) FROM unnest(ix.columns) WITH ORDINALITY u(c, n)),
        ix.source, semsearch.key_in_sql(ix, 't', '$1'))
        USING keys;
END $$;

-- Why semsearch cannot read every row of the index's table (NULL when it can). It reads as its owner:
-- row-level security that applies to that role would make rows look deleted, so the worker refuses.
CREATE OR REPLACE FUNCTION semsearch.source_visibility_problem(index_id integer)
RETURNS text LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT CASE
        WHEN c.oid IS NULL THEN 'its table was dropped'
        WHEN NOT has_table_privilege(c.oid, 'SELECT') THEN
            format('%I, the role semsearch reads %s as, has no SELECT on it: GRANT SELECT ON %s TO %I', current_user, c.oid::regclass, c.oid::regclass, current_user)
        WHEN c.relrowsecurity AND NOT (r.rolsuper OR r.rolbypassrls) AND (c.relforcerowsecurity OR c.relowner <> r.oid) THEN
            format('row-level security on %s hides rows from %I, the role semsearch reads it as: install semsearch '
                   'as the table''s owner (without FORCE ROW LEVEL SECURITY) or a role with BYPASSRLS', c.oid::regclass, current_user)
        END
      FROM semsearch.indexes i JOIN pg_roles r ON r.rolname = current_user
      LEFT JOIN pg_class c ON c.oid = i.source
     WHERE i.id = index_id
$$;

-- Lock order of a worker's batch: the source table, then the store, then queue rows. The application's
-- TRUNCATE and semsearch.drop_index take them in the same order, so neither can deadlock with a worker.
CREATE OR REPLACE FUNCTION semsearch.lock_for_batch(index_id integer)
RETURNS void LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    ix semsearch.indexes;
BEGIN
    SELECT * INTO STRICT ix FROM semsearch.indexes i WHERE i.id = index_id;
    -- A table the application holds (ALTER TABLE, TRUNCATE) is skipped for now, not waited for.
    PERFORM set_config('lock_timeout', '1s', true);
    EXECUTE format('LOCK TABLE %s IN ACCESS SHARE MODE', ix.source);
    EXECUTE format('LOCK TABLE semsearch.%I IN ROW EXCLUSIVE MODE', ix.store_table);
END $$;
