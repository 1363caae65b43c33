-- Per-index DDL: store table, HNSW and GIN indexes, triggers, backfill request.
-- The single source of truth for it: create_all, Alembic's op.create_search_index / alter_search_index /
-- drop_search_index (online or rendered by `alembic upgrade --sql`) and semsearch install call these.
-- Defaults written as a name in double braces are filled in from semsearch.options when the schema is installed.

-- Look up a registry row by name, with an error that says what to do.
CREATE OR REPLACE FUNCTION semsearch.lookup_index(index_name text)
RETURNS semsearch.indexes LANGUAGE plpgsql STABLE AS $$
DECLARE
    ix semsearch.indexes;
BEGIN
    SELECT * INTO ix FROM semsearch.indexes i WHERE i.name = index_name;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'semsearch index "%" does not exist', index_name
            USING HINT = 'Declare it (SearchIndex on a model + create_all, or semsearch.create_index) first; '
                         'SELECT name FROM semsearch.indexes lists the existing ones.';
    END IF;
    RETURN ix;
END $$;

CREATE OR REPLACE FUNCTION semsearch.hnsw_operator_class(distance text)
RETURNS text LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE distance WHEN 'cosine' THEN 'vector_cosine_ops' WHEN 'l2' THEN 'vector_l2_ops' ELSE 'vector_ip_ops' END
$$;

-- (Re)build the store's HNSW index: a store-only operation, the application's table is not touched.
CREATE OR REPLACE FUNCTION semsearch.build_hnsw(ix semsearch.indexes)
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    IF to_regclass(format('semsearch.%I', ix.store_table || '_hnsw')) IS NOT NULL THEN  -- (no NOTICE when absent)
        EXECUTE format('DROP INDEX semsearch.%I', ix.store_table || '_hnsw');
    END IF;
    EXECUTE format('CREATE INDEX %I ON semsearch.%I USING hnsw (embedding %s) WITH (m = %s, ef_construction = %s)',
                   ix.store_table || '_hnsw', ix.store_table, semsearch.hnsw_operator_class(ix.distance),
                   ix.hnsw_m, ix.hnsw_ef_construction);
END $$;

-- The store's keyword column and its GIN index, for the index's text search configuration.
CREATE OR REPLACE FUNCTION semsearch.build_keyword_column(ix semsearch.indexes)
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = format('semsearch.%I', ix.store_table)::regclass
               AND attname = 'tsv' AND NOT attisdropped) THEN
        EXECUTE format('ALTER TABLE semsearch.%I DROP COLUMN tsv', ix.store_table);
    END IF;
    EXECUTE format('ALTER TABLE semsearch.%I ADD COLUMN tsv tsvector GENERATED ALWAYS AS (to_tsvector(%L::regconfig, content)) STORED',
                   ix.store_table, ix.ts_config::text);
    EXECUTE format('CREATE INDEX %I ON semsearch.%I USING gin (tsv)', ix.store_table || '_gin', ix.store_table);
END $$;

