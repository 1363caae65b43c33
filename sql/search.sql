-- Search functions: the semantic arm (HNSW), the keyword arm (BM25 over the tables of keywords.sql) and
-- their fusion. The ORM's queries call these same functions, so ORM and raw-SQL users run the same SQL.
-- Filters apply inside each arm, before its top candidates are taken: filter_keys is the array of keys
-- a row must have (the ORM's filter= passes ARRAY(SELECT <key> FROM <table> WHERE <filter>)).

-- Search arguments in range, with errors that say so (not DivisionByZero or integer overflow).
CREATE OR REPLACE FUNCTION semsearch.check_search_args(match_count integer, candidates integer DEFAULT NULL,
    rrf_k integer DEFAULT 60, semantic_weight float8 DEFAULT 1, keyword_weight float8 DEFAULT 1,
    fusion text DEFAULT 'rrf', semantic_candidates integer DEFAULT NULL, keyword_candidates integer DEFAULT NULL)
RETURNS void LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF match_count IS NULL OR match_count NOT BETWEEN 1 AND {{max_results}} THEN
        RAISE EXCEPTION 'match_count must be from 1 to %, not %', {{max_results}}, match_count USING ERRCODE = 'data_exception';
    END IF;
    IF candidates NOT BETWEEN 1 AND {{max_results}} OR semantic_candidates NOT BETWEEN 1 AND {{max_results}}
       OR keyword_candidates NOT BETWEEN 1 AND {{max_results}} THEN
        RAISE EXCEPTION 'candidates must be from 1 to %, not %', {{max_results}},
            concat_ws(' / ', candidates, semantic_candidates, keyword_candidates) USING ERRCODE = 'data_exception';
    END IF;
    IF fusion IS NULL OR fusion NOT IN ('rrf', 'minmax', 'zscore') THEN
        RAISE EXCEPTION 'unknown fusion "%"', fusion
            USING ERRCODE = 'data_exception', HINT = 'Use rrf (reciprocal rank), minmax or zscore (normalised scores).';
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
CREATE OR REPLACE FUNCTION semsearch.check_keyword_syntax(syntax text)
RETURNS void LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF syntax IS NULL OR syntax NOT IN ('or', 'websearch', 'phrase', 'prefix') THEN
        RAISE EXCEPTION 'unknown keyword syntax "%"', syntax
            USING ERRCODE = 'data_exception', HINT = 'Use or, websearch, phrase or prefix.';
    END IF;
END $$;

-- (client_min_messages: a query of stop words only makes the tsquery functions send a NOTICE.)
CREATE OR REPLACE FUNCTION semsearch.keyword_query(config regconfig, query_text text, syntax text DEFAULT 'or')
RETURNS tsquery LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog, pg_temp SET client_min_messages = warning AS $$
DECLARE
    q tsquery;
    t text := left(coalesce(query_text, ''), {{max_query_chars}});
BEGIN
    PERFORM semsearch.check_keyword_syntax(syntax);
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
DECLARE
    v real[] := query_embedding::real[];  -- (pgvector itself refuses NaN and infinite values)
BEGIN
    IF v IS NULL THEN
        RAISE EXCEPTION 'semsearch index "%": the query embedding is NULL', ix.name
            USING ERRCODE = 'null_value_not_allowed',
                  HINT = format('Pass the query''s embedding by model %s (%s dimensions).', ix.model, ix.dimensions);
    END IF;
    IF cardinality(v) <> ix.dimensions THEN
        RAISE EXCEPTION 'semsearch index "%" holds % dimensions, the query embedding has %',
            ix.name, ix.dimensions, cardinality(v)
            USING ERRCODE = 'data_exception',
                  HINT = format('Embed the query with the index''s model, %s.', ix.model);
    END IF;
    IF ix.distance = 'cosine' AND NOT 0 <> ANY (v) THEN
        RAISE EXCEPTION 'semsearch index "%": the query embedding is all zeros, which has no cosine distance', ix.name
            USING ERRCODE = 'data_exception';
    END IF;
END $$;

-- The semantic arm's SQL. $1 = query embedding, $2 = documents wanted, $3 = filter keys, $4 = chunk
-- rows to read. ORDER BY distance LIMIT on the store table is the shape that uses HNSW; with a filter
-- the iterative scan (cover_ef_search) keeps going until enough rows pass it. exact: a short key list
-- is scored whole (no index can beat reading a few hundred rows). Then the best chunk per document;
-- `chunks` is the number of chunk rows read (fewer than $4: the scan had no more).
-- The arms' cuts keep their ties (FETCH FIRST ... WITH TIES) and tied rows share a rank (rank(), not
-- row_number()): rows that score the same, duplicates say, are all in or all out of an arm whatever
-- its depth, so fusion never keeps one and drops its twin. The search functions then cut to
-- match_count, ties in key order, shorter keys first (numeric order for integer keys; the ORM's
-- queries order them the same way, so a longer limit only adds rows after a shorter one's). Not the
-- HNSW scan's own cut: that graph search is approximate anyway, and asking it for ties costs a third more.
CREATE OR REPLACE FUNCTION semsearch.semantic_sql(ix semsearch.indexes, filtered boolean DEFAULT false,
    exact boolean DEFAULT false)
RETURNS text LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    op    text := semsearch.distance_operator(ix.distance);
    score text := CASE ix.distance WHEN 'cosine' THEN '1 - min(d)' ELSE '-min(d)' END;
BEGIN
    RETURN format('SELECT key, (%s)::float8 AS score, rank() OVER (ORDER BY min(d))::integer AS rank, '
                  'sum(count(*)) OVER () AS chunks '
                  'FROM (SELECT s.key, s.embedding %s $1 AS d FROM semsearch.%I s %s %s) c '
                  'GROUP BY key ORDER BY min(d) FETCH FIRST $2 ROWS WITH TIES',
                  score, op, ix.store_table,
                  CASE WHEN filtered THEN 'WHERE s.key = ANY($3)' ELSE '' END,
                  CASE WHEN exact THEN '' ELSE format('ORDER BY s.embedding %s $1 LIMIT $4', op) END);
END $$;

-- The keyword arm's SQL: BM25 with the index's k1 and b, over the current statistics.
-- $1 = query text, $2 = documents wanted, $3 = filter keys, $4 = postings read per query term.
-- syntax 'or' (natural language: any query term may match): plan 'top' reads each term's postings in
-- impact order, $4 for the rarest term and fewer for commoner ones (in proportion to their IDF: a
-- common term adds little to any score, and its contribution is added back exactly below), and ranks
-- the documents found by the sum of their impacts (IDF x the stored BM25 term score); the best $6
-- are then scored exactly from their own term lists and the current statistics,
-- so a document's score never misses a term it has. plan 'all' reads every posting of the query's
-- terms (exhaustive; with a filter, only the filter's rows); plan 'keys' scores the filter's rows from
-- their term lists (for a short list, {{exact_filter_keys}} keys at most, that is cheaper than reading
-- the terms' postings). The exact syntaxes (websearch, phrase, prefix) match rows through the GIN
-- index and score them the same way. scoring: also score the rows of $5 (hybrid search's semantic
-- candidates) and return them with the best $2, whatever their rank.
CREATE OR REPLACE FUNCTION semsearch.keyword_sql(ix semsearch.indexes, syntax text DEFAULT 'or',
    plan text DEFAULT 'top', filtered boolean DEFAULT false, scoring boolean DEFAULT false)
RETURNS text LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    docs   text := semsearch.keyword_table(ix, 'docs');
    common text := format(
        'q AS (SELECT DISTINCT lexeme AS term FROM unnest(tsvector_to_array(to_tsvector(%L::regconfig, left($1, {{max_query_chars}})))) lexeme), '
        'st AS (SELECT sum(docs)::float8 AS n, sum(length)::float8 / nullif(sum(docs), 0) AS avgdl FROM %s), ',
        ix.ts_config::text, semsearch.keyword_table(ix, 'stats'));
    idf    text := 'ln(1 + (st.n - d.df + 0.5) / (d.df + 0.5))';
    df     text := format('CROSS JOIN LATERAL (SELECT sum(t.df)::float8 AS df FROM %s t WHERE t.term = %%s) d WHERE d.df > 0',
                          semsearch.keyword_table(ix, 'terms'));
    -- Exact scores of the rows in `rows` (a CTE of keys) from their term lists.
    -- (unnest in the select list runs as a ProjectSet, several times faster than unnest(a, b) in FROM.)
    rescore text := format(
        'hits AS (SELECT u.key, w.idf * %s AS s FROM (SELECT dd.key, dd.length, unnest(dd.terms) AS term, '
        '         unnest(dd.tfs) AS tf FROM rows r JOIN %s dd ON dd.key = r.key) u JOIN w ON w.term = u.term CROSS JOIN st) ',
        semsearch.bm25_sql(ix, 'u.tf', 'u.length', 'st.avgdl'), docs);
    -- A row's score, to 9 decimals: the sum's last bits depend on the order its terms were added in, and
    -- rows with the same terms must tie exactly rather than by rounding noise.
    score  text := '(round(sum(s) * 1e9) / 1e9)::float8';
    body   text;
BEGIN
    IF syntax = 'or' THEN
        body := format('w AS (SELECT q.term, %s AS idf FROM q CROSS JOIN st %s), ', idf, format(df, 'q.term'));
        IF plan = 'top' THEN
            body := body || format(
                'found AS (SELECT p.key, w.idf * p.impact AS s FROM w CROSS JOIN LATERAL '
                '          (SELECT p.key, p.impact FROM %s p WHERE p.term = w.term ORDER BY p.impact DESC '
                '           FETCH FIRST (greatest($2, ($4 * w.idf / (SELECT max(idf) FROM w))::integer)) ROWS WITH TIES) p), '
                'rows AS (SELECT key FROM (SELECT key FROM found GROUP BY key ORDER BY ' || score || ' DESC FETCH FIRST $6 ROWS WITH TIES) t %s), ',
                semsearch.keyword_table(ix, 'postings'),
                CASE WHEN scoring THEN 'UNION SELECT unnest($5)' ELSE '' END) || rescore;
        ELSIF plan = 'keys' THEN  -- a short filter list: its rows, scored from their term lists
            body := body || 'rows AS (SELECT DISTINCT unnest($3) AS key), ' || rescore;
        ELSE
            body := body || format(
                'hits AS (SELECT p.key, w.idf * %s AS s FROM w CROSS JOIN st CROSS JOIN LATERAL '
                '         (SELECT p.key, p.tf, p.dl FROM %s p WHERE p.term = w.term %s) p) ',
                semsearch.bm25_sql(ix, 'p.tf', 'p.dl', 'st.avgdl'), semsearch.keyword_table(ix, 'postings'),
                CASE WHEN filtered THEN 'AND p.key = ANY($3)' ELSE '' END);
        END IF;
    ELSE
        body := format(
            'rows AS MATERIALIZED (SELECT d.key FROM %s d WHERE d.tsv @@ semsearch.keyword_query(%L::regconfig, $1, %L) %s), '
            'w AS (SELECT u.term, %s AS idf FROM (SELECT DISTINCT u.term FROM rows r JOIN %s dd ON dd.key = r.key '
            '      CROSS JOIN LATERAL unnest(dd.terms) u(term) WHERE %s) u CROSS JOIN st %s), ',
            docs, ix.ts_config::text, syntax, CASE WHEN filtered THEN 'AND d.key = ANY($3)' ELSE '' END,
            idf, docs,
            CASE WHEN syntax = 'prefix' THEN 'EXISTS (SELECT 1 FROM q WHERE starts_with(u.term, q.term))'
                 ELSE 'u.term IN (SELECT term FROM q)' END,
            format(df, 'u.term')) || rescore;
    END IF;
    IF scoring THEN  -- the best $2, and the rows of $5 that match at all, each with its rank
        RETURN 'WITH ' || common || body ||
               'SELECT * FROM (SELECT key, ' || score || ' AS score, rank() OVER (ORDER BY ' || score || ' DESC)::integer '
               'AS rank FROM hits GROUP BY key) r WHERE r.rank <= $2 OR r.key = ANY($5)';
    END IF;
    RETURN 'WITH ' || common || body ||
           'SELECT key, ' || score || ' AS score, rank() OVER (ORDER BY ' || score || ' DESC)::integer AS rank '
           'FROM hits GROUP BY key ORDER BY ' || score || ' DESC FETCH FIRST $2 ROWS WITH TIES';
END $$;

-- Chunk rows the semantic arm reads first to find `candidates` distinct documents: as many per
-- document as the store holds on average (the planner's row counts of the store and of the keyword
-- table's one row per document; 3 before the first ANALYZE), and a fifth more. semantic_arm reads
-- more when that was not enough.
CREATE OR REPLACE FUNCTION semsearch.chunk_rows(ix semsearch.indexes, candidates integer)
RETURNS integer LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT least(ceil(candidates * 1.2 * CASE WHEN s.reltuples > 0 AND d.reltuples > 0
                                             THEN least(greatest(s.reltuples / d.reltuples, 1), 20) ELSE 3 END) + 2,
                 2147483647)::integer
      FROM (SELECT max(reltuples) AS reltuples FROM pg_class WHERE oid = to_regclass(format('semsearch.%I', ix.store_table))) s,
           (SELECT max(reltuples) AS reltuples FROM pg_class WHERE oid = to_regclass(semsearch.keyword_table(ix, 'docs'))) d
$$;

-- The HNSW candidate list a search of this store needs at least: {{min_ef_search}} per {{ef_search_rows}}
-- chunk rows (the planner's count), up to pgvector's 1000. A fixed list finds a smaller share of the
-- true nearest rows as the graph grows: recall@10 against exact search was 0.988 at 100k rows with
-- {{min_ef_search}}, 0.654 at 1.9 million, and 0.966 there with 1000 (bench/scale.py).
CREATE OR REPLACE FUNCTION semsearch.ef_search_floor(ix semsearch.indexes)
RETURNS integer LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT least(greatest(ceil({{min_ef_search}} * coalesce(max(reltuples), 0) / {{ef_search_rows}}), {{min_ef_search}}),
                 1000)::integer
      FROM pg_class WHERE oid = to_regclass(format('semsearch.%I', ix.store_table))
$$;

-- HNSW returns at most ef_search rows: raise it (for this transaction) to cover the chunk rows read,
-- and to at least `floor` (semsearch.ef_search_floor for the searches, {{min_ef_search}} for the uses'
-- many probes). Iterative scans (pgvector 0.8) keep scanning when rows are filtered out (filter keys,
-- or row-level security on the store hiding other tenants' rows), so a filtered search still finds
-- its full count. A session's own higher hnsw.ef_search is kept.
CREATE OR REPLACE FUNCTION semsearch.cover_ef_search(chunk_rows integer, floor integer DEFAULT {{min_ef_search}})
RETURNS void LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    ef_search integer := least(greatest(chunk_rows, floor), 1000);
BEGIN
    -- (A setting pgvector has not defined yet in this session reads as NULL, or '' once set and reset.)
    IF coalesce(nullif(current_setting('hnsw.iterative_scan', true), ''), 'off') = 'off' THEN
        PERFORM set_config('hnsw.iterative_scan', 'relaxed_order', true);
    END IF;
    -- pgvector stops an iterative scan after 20,000 tuples by default: a small tenant among many
    -- others would get too few rows. The scan still stops as soon as it has enough.
    IF coalesce(nullif(current_setting('hnsw.max_scan_tuples', true), ''), '20000')::integer < {{max_scan_tuples}} THEN
        PERFORM set_config('hnsw.max_scan_tuples', '{{max_scan_tuples}}', true);
    END IF;
    -- It also stops at work_mem x hnsw.scan_mem_multiplier of memory (1 by default).
    IF coalesce(nullif(current_setting('hnsw.scan_mem_multiplier', true), ''), '1')::float8 < {{scan_mem_multiplier}} THEN
        PERFORM set_config('hnsw.scan_mem_multiplier', '{{scan_mem_multiplier}}', true);
    END IF;
    IF coalesce(nullif(current_setting('hnsw.ef_search', true), ''), '40')::integer < ef_search THEN
        PERFORM set_config('hnsw.ef_search', ef_search::text, true);
    END IF;
END $$;

-- One arm's ranked keys (the search functions and hybrid fusion share them).
CREATE OR REPLACE FUNCTION semsearch.semantic_arm(ix semsearch.indexes, query_embedding vector, n integer,
    filter_keys text[] DEFAULT NULL)
RETURNS TABLE (key text, score float8, rank integer) ROWS 100 LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    exact   boolean := coalesce(cardinality(filter_keys) <= {{exact_filter_keys}}, false);
    query   text := 'SELECT array_agg(r.key ORDER BY r.rank, r.key), array_agg(r.score ORDER BY r.rank, r.key), '
                    'array_agg(r.rank ORDER BY r.rank, r.key), max(r.chunks) FROM ('
                    || semsearch.semantic_sql(ix, filter_keys IS NOT NULL, exact) || ') r';
    reading integer := semsearch.chunk_rows(ix, n);
    floor   integer := semsearch.ef_search_floor(ix);
    keys    text[];
    scores  float8[];
    ranks   integer[];
    chunks  bigint;
BEGIN
    PERFORM semsearch.check_query_vector(ix, query_embedding);
    LOOP  -- until n documents, or every chunk row the scan can give
        PERFORM semsearch.cover_ef_search(reading, floor);
        EXECUTE query INTO keys, scores, ranks, chunks USING query_embedding, n, filter_keys, reading;
        EXIT WHEN exact OR coalesce(cardinality(keys), 0) >= n OR coalesce(chunks, 0) < reading OR reading > 2147483647 / 3;
        reading := reading * 3;
    END LOOP;
    RETURN QUERY SELECT * FROM unnest(keys, scores, ranks);
END $$;

-- Exact scores of given rows (hybrid search's keyword candidates): the query embedding is checked
-- by the caller, and no index is needed for a key list.
CREATE OR REPLACE FUNCTION semsearch.semantic_scores(ix semsearch.indexes, query_embedding vector, keys text[])
RETURNS TABLE (key text, score float8, rank integer) ROWS 100 LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN QUERY EXECUTE 'SELECT r.key, r.score, r.rank FROM (' || semsearch.semantic_sql(ix, true, true) || ') r'
        USING query_embedding, cardinality(keys), keys, NULL::integer;
END $$;

CREATE OR REPLACE FUNCTION semsearch.keyword_plan(syntax text, filter_keys text[])
RETURNS text LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT CASE WHEN syntax <> 'or' THEN 'all' WHEN filter_keys IS NULL THEN 'top'
                WHEN cardinality(filter_keys) <= {{exact_filter_keys}} THEN 'keys' ELSE 'all' END
$$;

-- Under row-level security the postings' policy filters inside each term's scan, before its LIMIT: a
-- tenant's scan reads past other tenants' postings until it has `depth` of its own.
-- depth: postings read for the rarest query term (plan 'top'); rescored: rows scored exactly. The
-- defaults keep keyword_search within 0.005 nDCG@10 of reading every posting at 100k rows (bench/
-- search_latency.py); hybrid search, which also scores the semantic arm's candidates exactly, reads less.
CREATE OR REPLACE FUNCTION semsearch.keyword_arm(ix semsearch.indexes, query_text text, n integer,
    syntax text DEFAULT 'or', filter_keys text[] DEFAULT NULL, score_keys text[] DEFAULT NULL,
    depth integer DEFAULT NULL, rescored integer DEFAULT NULL)
RETURNS TABLE (key text, score float8, rank integer) ROWS 100 LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM semsearch.check_keyword_syntax(syntax);
    RETURN QUERY EXECUTE semsearch.keyword_sql(ix, syntax, semsearch.keyword_plan(syntax, filter_keys), filter_keys IS NOT NULL,
                                               score_keys IS NOT NULL)
        USING query_text, n, filter_keys, greatest(n, coalesce(depth, {{keyword_term_depth}})), score_keys,
              CASE WHEN rescored IS NULL THEN greatest(2 * n, 100) ELSE greatest(n, rescored) END;
END $$;

-- query_model: the model that made query_embedding (NULL: the index's). Just after the switch to a new
-- version, a vector of the old model is still served from the old store (semsearch.vector_version).
CREATE OR REPLACE FUNCTION semsearch.semantic_search(
    index_name text, query_embedding vector, match_count integer DEFAULT 10, filter_keys text[] DEFAULT NULL,
    query_model text DEFAULT NULL)
RETURNS TABLE (key text, score float8, rank integer) ROWS 100 LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM semsearch.check_search_args(match_count);
    RETURN QUERY SELECT a.* FROM semsearch.semantic_arm(semsearch.vector_version(semsearch.lookup_index(index_name),
                                                                                  query_embedding, query_model),
                                                        query_embedding, match_count, filter_keys) a
                  ORDER BY a.score DESC, length(a.key), a.key LIMIT match_count;
END $$;

CREATE OR REPLACE FUNCTION semsearch.keyword_search(
    index_name text, query_text text, match_count integer DEFAULT 10, syntax text DEFAULT 'or',
    filter_keys text[] DEFAULT NULL)
RETURNS TABLE (key text, score float8, rank integer) ROWS 100 LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM semsearch.check_search_args(match_count);
    RETURN QUERY SELECT a.* FROM semsearch.keyword_arm(semsearch.lookup_index(index_name), query_text, match_count, syntax, filter_keys) a
                  ORDER BY a.score DESC, length(a.key), a.key LIMIT match_count;
END $$;

-- Hybrid search: both arms (semantic_candidates and keyword_candidates deep, or both `candidates`), fused.
-- For the score fusions each arm also scores the other arm's candidates (exact distances for the
-- keyword arm's, BM25 from their term lists for the semantic arm's), so every candidate is fused on
-- both of its scores and shallow arms lose nothing:
--   minmax  score = sum over arms of weight * (score - min) / (max - min), over all candidates
--   zscore  score = sum over arms of weight * (score - mean) / standard deviation, over all candidates
--   rrf     score = sum over arms of weight / (rrf_k + rank), each arm's own candidates only
-- A candidate without a matching term has keyword score 0; one not embedded yet has no semantic score
-- and gets that arm's lowest value (0 for rrf and minmax). Each row also carries each arm's rank among
-- that arm's own candidates (NULL where it was not one) and its score, to tune weights with.
-- query_model: as for semantic_search.
CREATE OR REPLACE FUNCTION semsearch.hybrid_search(
    index_name text, query_text text, query_embedding vector, match_count integer DEFAULT 10,
    candidates integer DEFAULT NULL, rrf_k integer DEFAULT {{rrf_k}},
    semantic_weight float8 DEFAULT {{semantic_weight}}, keyword_weight float8 DEFAULT {{keyword_weight}},
    keyword_syntax text DEFAULT 'or', filter_keys text[] DEFAULT NULL, fusion text DEFAULT {{fusion}},
    semantic_candidates integer DEFAULT NULL, keyword_candidates integer DEFAULT NULL, query_model text DEFAULT NULL)
RETURNS TABLE (key text, score float8, semantic_rank integer, keyword_rank integer,
               semantic_score float8, keyword_score float8) ROWS 100 LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
DECLARE
    ix semsearch.indexes := semsearch.vector_version(semsearch.lookup_index(index_name), query_embedding, query_model);
    ns integer := greatest(coalesce(semantic_candidates, candidates, {{semantic_candidates}}), match_count);
    nk integer := greatest(coalesce(keyword_candidates, candidates, {{keyword_candidates}}), match_count);
    cross_score boolean := fusion <> 'rrf';
BEGIN
    PERFORM semsearch.check_search_args(match_count, candidates, rrf_k, semantic_weight, keyword_weight, fusion,
                                        semantic_candidates, keyword_candidates);
    RETURN QUERY
    WITH s AS MATERIALIZED (SELECT a.key, a.score, a.rank FROM semsearch.semantic_arm(ix, query_embedding, ns, filter_keys) a),
         k AS MATERIALIZED (SELECT a.key, a.score, CASE WHEN a.rank <= nk THEN a.rank END AS rank
                              FROM semsearch.keyword_arm(ix, query_text, nk, keyword_syntax, filter_keys,
                                                         CASE WHEN cross_score THEN ARRAY(SELECT s.key FROM s) END,
                                                         {{hybrid_keyword_term_depth}}, 2 * nk) a),
         -- exact distances of the keyword arm's candidates the semantic arm did not find
         missing AS (SELECT ARRAY(SELECT k.key FROM k WHERE k.rank IS NOT NULL AND k.key NOT IN (SELECT s.key FROM s)) AS keys),
         s2 AS MATERIALIZED (SELECT a.key, a.score FROM missing m,
                                    LATERAL semsearch.semantic_scores(ix, query_embedding, m.keys) a
                              WHERE cross_score AND cardinality(m.keys) > 0),
         c AS (SELECT u.key, max(u.srank) AS srank, max(u.sscore) AS sscore, max(u.krank) AS krank,
                      CASE WHEN cross_score THEN coalesce(max(u.kscore), 0) ELSE max(u.kscore) END AS kscore
                 FROM (SELECT s.key, s.rank AS srank, s.score AS sscore, NULL::integer AS krank, NULL::float8 AS kscore FROM s
                       UNION ALL SELECT s2.key, NULL, s2.score, NULL, NULL FROM s2
                       UNION ALL SELECT k.key, NULL, NULL, k.rank, k.score FROM k
                        WHERE k.rank IS NOT NULL OR k.key IN (SELECT s.key FROM s)) u
                GROUP BY u.key),
         -- each arm's spread over the candidates
         a AS (SELECT c.*, min(c.sscore) OVER () AS smin, max(c.sscore) OVER () AS smax, avg(c.sscore) OVER () AS savg,
                      stddev_pop(c.sscore) OVER () AS ssd, min(c.kscore) OVER () AS kmin, max(c.kscore) OVER () AS kmax,
                      avg(c.kscore) OVER () AS kavg, stddev_pop(c.kscore) OVER () AS ksd
                 FROM c),
         -- each arm's value (NULL where it has no rank for rrf, or no score), written out for both arms. A
         -- tied arm (scores equal up to {{tied_scores}} of their size) ranks nobody: min-max gives every row
         -- 1 (a keyword arm tied at 0, no query word anywhere, gives 0), z-score 0.
         f AS (SELECT a.key, a.srank, a.sscore, a.krank, a.kscore,
                      CASE WHEN fusion = 'rrf' THEN 1.0 / (rrf_k + a.srank) WHEN a.sscore IS NULL THEN NULL
                           WHEN a.smax - a.smin <= {{tied_scores}} * greatest(abs(a.smax), abs(a.smin)) THEN
                                CASE WHEN fusion = 'minmax' THEN 1 ELSE 0 END
                           WHEN fusion = 'minmax' THEN (a.sscore - a.smin) / (a.smax - a.smin)
                           ELSE (a.sscore - a.savg) / a.ssd
                      END AS sf,
                      CASE WHEN fusion = 'rrf' THEN 1.0 / (rrf_k + a.krank) WHEN a.kscore IS NULL THEN NULL
                           WHEN a.kmax - a.kmin <= {{tied_scores}} * greatest(abs(a.kmax), abs(a.kmin)) THEN
                                CASE WHEN fusion = 'minmax' AND a.kmax > 0 THEN 1 ELSE 0 END
                           WHEN fusion = 'minmax' THEN (a.kscore - a.kmin) / (a.kmax - a.kmin)
                           ELSE (a.kscore - a.kavg) / a.ksd
                      END AS kf
                 FROM a)
    SELECT f.key,
           (semantic_weight * coalesce(f.sf, CASE WHEN fusion = 'zscore' THEN (SELECT min(sf) FROM f) ELSE 0 END)
            + keyword_weight * coalesce(f.kf, CASE WHEN fusion = 'zscore' THEN (SELECT min(kf) FROM f) ELSE 0 END))::float8,
           f.srank, f.krank, f.sscore, f.kscore
      FROM f
     ORDER BY 2 DESC, length(f.key), f.key LIMIT match_count;
END $$;

-- EXPLAIN one search arm exactly as the search functions run it (with filter_keys: as filtered).
CREATE OR REPLACE FUNCTION semsearch.explain(
    index_name text, arm text, query_text text, query_embedding vector, candidates integer DEFAULT 10,
    syntax text DEFAULT 'or', filter_keys text[] DEFAULT NULL)
RETURNS SETOF text LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    ix semsearch.indexes := semsearch.lookup_index(index_name);
    chunk_rows integer := semsearch.chunk_rows(ix, candidates);
BEGIN
    PERFORM semsearch.check_search_args(candidates);
    IF arm = 'semantic' THEN
        PERFORM semsearch.check_query_vector(ix, query_embedding);
        PERFORM semsearch.cover_ef_search(chunk_rows, semsearch.ef_search_floor(ix));
        RETURN QUERY EXECUTE 'EXPLAIN ' || semsearch.semantic_sql(ix, filter_keys IS NOT NULL,
                                                                  cardinality(filter_keys) <= {{exact_filter_keys}})
            USING query_embedding, candidates, filter_keys, chunk_rows;
    ELSIF arm = 'keyword' THEN
        PERFORM semsearch.check_keyword_syntax(syntax);
        RETURN QUERY EXECUTE 'EXPLAIN ' || semsearch.keyword_sql(ix, syntax, semsearch.keyword_plan(syntax, filter_keys),
                                                                 filter_keys IS NOT NULL)
            USING query_text, candidates, filter_keys, greatest(candidates, {{keyword_term_depth}}), NULL::text[],
                  greatest(2 * candidates, 100);
    ELSE
        RAISE EXCEPTION 'unknown search arm "%"', arm USING HINT = 'Use semantic or keyword.';
    END IF;
END $$;
