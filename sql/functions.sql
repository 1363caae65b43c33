-- semsearch functions and views. Re-applied by every `semsearch install` (and create_all) after the
-- table migrations, so upgrading the package upgrades them; every statement is idempotent.

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

-- OR-semantics keyword query: every lexeme of a natural-language question may match,
-- ranking decides. (websearch_to_tsquery ANDs all words, so long questions find nothing.)
CREATE OR REPLACE FUNCTION semsearch.or_query(config regconfig, query_text text)
RETURNS tsquery LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT coalesce(
        string_agg('''' || replace(replace(lexeme, '\', '\\'), '''', '''''') || '''', ' | ')::tsquery,
        ''::tsquery)
    FROM unnest(tsvector_to_array(to_tsvector(config, coalesce(query_text, '')))) AS lexeme
$$;

CREATE OR REPLACE FUNCTION semsearch.distance_operator(distance text)
RETURNS text LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE distance WHEN 'cosine' THEN '<=>' WHEN 'l2' THEN '<->' WHEN 'inner_product' THEN '<#>' END
$$;

-- Per-index DDL: store table, HNSW + GIN indexes, enqueue trigger, backfill.
-- The single source of truth for it: create_all, Alembic's op.create_search_index and
-- semsearch install all call this function.
CREATE OR REPLACE FUNCTION semsearch.create_index(
    index_name      text,
    source          regclass,
    columns         text[],
    model           text,
    dimensions      integer,
    distance        text DEFAULT 'cosine',
    ts_config       regconfig DEFAULT 'english',
    chunk_tokens    integer DEFAULT NULL,
    chunk_overlap   integer DEFAULT 0,
    hnsw_m          integer DEFAULT 16,
    hnsw_ef_construction integer DEFAULT 64
) RETURNS integer LANGUAGE plpgsql AS $fn$
DECLARE
    ix          semsearch.indexes;
    key_col     name;
    key_typ     text;
    pk_cols     int;
    store       name := 'store_' || index_name;
    opclass     text;
    col         text;
    changed     text;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('semsearch.ddl'));
    IF index_name !~ '^[a-z_][a-z0-9_]{0,39}$' THEN
        RAISE EXCEPTION 'invalid semsearch index name "%"', index_name
            USING HINT = 'Use 1-40 lowercase letters, digits or underscores, starting with a letter or underscore.';
    END IF;
    IF distance NOT IN ('cosine', 'l2', 'inner_product') THEN
        RAISE EXCEPTION 'unknown distance "%"', distance USING HINT = 'Use cosine, l2 or inner_product.';
    END IF;

    SELECT count(*), min(a.attname), min(format_type(a.atttypid, a.atttypmod))
      INTO pk_cols, key_col, key_typ
      FROM pg_index x JOIN pg_attribute a ON a.attrelid = x.indrelid AND a.attnum = ANY (x.indkey)
     WHERE x.indrelid = source AND x.indisprimary;
    IF pk_cols <> 1 THEN
        RAISE EXCEPTION 'table % needs a single-column primary key for semsearch (found % key columns)', source, pk_cols;
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
        IF ix.columns::text[] IS DISTINCT FROM columns OR ix.ts_config <> ts_config
           OR ix.chunk_tokens IS DISTINCT FROM chunk_tokens OR ix.chunk_overlap <> chunk_overlap THEN
            changed := 'yes';
        END IF;
        UPDATE semsearch.indexes i
           SET columns = create_index.columns, ts_config = create_index.ts_config,
               chunk_tokens = create_index.chunk_tokens, chunk_overlap = create_index.chunk_overlap,
               key_column = key_col, key_type = key_typ
         WHERE i.id = ix.id
        RETURNING * INTO ix;
    ELSE
        INSERT INTO semsearch.indexes (name, source, key_column, key_type, columns, model, dimensions,
                                       distance, ts_config, chunk_tokens, chunk_overlap, store_table)
        VALUES (index_name, source, key_col, key_typ, columns, model, dimensions,
                distance, ts_config, chunk_tokens, chunk_overlap, store)
        RETURNING * INTO ix;
        changed := 'new';
    END IF;

    -- Store: one row per chunk. Never writes to the application's table.
    EXECUTE format($$
        CREATE TABLE IF NOT EXISTS semsearch.%I (
            key          text NOT NULL,
            chunk        integer NOT NULL,
            content      text NOT NULL,
            embedding    vector(%s) NOT NULL,
            model        text NOT NULL,
            content_hash bytea NOT NULL,
            tsv          tsvector GENERATED ALWAYS AS (to_tsvector(%L::regconfig, content)) STORED,
            embedded_at  timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (key, chunk)
        )$$, store, dimensions, ts_config::text);
    opclass := CASE distance WHEN 'cosine' THEN 'vector_cosine_ops' WHEN 'l2' THEN 'vector_l2_ops'
                             ELSE 'vector_ip_ops' END;
    EXECUTE format('CREATE INDEX IF NOT EXISTS %I ON semsearch.%I USING hnsw (embedding %s) '
                   'WITH (m = %s, ef_construction = %s)',
                   store || '_hnsw', store, opclass, hnsw_m, hnsw_ef_construction);
    EXECUTE format('CREATE INDEX IF NOT EXISTS %I ON semsearch.%I USING gin (tsv)', store || '_gin', store);

    PERFORM semsearch.install_triggers(ix);
    IF changed IS NOT NULL THEN
        PERFORM semsearch.request_backfill(index_name);
    END IF;
    RETURN ix.id;
