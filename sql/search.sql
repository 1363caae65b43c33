-- Search functions: the semantic arm (HNSW), the keyword arm (tsvector + GIN) and their fusion.
-- The ORM's queries call these same functions, so ORM and raw-SQL users run the same search SQL.

-- Signatures this version replaced (a new trailing argument would otherwise make calls ambiguous).
DO $$
DECLARE
    fn regprocedure;
BEGIN
    FOR fn IN SELECT p.oid::regprocedure FROM pg_proc p
               WHERE p.pronamespace = 'semsearch'::regnamespace
                 AND ((p.proname IN ('arm_sql', 'keyword_search') AND NOT p.proargnames && ARRAY['syntax'])
                      OR (p.proname = 'hybrid_search' AND NOT p.proargnames && ARRAY['semantic_score'])) LOOP
        EXECUTE format('DROP FUNCTION %s', fn);
    END LOOP;
END $$;

-- Search arguments in range, with errors that say so (not DivisionByZero or integer overflow).
CREATE OR REPLACE FUNCTION semsearch.check_search_args(match_count integer, candidates integer DEFAULT NULL,
    rrf_k integer DEFAULT 60, semantic_weight float8 DEFAULT 1, keyword_weight float8 DEFAULT 1)
RETURNS void LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF match_count IS NULL OR match_count NOT BETWEEN 1 AND {{max_results}} THEN
        RAISE EXCEPTION 'match_count must be from 1 to %, not %', {{max_results}}, match_count USING ERRCODE = 'data_exception';
    END IF;
    IF candidates IS NOT NULL AND candidates NOT BETWEEN 1 AND {{max_results}} THEN
        RAISE EXCEPTION 'candidates must be from 1 to %, not %', {{max_results}}, candidates USING ERRCODE = 'data_exception';
    END IF;
    IF rrf_k IS NULL OR rrf_k NOT BETWEEN 1 AND 1000000 THEN
        RAISE EXCEPTION 'rrf_k must be from 1 to 1000000, not %', rrf_k USING ERRCODE = 'data_exception';
    END IF;
    IF semantic_weight IS NULL OR keyword_weight IS NULL OR semantic_weight < 0 OR keyword_weight < 0
       OR semantic_weight IN ('NaN', 'Infinity') OR keyword_weight IN ('NaN', 'Infinity')
       OR (semantic_weight = 0 AND keyword_weight = 0) THEN
        RAISE EXCEPTION 'weights must be finite, 0 or more and not both 0 (semantic %, keyword %)', semantic_weight, keyword_weight
            USING ERRCODE = 'data_exception';
    END IF;
END $$;

-- OR-semantics keyword query: every lexeme of a natural-language question may match, ranking decides.
-- (websearch_to_tsquery ANDs all words, so long questions find nothing.) NULL when the text has no
-- lexemes (only stop words or punctuation): it then matches nothing, without an empty-query NOTICE.
CREATE OR REPLACE FUNCTION semsearch.or_query(config regconfig, query_text text)
RETURNS tsquery LANGUAGE sql IMMUTABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
    SELECT string_agg('''' || replace(replace(lexeme, '\', '\\'), '''', '''''') || '''', ' | ')::tsquery
    FROM unnest(tsvector_to_array(to_tsvector(config, left(coalesce(query_text, ''), {{max_query_chars}})))) AS lexeme
$$;

-- The keyword arm's query, by syntax: 'or' (default: every lexeme of a natural-language question may
-- match, ranking decides), 'websearch' (websearch_to_tsquery: "quoted phrases", OR, -excluded),
-- 'phrase' (the words next to each other, in order) or 'prefix' (any word starting with a query word).
-- NULL when nothing is left to match, so no empty-query NOTICE.
CREATE OR REPLACE FUNCTION semsearch.keyword_query(config regconfig, query_text text, syntax text DEFAULT 'or')
RETURNS tsquery LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    q tsquery;
    t text := left(coalesce(query_text, ''), {{max_query_chars}});