-- Ask for a backfill only when the table has rows: an index created with its table (create_all, a
-- migration's create_table) queues each later row once, through its trigger.
CREATE OR REPLACE FUNCTION semsearch.backfill_if_rows(ix semsearch.indexes)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    has_rows boolean;
BEGIN
    EXECUTE format('SELECT EXISTS (SELECT 1 FROM %s)', ix.source) INTO has_rows;
    IF has_rows THEN
        PERFORM semsearch.request_backfill(ix.name);
    END IF;
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
    hnsw_ef_construction integer DEFAULT {{hnsw_ef_construction}}
) RETURNS integer LANGUAGE plpgsql AS $fn$
DECLARE
    ix       semsearch.indexes;
    key_cols name[];
    col      text;
    known    integer;
    changes  jsonb := '{}';
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('semsearch.ddl'));
    IF index_name !~ '^[a-z_][a-z0-9_]{0,39}$' THEN
        RAISE EXCEPTION 'invalid semsearch index name "%"', index_name
            USING HINT = 'Use 1-40 lowercase letters, digits or underscores, starting with a letter or underscore.';
    END IF;
    known := ({{known_dimensions}}::jsonb ->> model)::integer;
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
    IF columns IS NULL OR cardinality(columns) = 0 THEN
        RAISE EXCEPTION 'semsearch index "%" needs at least one column', index_name;
    END IF;
    SELECT array_agg(a.attname ORDER BY k.n) INTO key_cols
      FROM pg_index x, unnest(x.indkey) WITH ORDINALITY k(attnum, n), pg_attribute a
     WHERE x.indrelid = source AND x.indisprimary AND a.attrelid = source AND a.attnum = k.attnum;
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
    IF FOUND THEN
        IF ix.source <> source OR ix.model <> model OR ix.dimensions <> dimensions OR ix.distance <> distance THEN
            RAISE EXCEPTION 'semsearch index "%" already exists with source %, model %, % dimensions, % distance',
                index_name, ix.source, ix.model, ix.dimensions, ix.distance
                USING HINT = 'Drop it first with SELECT semsearch.drop_index(''' || index_name || ''') '
                             '(its embeddings are recomputed), or give the new declaration another name.';
        END IF;
        IF ix.key_columns IS DISTINCT FROM key_cols THEN
            UPDATE semsearch.indexes i SET key_columns = key_cols WHERE i.id = ix.id RETURNING * INTO ix;
            PERFORM semsearch.install_triggers(ix);
        END IF;
        IF ix.columns::text[] IS DISTINCT FROM columns THEN
            changes := changes || jsonb_build_object('columns', columns);
        END IF;
        IF ix.ts_config <> ts_config THEN
            changes := changes || jsonb_build_object('ts_config', ts_config::text);
        END IF;
        IF ix.chunk_tokens IS DISTINCT FROM chunk_tokens THEN
            changes := changes || jsonb_build_object('chunk_tokens', chunk_tokens);
        END IF;
        IF ix.chunk_overlap <> chunk_overlap THEN
            changes := changes || jsonb_build_object('chunk_overlap', chunk_overlap);
        END IF;
        IF ix.hnsw_m <> hnsw_m THEN
            changes := changes || jsonb_build_object('hnsw_m', hnsw_m);
        END IF;
        IF ix.hnsw_ef_construction <> hnsw_ef_construction THEN
            changes := changes || jsonb_build_object('hnsw_ef_construction', hnsw_ef_construction);
        END IF;
        IF changes <> '{}' THEN
            PERFORM semsearch.alter_index(index_name, changes);
        END IF;
        RETURN ix.id;
    END IF;

    INSERT INTO semsearch.indexes (name, source, key_columns, columns, model, dimensions, distance, ts_config,
                                   chunk_tokens, chunk_overlap, hnsw_m, hnsw_ef_construction, store_table)
    VALUES (index_name, source, key_cols, columns, model, dimensions, distance, ts_config,
            chunk_tokens, chunk_overlap, hnsw_m, hnsw_ef_construction, 'store_' || index_name)
    RETURNING * INTO ix;

    -- Store: one row per chunk. semsearch never writes to the application's table.
    EXECUTE format($$
        CREATE TABLE semsearch.%I (
            key          text NOT NULL,
            chunk        integer NOT NULL,
            content      text NOT NULL,
            embedding    vector(%s) NOT NULL,
            model        text NOT NULL,
            content_hash bytea NOT NULL,
            embedded_at  timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (key, chunk)
        )$$, ix.store_table, dimensions);
    PERFORM semsearch.build_keyword_column(ix);
    PERFORM semsearch.build_hnsw(ix);
    PERFORM semsearch.install_triggers(ix);
    PERFORM semsearch.backfill_if_rows(ix);
    RETURN ix.id;
END $fn$;

-- Change an index in place. `changes` holds the options to change, e.g.
--   SELECT semsearch.alter_index('articles_search', '{"columns": ["title"], "hnsw_m": 24}');
-- columns -> the trigger function is replaced and rows re-queued; chunk_tokens / chunk_overlap -> rows
-- re-queued (only text whose chunks change is re-embedded); hnsw_m / hnsw_ef_construction -> the HNSW
-- index is rebuilt; ts_config -> the keyword column is recomputed. Only the store is rebuilt: the
-- application's table is never locked for long.
CREATE OR REPLACE FUNCTION semsearch.alter_index(index_name text, changes jsonb)
RETURNS void LANGUAGE plpgsql AS $fn$
DECLARE
    ix      semsearch.indexes;
    old     semsearch.indexes;
    unknown text;
    col     text;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('semsearch.ddl'));
    old := semsearch.lookup_index(index_name);
    SELECT string_agg(k, ', ') INTO unknown FROM jsonb_object_keys(changes) k
     WHERE k NOT IN ('columns', 'ts_config', 'chunk_tokens', 'chunk_overlap', 'hnsw_m', 'hnsw_ef_construction');
    IF unknown IS NOT NULL THEN
        RAISE EXCEPTION 'semsearch.alter_index: unknown or unchangeable option(s) %', unknown
            USING HINT = 'It changes columns, ts_config, chunk_tokens, chunk_overlap, hnsw_m and hnsw_ef_construction; '
                         'for another model, dimensions or distance drop the index and create it again.';
    END IF;
    IF changes ? 'columns' THEN
        FOR col IN SELECT jsonb_array_elements_text(changes -> 'columns') LOOP
            IF NOT EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = old.source AND a.attname = col
                           AND a.attnum > 0 AND NOT a.attisdropped) THEN
                RAISE EXCEPTION 'column "%" does not exist in table %', col, old.source;
            END IF;
        END LOOP;
    END IF;
    UPDATE semsearch.indexes i SET
        columns = CASE WHEN changes ? 'columns'
                       THEN ARRAY(SELECT jsonb_array_elements_text(changes -> 'columns'))::name[] ELSE i.columns END,
        ts_config = CASE WHEN changes ? 'ts_config' THEN (changes ->> 'ts_config')::regconfig ELSE i.ts_config END,
        chunk_tokens = CASE WHEN changes ? 'chunk_tokens' THEN (changes ->> 'chunk_tokens')::integer ELSE i.chunk_tokens END,
        chunk_overlap = CASE WHEN changes ? 'chunk_overlap' THEN (changes ->> 'chunk_overlap')::integer ELSE i.chunk_overlap END,
        hnsw_m = CASE WHEN changes ? 'hnsw_m' THEN (changes ->> 'hnsw_m')::integer ELSE i.hnsw_m END,
        hnsw_ef_construction = CASE WHEN changes ? 'hnsw_ef_construction'
                                    THEN (changes ->> 'hnsw_ef_construction')::integer ELSE i.hnsw_ef_construction END
     WHERE i.id = old.id
    RETURNING * INTO ix;
    IF ix.columns IS DISTINCT FROM old.columns THEN
        PERFORM semsearch.install_triggers(ix);
    END IF;
    IF ix.ts_config <> old.ts_config THEN
        PERFORM semsearch.build_keyword_column(ix);
    END IF;
    IF (ix.hnsw_m, ix.hnsw_ef_construction) IS DISTINCT FROM (old.hnsw_m, old.hnsw_ef_construction) THEN
        PERFORM semsearch.build_hnsw(ix);
    END IF;
    IF (ix.columns, ix.chunk_tokens, ix.chunk_overlap) IS DISTINCT FROM (old.columns, old.chunk_tokens, old.chunk_overlap) THEN
        PERFORM semsearch.backfill_if_rows(ix);
    END IF;
END $fn$;

-- Remove an index: triggers, trigger function, store, queue entries, registry row.
CREATE OR REPLACE FUNCTION semsearch.drop_index(index_name text, missing_ok boolean DEFAULT false)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    ix semsearch.indexes;
    op text;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('semsearch.ddl'));
    SELECT * INTO ix FROM semsearch.indexes i WHERE i.name = index_name;
    IF NOT FOUND THEN
        IF missing_ok THEN RETURN; END IF;
        PERFORM semsearch.lookup_index(index_name);
    END IF;
    FOREACH op IN ARRAY ARRAY['insert', 'update', 'delete', 'truncate'] LOOP
        IF EXISTS (SELECT 1 FROM pg_trigger t WHERE t.tgrelid = ix.source AND t.tgname = 'semsearch_' || ix.name || '_' || op) THEN
            PERFORM semsearch.run_on_source(ix, format('DROP TRIGGER %I ON %s', 'semsearch_' || ix.name || '_' || op, ix.source));
        END IF;
    END LOOP;
    EXECUTE format('DROP FUNCTION IF EXISTS semsearch.%I()', 'enqueue_' || ix.name);
    EXECUTE format('DROP TABLE IF EXISTS semsearch.%I', ix.store_table);
    DELETE FROM semsearch.queue q WHERE q.index_id = ix.id;
    DELETE FROM semsearch.indexes i WHERE i.id = ix.id;
END $$;