END $fn$;

-- Statement-level triggers with transition tables: one queue INSERT per statement, not per row,
-- and only for rows whose embedded columns actually changed (IS DISTINCT FROM).
CREATE OR REPLACE FUNCTION semsearch.install_triggers(ix semsearch.indexes)
RETURNS void LANGUAGE plpgsql AS $fn$
DECLARE
    fn       text := 'enqueue_' || ix.name;
    new_cols text;
    old_cols text;
BEGIN
    SELECT string_agg(format('n.%I', c), ', '), string_agg(format('o.%I', c), ', ')
      INTO new_cols, old_cols FROM unnest(ix.columns) c;
    EXECUTE format($body$
        CREATE OR REPLACE FUNCTION semsearch.%1$I() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF TG_OP = 'INSERT' THEN
                INSERT INTO semsearch.queue (index_id, keys)
                SELECT %2$s, array_agg(n.%3$I::text) FROM new_rows n HAVING count(*) > 0;
            ELSIF TG_OP = 'UPDATE' THEN
                INSERT INTO semsearch.queue (index_id, keys)
                SELECT %2$s, array_agg(coalesce(n.%3$I, o.%3$I)::text)
                  FROM new_rows n FULL JOIN old_rows o ON n.%3$I = o.%3$I
                 WHERE n.%3$I IS NULL OR o.%3$I IS NULL OR ROW(%4$s) IS DISTINCT FROM ROW(%5$s)
                HAVING count(*) > 0;
            ELSIF TG_OP = 'DELETE' THEN
                INSERT INTO semsearch.queue (index_id, keys)
                SELECT %2$s, array_agg(o.%3$I::text) FROM old_rows o HAVING count(*) > 0;
            ELSE -- TRUNCATE: nothing left to embed or to serve
                DELETE FROM semsearch.queue WHERE index_id = %2$s;
                DELETE FROM semsearch.failures WHERE index_id = %2$s;
                TRUNCATE semsearch.%6$I;
                RETURN NULL;
            END IF;
            IF FOUND THEN
                PERFORM pg_notify('semsearch', '%2$s');
            END IF;
            RETURN NULL;
        END $$$body$, fn, ix.id, ix.key_column, new_cols, old_cols, ix.store_table);

    EXECUTE format('CREATE OR REPLACE TRIGGER %I AFTER INSERT ON %s REFERENCING NEW TABLE AS new_rows '
                   'FOR EACH STATEMENT EXECUTE FUNCTION semsearch.%I()', 'semsearch_' || ix.name || '_insert', ix.source, fn);
    EXECUTE format('CREATE OR REPLACE TRIGGER %I AFTER UPDATE ON %s REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows '
                   'FOR EACH STATEMENT EXECUTE FUNCTION semsearch.%I()', 'semsearch_' || ix.name || '_update', ix.source, fn);
    EXECUTE format('CREATE OR REPLACE TRIGGER %I AFTER DELETE ON %s REFERENCING OLD TABLE AS old_rows '
                   'FOR EACH STATEMENT EXECUTE FUNCTION semsearch.%I()', 'semsearch_' || ix.name || '_delete', ix.source, fn);
    EXECUTE format('CREATE OR REPLACE TRIGGER %I AFTER TRUNCATE ON %s '
                   'FOR EACH STATEMENT EXECUTE FUNCTION semsearch.%I()', 'semsearch_' || ix.name || '_truncate', ix.source, fn);
