-- Primary keys of any type and any number of columns. The queue and the store hold a key as text:
-- for a one-column key of a type whose text form never depends on session settings (integers, text,
-- uuid) it is that text, for other one-column keys the value's JSON text (ISO dates, exact numerics),
-- and for a composite key a JSON array of its values. These functions write the SQL that encodes a
-- row's key and finds rows by key; every type name in it comes from the catalog, never from a user.

-- The key's columns with their types, in key order.
CREATE OR REPLACE FUNCTION semsearch.key_columns_typed(ix semsearch.indexes)
RETURNS TABLE (column_name name, type_sql text, type_oid oid, ordinal bigint)
LANGUAGE sql STABLE AS $$
    SELECT k.c, format_type(a.atttypid, a.atttypmod), a.atttypid, k.n
      FROM unnest(ix.key_columns) WITH ORDINALITY k(c, n)
      LEFT JOIN pg_attribute a ON a.attrelid = ix.source AND a.attname = k.c AND NOT a.attisdropped
     ORDER BY k.n
$$;

-- Expression giving the key text of row `alias`.
CREATE OR REPLACE FUNCTION semsearch.key_text_sql(ix semsearch.indexes, alias text)
RETURNS text LANGUAGE plpgsql STABLE AS $$
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
RETURNS text LANGUAGE sql STABLE AS $$
    SELECT CASE WHEN cardinality(ix.key_columns) = 1
                THEN (SELECT format('(%s)::%s', key_sql, type_sql) FROM semsearch.key_columns_typed(ix))
                ELSE (SELECT string_agg(format('((%s)::jsonb ->> %s)::%s', key_sql, ordinal - 1, type_sql), ', '
                                        ORDER BY ordinal)
                        FROM semsearch.key_columns_typed(ix)) END
$$;

-- The key columns of row `alias`, as a list (for ORDER BY, row comparisons and joins).
CREATE OR REPLACE FUNCTION semsearch.key_columns_sql(ix semsearch.indexes, alias text)
RETURNS text LANGUAGE sql STABLE AS $$
    SELECT string_agg(format('%I.%I', alias, c), ', ' ORDER BY n) FROM unnest(ix.key_columns) WITH ORDINALITY k(c, n)
$$;

-- Condition: row `alias` has one of the keys in the text[] expression `keys_sql` (uses the primary key index).
CREATE OR REPLACE FUNCTION semsearch.key_in_sql(ix semsearch.indexes, alias text, keys_sql text)
RETURNS text LANGUAGE sql STABLE AS $$
    SELECT CASE WHEN cardinality(ix.key_columns) = 1
                THEN (SELECT format('%I.%I = ANY((%s)::%s[])', alias, column_name, keys_sql, type_sql)
                        FROM semsearch.key_columns_typed(ix))
                ELSE format('(%s) IN (SELECT %s FROM unnest(%s) AS k(k))', semsearch.key_columns_sql(ix, alias),
                            semsearch.key_values_sql(ix, 'k.k'), keys_sql) END
$$;

-- The current text of the given keys: one row per key that still exists, with its indexed columns joined.
-- The worker reads the source through this, so it needs no knowledge of key types.
CREATE OR REPLACE FUNCTION semsearch.read_source(index_id integer, keys text[])
RETURNS TABLE (key text, content text) LANGUAGE plpgsql STABLE AS $$
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