BEGIN
    IF syntax IS NULL OR syntax NOT IN ('or', 'websearch', 'phrase', 'prefix') THEN
        RAISE EXCEPTION 'unknown keyword syntax "%"', syntax
            USING ERRCODE = 'data_exception', HINT = 'Use or, websearch, phrase or prefix.';
    END IF;
    q := CASE syntax
        WHEN 'or' THEN semsearch.or_query(config, t)
        WHEN 'websearch' THEN websearch_to_tsquery(config, t)
        WHEN 'phrase' THEN phraseto_tsquery(config, t)
        ELSE (SELECT string_agg('''' || replace(replace(lexeme, '\', '\\'), '''', '''''') || ''':*', ' | ')::tsquery
                FROM unnest(tsvector_to_array(to_tsvector(config, t))) AS lexeme)
        END;
    RETURN CASE WHEN numnode(q) > 0 THEN q END;
END $$;

-- The distance operator, schema-qualified (works under any search_path).
CREATE OR REPLACE FUNCTION semsearch.distance_operator(distance text)
RETURNS text LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT format('OPERATOR(%s.%s)', semsearch.vector_schema(),
                  CASE distance WHEN 'cosine' THEN '<=>' WHEN 'l2' THEN '<->' WHEN 'inner_product' THEN '<#>' END)
$$;

-- A query vector must exist and match the index: otherwise every distance is NULL and the "results"
-- would be arbitrary rows.
CREATE OR REPLACE FUNCTION semsearch.check_query_vector(ix semsearch.indexes, query_embedding vector)
RETURNS void LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF query_embedding IS NULL THEN
        RAISE EXCEPTION 'semsearch index "%": the query embedding is NULL', ix.name
            USING ERRCODE = 'null_value_not_allowed',
                  HINT = format('Pass the query''s embedding by model %s (%s dimensions).', ix.model, ix.dimensions);
    END IF;
    IF cardinality(query_embedding::real[]) <> ix.dimensions THEN
        RAISE EXCEPTION 'semsearch index "%" holds % dimensions, the query embedding has %',
            ix.name, ix.dimensions, cardinality(query_embedding::real[])
            USING ERRCODE = 'data_exception',
                  HINT = format('Embed the query with the index''s model, %s.', ix.model);
    END IF;
    IF ix.distance = 'cosine' AND NOT EXISTS (SELECT 1 FROM unnest(query_embedding::real[]) v WHERE v <> 0) THEN
        RAISE EXCEPTION 'semsearch index "%": the query embedding is all zeros, which has no cosine distance', ix.name
            USING ERRCODE = 'data_exception';
    END IF;
    IF EXISTS (SELECT 1 FROM unnest(query_embedding::real[]) v WHERE v = 'NaN' OR v IN ('Infinity', '-Infinity')) THEN
        RAISE EXCEPTION 'semsearch index "%": the query embedding holds NaN or infinite values', ix.name
            USING ERRCODE = 'data_exception';
    END IF;
END $$;

-- The query text of each search arm, shared by the search functions and semsearch.explain.
-- $1 = query text or embedding, $2 = number of candidates; syntax: the keyword query's (keyword_query).
CREATE OR REPLACE FUNCTION semsearch.arm_sql(ix semsearch.indexes, arm text, syntax text DEFAULT 'or')
RETURNS text LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    op text := semsearch.distance_operator(ix.distance);
    score text := CASE ix.distance WHEN 'cosine' THEN '1 - min(d)' ELSE '-min(d)' END;
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
                      'semsearch.keyword_query(%L::regconfig, $1, %L) q WHERE s.tsv @@ q) c '
                      'GROUP BY key ORDER BY max(r) DESC LIMIT $2',
                      ix.store_table, ix.ts_config::text, syntax);
    END IF;
    RAISE EXCEPTION 'unknown search arm "%"', arm USING HINT = 'Use semantic or keyword.';
END $$;

-- Chunk rows the semantic arm reads to find `candidates` distinct documents.
CREATE OR REPLACE FUNCTION semsearch.chunk_rows(candidates integer)
RETURNS integer LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$ SELECT candidates * 3 $$;