END $fn$;

-- Ask for every row of the source table (or those matching filter, a SQL condition) to be queued.
-- The rows are queued later by semsearch.backfill_step, in short transactions: nothing here scans
-- the table, so DDL that calls this holds its locks only briefly.
CREATE OR REPLACE FUNCTION semsearch.request_backfill(index_name text, filter text DEFAULT NULL)
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    UPDATE semsearch.indexes i
       SET backfill_pending = true, backfill_after = NULL, backfill_filter = filter
     WHERE i.id = (semsearch.lookup_index(index_name)).id;
    PERFORM pg_notify('semsearch', 'backfill');
END $$;

-- Queue the next step_rows keys of a requested backfill, in key order. Returns how many were queued:
-- 0 when the table is done (the request is then cleared), NULL when no backfill is requested.
-- Workers call it; `semsearch backfill` calls it with a progress bar. Run it in its own short
-- transaction: it locks the registry row, so concurrent callers take turns.
CREATE OR REPLACE FUNCTION semsearch.backfill_step(index_name text, step_rows integer DEFAULT 1000)
RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    ix   semsearch.indexes;
    n    integer;
    last text;
BEGIN
    SELECT * INTO ix FROM semsearch.indexes i WHERE i.name = index_name AND i.backfill_pending FOR UPDATE;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    EXECUTE format(
        'WITH batch AS (SELECT %1$I AS k FROM %2$s WHERE ($1::text IS NULL OR %1$I > $1::%3$s) AND (%4$s) '
        '               ORDER BY %1$I LIMIT $2), '
        '     queued AS (INSERT INTO semsearch.queue (index_id, keys) '
        '                SELECT %5$s, array_agg(k::text ORDER BY k) FROM batch HAVING count(*) > 0) '
        'SELECT count(*), max(k)::text FROM batch',
        ix.key_column, ix.source, ix.key_type, coalesce(ix.backfill_filter, 'true'), ix.id)
        INTO n, last USING ix.backfill_after, step_rows;
    IF n = 0 THEN
        UPDATE semsearch.indexes i SET backfill_pending = false, backfill_after = NULL, backfill_filter = NULL
         WHERE i.id = ix.id;
    ELSE
        UPDATE semsearch.indexes i SET backfill_after = last WHERE i.id = ix.id;
        PERFORM pg_notify('semsearch', ix.id::text);
    END IF;
    RETURN n;
END $$;

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
        EXECUTE format('DROP TRIGGER IF EXISTS %I ON %s', 'semsearch_' || ix.name || '_' || op, ix.source);
    END LOOP;
    EXECUTE format('DROP FUNCTION IF EXISTS semsearch.%I()', 'enqueue_' || ix.name);
    EXECUTE format('DROP TABLE IF EXISTS semsearch.%I', ix.store_table);
    DELETE FROM semsearch.queue q WHERE q.index_id = ix.id;
    DELETE FROM semsearch.indexes i WHERE i.id = ix.id;
END $$;

-- The query text of each search arm, shared by the search functions and semsearch.explain.
-- $1 = query text or embedding, $2 = number of candidates.
CREATE OR REPLACE FUNCTION semsearch.arm_sql(ix semsearch.indexes, arm text)
RETURNS text LANGUAGE plpgsql STABLE AS $$
DECLARE
    op text := semsearch.distance_operator(ix.distance);
    score text := CASE ix.distance WHEN 'cosine' THEN '1 - min(d)' WHEN 'l2' THEN '-min(d)' ELSE '-min(d)' END;
BEGIN
    IF arm = 'semantic' THEN
        -- ORDER BY distance LIMIT on the bare store table: the shape that uses HNSW.
        -- Then best chunk per document.
        RETURN format('SELECT key, (%s)::float8 AS score, row_number() OVER (ORDER BY min(d))::integer AS rank '
                      'FROM (SELECT key, embedding %s $1 AS d FROM semsearch.%I ORDER BY embedding %s $1 LIMIT semsearch.chunk_rows($2)) c '
                      'GROUP BY key ORDER BY min(d) LIMIT $2',
                      score, op, ix.store_table, op);
    ELSIF arm = 'keyword' THEN
        RETURN format('SELECT key, max(r)::float8 AS score, row_number() OVER (ORDER BY max(r) DESC)::integer AS rank '
                      'FROM (SELECT s.key, ts_rank(s.tsv, q) AS r FROM semsearch.%I s, '
                      'semsearch.or_query(%L::regconfig, $1) q WHERE s.tsv @@ q) c '
                      'GROUP BY key ORDER BY max(r) DESC LIMIT $2',
                      ix.store_table, ix.ts_config::text);
    END IF;
    RAISE EXCEPTION 'unknown search arm "%"', arm USING HINT = 'Use semantic or keyword.';
END $$;

-- Chunk rows the semantic arm reads to find `candidates` distinct documents.
CREATE OR REPLACE FUNCTION semsearch.chunk_rows(candidates integer)
RETURNS integer LANGUAGE sql IMMUTABLE AS $$ SELECT candidates * 3 $$;

-- HNSW returns at most ef_search rows: raise it (for this transaction) to cover the chunk rows read.
CREATE OR REPLACE FUNCTION semsearch.cover_ef_search(candidates integer)
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    IF coalesce(current_setting('hnsw.ef_search', true), '40')::integer < semsearch.chunk_rows(candidates) THEN
        PERFORM set_config('hnsw.ef_search', least(semsearch.chunk_rows(candidates), 1000)::text, true);
    END IF;
END $$;

CREATE OR REPLACE FUNCTION semsearch.semantic_search(
    index_name text, query_embedding vector, match_count integer DEFAULT 10)
RETURNS TABLE (key text, score float8, rank integer) LANGUAGE plpgsql AS $$
BEGIN
    PERFORM semsearch.cover_ef_search(match_count);
    RETURN QUERY EXECUTE semsearch.arm_sql(semsearch.lookup_index(index_name), 'semantic')
        USING query_embedding, match_count;
END $$;

CREATE OR REPLACE FUNCTION semsearch.keyword_search(
    index_name text, query_text text, match_count integer DEFAULT 10)
RETURNS TABLE (key text, score float8, rank integer) LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN QUERY EXECUTE semsearch.arm_sql(semsearch.lookup_index(index_name), 'keyword')
        USING query_text, match_count;
END $$;