-- HNSW returns at most ef_search rows: raise it (for this transaction) to cover the chunk rows read.
-- Iterative scans (pgvector 0.8) keep scanning when rows are filtered out (row-level security on the
-- store hides other tenants' rows), so a filtered search still finds its full count.
CREATE OR REPLACE FUNCTION semsearch.cover_ef_search(candidates integer)
RETURNS void LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF coalesce(current_setting('hnsw.iterative_scan', true), 'off') = 'off' THEN
        PERFORM set_config('hnsw.iterative_scan', 'relaxed_order', true);
    END IF;
    -- pgvector stops an iterative scan after 20,000 tuples by default: a small tenant among many
    -- others would get too few rows. The scan still stops as soon as it has enough.
    IF coalesce(current_setting('hnsw.max_scan_tuples', true), '20000')::integer < {{max_scan_tuples}} THEN
        PERFORM set_config('hnsw.max_scan_tuples', '{{max_scan_tuples}}', true);
    END IF;
    -- It also stops at work_mem x hnsw.scan_mem_multiplier of memory (1 by default).
    IF coalesce(current_setting('hnsw.scan_mem_multiplier', true), '1')::float8 < {{scan_mem_multiplier}} THEN
        PERFORM set_config('hnsw.scan_mem_multiplier', '{{scan_mem_multiplier}}', true);
    END IF;
    IF coalesce(current_setting('hnsw.ef_search', true), '40')::integer < semsearch.chunk_rows(candidates) THEN
        PERFORM set_config('hnsw.ef_search', least(semsearch.chunk_rows(candidates), 1000)::text, true);
    END IF;
END $$;

CREATE OR REPLACE FUNCTION semsearch.semantic_search(
    index_name text, query_embedding vector, match_count integer DEFAULT 10)
RETURNS TABLE (key text, score float8, rank integer) LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    ix semsearch.indexes := semsearch.lookup_index(index_name);
BEGIN
    PERFORM semsearch.check_search_args(match_count);
    PERFORM semsearch.check_query_vector(ix, query_embedding);
    PERFORM semsearch.cover_ef_search(match_count);
    RETURN QUERY EXECUTE semsearch.arm_sql(ix, 'semantic') USING query_embedding, match_count;
END $$;

CREATE OR REPLACE FUNCTION semsearch.keyword_search(
    index_name text, query_text text, match_count integer DEFAULT 10, syntax text DEFAULT 'or')
RETURNS TABLE (key text, score float8, rank integer) LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM semsearch.check_search_args(match_count);
    PERFORM semsearch.keyword_query('simple', '', syntax);  -- an unknown syntax is an error
    RETURN QUERY EXECUTE semsearch.arm_sql(semsearch.lookup_index(index_name), 'keyword', syntax)
        USING query_text, match_count;
END $$;

-- Hybrid search: reciprocal rank fusion, score = sum over arms of weight / (rrf_k + rank). Each row also
-- carries each arm's rank and score (NULL where that arm did not find it), to tune weights with.
CREATE OR REPLACE FUNCTION semsearch.hybrid_search(
    index_name text, query_text text, query_embedding vector, match_count integer DEFAULT 10,
    candidates integer DEFAULT NULL, rrf_k integer DEFAULT 60,
    semantic_weight float8 DEFAULT 1.0, keyword_weight float8 DEFAULT 1.0, keyword_syntax text DEFAULT 'or')
RETURNS TABLE (key text, score float8, semantic_rank integer, keyword_rank integer,
               semantic_score float8, keyword_score float8) LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    ix semsearch.indexes := semsearch.lookup_index(index_name);
    n  integer := greatest(coalesce(candidates, {{candidates}}), match_count);  -- each arm's depth
BEGIN
    PERFORM semsearch.check_search_args(match_count, candidates, rrf_k, semantic_weight, keyword_weight);
    PERFORM semsearch.check_query_vector(ix, query_embedding);
    PERFORM semsearch.keyword_query('simple', '', keyword_syntax);
    PERFORM semsearch.cover_ef_search(n);
    RETURN QUERY EXECUTE format(
        'WITH s AS (%s), k AS (%s) '
        'SELECT coalesce(s.key, k.key), '
        '       (coalesce($4 / ($3 + s.rank), 0) + coalesce($5 / ($3 + k.rank), 0))::float8, s.rank, k.rank, '
        '       s.score, k.score '
        'FROM s FULL JOIN k ON s.key = k.key ORDER BY 2 DESC, 1 LIMIT $6',
        replace(semsearch.arm_sql(ix, 'semantic'), '$1', '$7'), semsearch.arm_sql(ix, 'keyword', keyword_syntax))
        USING query_text, n, rrf_k::float8, semantic_weight, keyword_weight, match_count, query_embedding;
END $$;

-- EXPLAIN one search arm exactly as the search functions run it.
CREATE OR REPLACE FUNCTION semsearch.explain(
    index_name text, arm text, query_text text, query_embedding vector, candidates integer DEFAULT 10)
RETURNS SETOF text LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    ix semsearch.indexes := semsearch.lookup_index(index_name);
BEGIN
    PERFORM semsearch.check_search_args(candidates);
    PERFORM semsearch.cover_ef_search(candidates);
    IF arm = 'semantic' THEN
        PERFORM semsearch.check_query_vector(ix, query_embedding);
        RETURN QUERY EXECUTE 'EXPLAIN ' || semsearch.arm_sql(ix, arm) USING query_embedding, candidates;
    ELSE
        RETURN QUERY EXECUTE 'EXPLAIN ' || semsearch.arm_sql(ix, arm) USING query_text, candidates;
    END IF;
END $$;