-- Hybrid search: reciprocal rank fusion, score = sum over arms of weight / (rrf_k + rank).
CREATE OR REPLACE FUNCTION semsearch.hybrid_search(
    index_name text, query_text text, query_embedding vector, match_count integer DEFAULT 10,
    candidates integer DEFAULT NULL, rrf_k integer DEFAULT 60,
    semantic_weight float8 DEFAULT 1.0, keyword_weight float8 DEFAULT 1.0)
RETURNS TABLE (key text, score float8, semantic_rank integer, keyword_rank integer) LANGUAGE plpgsql AS $$
DECLARE
    ix semsearch.indexes := semsearch.lookup_index(index_name);
    n  integer := greatest(coalesce(candidates, 100), match_count);  -- each arm's depth
BEGIN
    PERFORM semsearch.cover_ef_search(n);
    RETURN QUERY EXECUTE format(
        'WITH s AS (%s), k AS (%s) '
        'SELECT coalesce(s.key, k.key), '
        '       (coalesce($4 / ($3 + s.rank), 0) + coalesce($5 / ($3 + k.rank), 0))::float8, s.rank, k.rank '
        'FROM s FULL JOIN k ON s.key = k.key ORDER BY 2 DESC, 1 LIMIT $6',
        replace(semsearch.arm_sql(ix, 'semantic'), '$1', '$7'), semsearch.arm_sql(ix, 'keyword'))
        USING query_text, n, rrf_k::float8, semantic_weight, keyword_weight, match_count, query_embedding;
END $$;

-- EXPLAIN one search arm exactly as the search functions run it.
CREATE OR REPLACE FUNCTION semsearch.explain(
    index_name text, arm text, query_text text, query_embedding vector, candidates integer DEFAULT 10)
RETURNS SETOF text LANGUAGE plpgsql AS $$
DECLARE
    ix semsearch.indexes := semsearch.lookup_index(index_name);
BEGIN
    PERFORM semsearch.cover_ef_search(candidates);
    IF arm = 'semantic' THEN
        RETURN QUERY EXECUTE 'EXPLAIN ' || semsearch.arm_sql(ix, arm) USING query_embedding, candidates;
    ELSE
        RETURN QUERY EXECUTE 'EXPLAIN ' || semsearch.arm_sql(ix, arm) USING query_text, candidates;
    END IF;
END $$;

-- One row per index: what the worker has left to do, is doing, has done and could not do.
-- in_flight counts keys a worker holds right now (its per-key advisory locks).
DROP VIEW IF EXISTS semsearch.status;
DROP FUNCTION IF EXISTS semsearch.index_status();
CREATE FUNCTION semsearch.index_status()
RETURNS TABLE (index_name text, source_table text, model text, pending bigint, in_flight bigint, failed bigint,
               oldest_pending_age interval, embedded_last_minute bigint, documents bigint,
               backfilling boolean)
LANGUAGE plpgsql STABLE AS $$
DECLARE
    ix semsearch.indexes;
BEGIN
    FOR ix IN SELECT * FROM semsearch.indexes ORDER BY id LOOP
        index_name := ix.name;
        source_table := ix.source::text;
        model := ix.model;
        SELECT count(DISTINCT k), now() - min(q.queued_at) INTO pending, oldest_pending_age
          FROM semsearch.queue q, unnest(q.keys) k WHERE q.index_id = ix.id;
        backfilling := ix.backfill_pending;
        SELECT count(*) INTO in_flight FROM pg_locks l
         WHERE l.locktype = 'advisory' AND l.objsubid = 2 AND l.classid = ix.id::oid
           AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database());
        SELECT count(*) INTO failed FROM semsearch.failures f WHERE f.index_id = ix.id;
        EXECUTE format('SELECT count(DISTINCT key) FILTER (WHERE embedded_at > now() - interval ''1 minute''), '
                       'count(DISTINCT key) FROM semsearch.%I', ix.store_table)
           INTO embedded_last_minute, documents;
        RETURN NEXT;
    END LOOP;
END $$;

CREATE VIEW semsearch.status AS SELECT * FROM semsearch.index_status();
