-- Uses of an index beyond a search box: passages for RAG (ranked chunk by chunk, with highlights),
-- rows like a row (similar, recommend), near-duplicates and outliers. Like the search functions they
-- run with the caller's rights: the store's row-level security shows each role only the rows whose
-- source rows it may read, so a tenant's neighbours, duplicates and outliers are that tenant's rows.
-- Each walks the store's HNSW index (one nearest-neighbour scan per probed row), never all pairs.
-- filter_keys: as for the search functions, the keys a row must have.

-- A row's vector: the mean of its chunks' embeddings (one chunk: that chunk's), as float4 whatever the
-- store's type, so that rows of any length compare. $1 = keys (NULL: every row the caller can read).
CREATE OR REPLACE FUNCTION semsearch.document_vectors_sql(ix semsearch.indexes, keyed boolean)
RETURNS text LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT format('SELECT s.key, %1$s.avg(s.embedding::%1$s.vector) AS embedding FROM semsearch.%2$I s %3$s GROUP BY s.key',
                  semsearch.vector_schema(), ix.store_table, CASE WHEN keyed THEN 'WHERE s.key = ANY($1)' ELSE '' END)
$$;

CREATE OR REPLACE FUNCTION semsearch.document_vectors(index_name text, keys text[] DEFAULT NULL)
RETURNS TABLE (key text, embedding vector) LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN QUERY EXECUTE semsearch.document_vectors_sql(semsearch.lookup_index(index_name), keys IS NOT NULL) USING keys;
END $$;

-- The vectors of given rows, with an error that says which row is missing and why.
CREATE OR REPLACE FUNCTION semsearch.row_vectors(ix semsearch.indexes, keys text[])
RETURNS TABLE (key text, embedding vector) LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    missing text;
    exists_ boolean;
BEGIN
    RETURN QUERY EXECUTE semsearch.document_vectors_sql(ix, true) USING keys;
    EXECUTE format('SELECT k FROM unnest($1) k WHERE k IS NULL OR NOT EXISTS (SELECT 1 FROM semsearch.%I s WHERE s.key = k) LIMIT 1',
                   ix.store_table) INTO missing USING keys;
    IF missing IS NULL AND NOT EXISTS (SELECT 1 FROM unnest(keys) k WHERE k IS NULL) THEN
        RETURN;
    END IF;
    IF missing IS NOT NULL THEN
        BEGIN
            EXECUTE format('SELECT semsearch.%I($1)', 'visible_' || ix.name) INTO exists_ USING missing;
        EXCEPTION WHEN data_exception THEN  -- not even of the key's type ('abc' for an integer key)
            exists_ := false;
        END;
    END IF;
    IF coalesce(exists_, false) THEN
        RAISE EXCEPTION 'semsearch index "%": row % has no embedding yet', ix.name, missing
            USING ERRCODE = 'no_data_found',
                  HINT = 'A worker embeds it (semsearch worker); semsearch status shows the queue and failures.';
    END IF;
    RAISE EXCEPTION 'semsearch index "%": no row with key %', ix.name, coalesce(missing, 'NULL')
        USING ERRCODE = 'no_data_found',
              HINT = format('Give the primary key of a row of %s that you can read.', ix.source::text);
END $$;

-- Maximal marginal relevance: the order in which to take candidates so that each next one is relevant
-- (relevance, scaled to 0..1 here) and unlike those taken (similarity: the candidates' pairwise
-- similarities, row-major): argmax lambda * relevance - (1 - lambda) * max similarity to those taken.
-- Returns the first n positions (1-based) in that order.
CREATE OR REPLACE FUNCTION semsearch.mmr_order(relevance float8[], similarity float8[], lambda float8, n integer)
RETURNS integer[] LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    m       integer := coalesce(cardinality(relevance), 0);
    lo      float8 := (SELECT min(r) FROM unnest(relevance) r);
    hi      float8 := (SELECT max(r) FROM unnest(relevance) r);
    rel     float8[];
    closest float8[] := array_fill(NULL::float8, ARRAY[greatest(m, 1)]);
    taken   boolean[] := array_fill(false, ARRAY[greatest(m, 1)]);
    chosen  integer[] := '{}';
    best    integer;
    value   float8;
    best_value float8;
BEGIN
    IF lambda IS NULL OR lambda < 0 OR lambda > 1 OR lambda = 'NaN' THEN
        RAISE EXCEPTION 'mmr must be from 0 to 1 (1: relevance only), not %', lambda USING ERRCODE = 'data_exception';
    END IF;
    SELECT array_agg(CASE WHEN hi > lo THEN (r - lo) / (hi - lo) ELSE 1 END ORDER BY i) INTO rel
      FROM unnest(relevance) WITH ORDINALITY u(r, i);
    WHILE cardinality(chosen) < least(n, m) LOOP
        best := NULL;
        FOR i IN 1..m LOOP
            CONTINUE WHEN taken[i];
            value := lambda * rel[i] - (1 - lambda) * coalesce(closest[i], 0);
            IF best IS NULL OR value > best_value THEN
                best := i;
                best_value := value;
            END IF;
        END LOOP;
        chosen := chosen || best;
        taken[best] := true;
        FOR i IN 1..m LOOP
            closest[i] := greatest(closest[i], similarity[(best - 1) * m + i]);
        END LOOP;
    END LOOP;
    RETURN chosen;
END $$;

-- A search's results (a JSON array of [key, score] pairs, best first: the ORM passes its search
-- function's rows) re-ordered by maximal marginal relevance over the rows' vectors, the first n.
CREATE OR REPLACE FUNCTION semsearch.diversify(index_name text, results jsonb, lambda float8, n integer)
RETURNS TABLE (key text, score float8, rank integer) LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    ix     semsearch.indexes := semsearch.lookup_index(index_name);
    keys   text[];
    scores float8[];
    sims   float8[];
    picked integer[];
BEGIN
    PERFORM semsearch.check_search_args(n);
    SELECT array_agg(r ->> 0 ORDER BY i), array_agg((r ->> 1)::float8 ORDER BY i) INTO keys, scores
      FROM jsonb_array_elements(coalesce(results, '[]')) WITH ORDINALITY e(r, i);
    IF keys IS NULL THEN
        PERFORM semsearch.mmr_order(NULL, NULL, lambda, n);  -- (checks lambda)
        RETURN;
    END IF;
    EXECUTE format('WITH v AS (%s) SELECT array_agg(1 - (a.embedding OPERATOR(%2$s.<=>) b.embedding) ORDER BY i, j) '
                   'FROM unnest($1) WITH ORDINALITY x(k, i) CROSS JOIN unnest($1) WITH ORDINALITY y(k, j) '
                   'LEFT JOIN v a ON a.key = x.k LEFT JOIN v b ON b.key = y.k',
                   semsearch.document_vectors_sql(ix, true), semsearch.vector_schema())
        INTO sims USING keys;
    picked := semsearch.mmr_order(scores, sims, lambda, n);
    RETURN QUERY SELECT keys[p], scores[p], o::integer FROM unnest(picked) WITH ORDINALITY u(p, o);
END $$;

-- Passages for a question: chunks ranked one by one. The semantic arm reads the chunks nearest the
-- query embedding (HNSW); the keyword arm takes every chunk of its best documents; each candidate chunk
-- is then scored by both arms (its own distance; BM25 of the query's words in that chunk's text, with
-- the index's term statistics, k1 and b, and the candidates' mean length) and fused by min-max, as
-- hybrid search fuses rows. mode: 'hybrid', 'semantic' (distance only) or 'keyword' (chunks with a
-- query word, BM25 only; no embedding needed). per_document caps the passages of one row; mmr (0..1)
-- re-orders by maximal marginal relevance over the chunks' vectors (1: relevance only).
CREATE OR REPLACE FUNCTION semsearch.passages(index_name text, query_text text, query_embedding vector,
    n integer DEFAULT 10, mode text DEFAULT 'hybrid', per_document integer DEFAULT NULL,
    filter_keys text[] DEFAULT NULL, mmr float8 DEFAULT NULL, candidates integer DEFAULT NULL,
    query_model text DEFAULT NULL)
RETURNS TABLE (key text, chunk_index integer, passage text, score float8) ROWS 10 LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
DECLARE
    ix      semsearch.indexes := semsearch.lookup_index(index_name);
    depth   integer;
    op      text;
    keys    text[] := '{}';
    c_keys  text[];
    c_chunk integer[];
    c_text  text[];
    c_score float8[];
    sims    float8[];
    picked  integer[];
BEGIN
    PERFORM semsearch.check_search_args(n, candidates);
    IF mode IS NULL OR mode NOT IN ('hybrid', 'semantic', 'keyword') THEN
        RAISE EXCEPTION 'unknown passage mode "%"', mode USING ERRCODE = 'data_exception', HINT = 'Use hybrid, semantic or keyword.';
    END IF;
    IF per_document < 1 THEN
        RAISE EXCEPTION 'per_document must be 1 or more (or NULL: no cap), not %', per_document USING ERRCODE = 'data_exception';
    END IF;
    IF mode <> 'keyword' THEN
        ix := semsearch.vector_version(ix, query_embedding, query_model);
        PERFORM semsearch.check_query_vector(ix, query_embedding);
    END IF;
    op := semsearch.distance_operator(ix.distance);
    -- chunks per arm: enough for per_document caps and for MMR to choose among
    depth := greatest(coalesce(candidates, 0), 3 * n, 30);
    IF mode <> 'semantic' THEN
        SELECT coalesce(array_agg(a.key), '{}') INTO keys
          FROM semsearch.keyword_arm(ix, query_text, greatest(n, 30), 'or', filter_keys) a;
    END IF;
    IF mode <> 'keyword' THEN
        PERFORM semsearch.cover_ef_search(depth);
    END IF;
    EXECUTE format($q$
        WITH near AS MATERIALIZED (%1$s),
             cand AS (SELECT s.key, s.chunk, s.content, %2$s AS sscore
                        FROM semsearch.%3$I s WHERE (s.key, s.chunk) IN (SELECT key, chunk FROM near) OR s.key = ANY($5)),
             q AS (SELECT DISTINCT lexeme AS term FROM unnest(tsvector_to_array(to_tsvector(%4$L::regconfig, left(coalesce($1, ''), {{max_query_chars}})))) lexeme),
             st AS (SELECT sum(docs)::float8 AS n FROM %5$s),
             w AS (SELECT q.term, ln(1 + (st.n - d.df + 0.5) / (d.df + 0.5)) AS idf FROM q CROSS JOIN st
                     CROSS JOIN LATERAL (SELECT sum(t.df)::float8 AS df FROM %6$s t WHERE t.term = q.term) d WHERE d.df > 0),
             lex AS (SELECT c.key, c.chunk, u.lexeme, cardinality(u.positions)::float8 AS tf
                       FROM cand c CROSS JOIN LATERAL unnest(to_tsvector(%4$L::regconfig, c.content)) u),
             len AS (SELECT key, chunk, sum(tf) AS dl FROM lex GROUP BY key, chunk),
             avgl AS (SELECT greatest(avg(dl), 1) AS avgdl FROM len),
             kw AS (SELECT l.key, l.chunk, sum(w.idf * %7$s) AS kscore
                      FROM lex l JOIN w ON w.term = l.lexeme JOIN len USING (key, chunk) CROSS JOIN avgl GROUP BY l.key, l.chunk),
             f AS (SELECT c.key, c.chunk, c.content, c.sscore, coalesce(kw.kscore, 0) AS kscore
                     FROM cand c LEFT JOIN kw USING (key, chunk)),
             g AS (SELECT f.*, min(sscore) OVER () AS smin, max(sscore) OVER () AS smax,
                          max(kscore) OVER () AS kmax, min(kscore) OVER () AS kmin FROM f),
             scored AS (SELECT g.key, g.chunk, g.content,
                               CASE $6 WHEN 'semantic' THEN g.sscore WHEN 'keyword' THEN g.kscore
                                    ELSE CASE WHEN g.smax > g.smin THEN (g.sscore - g.smin) / (g.smax - g.smin) ELSE 1 END
                                         + CASE WHEN g.kmax > g.kmin THEN (g.kscore - g.kmin) / (g.kmax - g.kmin)
                                                WHEN g.kmax > 0 THEN 1 ELSE 0 END END AS score
                          FROM g WHERE $6 <> 'keyword' OR g.kscore > 0),
             capped AS (SELECT s.*, row_number() OVER (PARTITION BY s.key ORDER BY s.score DESC, s.chunk) AS nth FROM scored s)
        SELECT array_agg(key ORDER BY score DESC, length(key), key, chunk), array_agg(chunk ORDER BY score DESC, length(key), key, chunk),
               array_agg(content ORDER BY score DESC, length(key), key, chunk), array_agg(score::float8 ORDER BY score DESC, length(key), key, chunk)
          FROM (SELECT * FROM capped WHERE nth <= coalesce($7, 2147483647)
                 ORDER BY score DESC, length(key), key, chunk LIMIT CASE WHEN $8 IS NULL THEN $3 ELSE greatest(3 * $3, 30) END) t
        $q$,
        CASE WHEN mode = 'keyword' THEN 'SELECT NULL::text AS key, NULL::integer AS chunk WHERE false'
             ELSE format('SELECT s.key, s.chunk FROM semsearch.%I s %s ORDER BY s.embedding %s $2 LIMIT $4', ix.store_table,
                         CASE WHEN filter_keys IS NOT NULL THEN 'WHERE s.key = ANY($9)' ELSE '' END, op) END,
        CASE WHEN mode = 'keyword' THEN 'NULL::float8'
             WHEN ix.distance = 'cosine' THEN format('1 - (s.embedding %s $2)', op) ELSE format('-(s.embedding %s $2)', op) END,
        ix.store_table, ix.ts_config::text, semsearch.keyword_table(ix, 'stats'), semsearch.keyword_table(ix, 'terms'),
        semsearch.bm25_sql(ix, 'l.tf', 'len.dl', 'avgl.avgdl'))
        INTO c_keys, c_chunk, c_text, c_score
        USING query_text, query_embedding, n, depth, keys, mode, per_document, mmr, filter_keys;
    IF c_keys IS NULL THEN
        RETURN;
    END IF;
    IF mmr IS NULL THEN
        RETURN QUERY SELECT * FROM unnest(c_keys, c_chunk, c_text, c_score);
        RETURN;
    END IF;
    EXECUTE format('WITH v AS (SELECT i, s.embedding::%1$s.vector AS e FROM unnest($1, $2) WITH ORDINALITY u(k, c, i) '
                   '           JOIN semsearch.%2$I s ON s.key = u.k AND s.chunk = u.c) '
                   'SELECT array_agg(1 - (a.e OPERATOR(%1$s.<=>) b.e) ORDER BY a.i, b.i) FROM v a CROSS JOIN v b',
                   semsearch.vector_schema(), ix.store_table)
        INTO sims USING c_keys, c_chunk;
    picked := semsearch.mmr_order(c_score, sims, mmr, n);
    RETURN QUERY SELECT c_keys[p], c_chunk[p], c_text[p], c_score[p] FROM unnest(picked) p;
END $$;

-- The passage with the query's words marked (ts_headline over the whole passage, with the index's text
-- search configuration: stems match, "baking" is marked for "bake"). The tags may not contain a double
-- quote. The passage is returned as it is otherwise: escape it for HTML before the tags are trusted.
CREATE OR REPLACE FUNCTION semsearch.highlight(index_name text, query_text text, passage text,
    start_tag text DEFAULT '<mark>', stop_tag text DEFAULT '</mark>')
RETURNS text LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp SET client_min_messages = warning AS $$
DECLARE
    ix semsearch.indexes := semsearch.lookup_index(index_name);
    q  tsquery := semsearch.keyword_query(ix.ts_config, query_text, 'or');
BEGIN
    IF start_tag IS NULL OR stop_tag IS NULL OR position('"' IN start_tag || stop_tag) > 0 THEN
        RAISE EXCEPTION 'highlight tags must be text without double quotes, not % and %', start_tag, stop_tag
            USING ERRCODE = 'data_exception';
    END IF;
    IF q IS NULL OR passage IS NULL THEN
        RETURN passage;
    END IF;
    RETURN ts_headline(ix.ts_config, passage, q,
                       format('HighlightAll=true, StartSel="%s", StopSel="%s"', start_tag, stop_tag));
END $$;

-- Rows nearest to a row, by its stored vectors (the mean of its chunks): no model call. The row itself
-- is never in its results.
CREATE OR REPLACE FUNCTION semsearch.similar(index_name text, row_key text, n integer DEFAULT 10,
    filter_keys text[] DEFAULT NULL)
RETURNS TABLE (key text, score float8) ROWS 10 LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
DECLARE
    ix semsearch.indexes := semsearch.lookup_index(index_name);
BEGIN
    PERFORM semsearch.check_search_args(n);
    RETURN QUERY SELECT a.key, a.score FROM semsearch.row_vectors(ix, ARRAY[row_key]) r
                  CROSS JOIN LATERAL semsearch.semantic_arm(ix, r.embedding, n + 1, filter_keys) a
                  WHERE a.key <> row_key ORDER BY a.score DESC, length(a.key), a.key LIMIT n;
END $$;

-- Rows near the positives and away from the negatives (none of them returned). One nearest-neighbour
-- search with mean(positives) + (mean(positives) - mean(negatives)), the "average vector" of
-- recommendation engines (Qdrant's default): one index scan however long the history, and a score on
-- the same scale as similar's. A history with several unrelated interests averages them; per-interest
-- results come from similar() per positive.
CREATE OR REPLACE FUNCTION semsearch.recommend_vector(ix semsearch.indexes, positive text[], negative text[], OUT v vector)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF coalesce(cardinality(positive), 0) = 0 THEN
        RAISE EXCEPTION 'recommend needs at least one positive row' USING ERRCODE = 'data_exception',
            HINT = 'Pass the keys of rows the user liked (a history) as positive.';
    END IF;
    EXECUTE format('SELECT CASE WHEN n.v IS NULL THEN p.v ELSE (p.v OPERATOR(%1$s.+) p.v) OPERATOR(%1$s.-) n.v END '
                   '  FROM (SELECT %1$s.avg(r.embedding) AS v FROM semsearch.row_vectors($1, $2) r) p, '
                   '       (SELECT %1$s.avg(r.embedding) AS v FROM semsearch.row_vectors($1, $3) r) n', semsearch.vector_schema())
        INTO v USING ix, positive, coalesce(negative, '{}');
    IF ix.distance = 'cosine' AND v::real[] = array_fill(0::real, ARRAY[ix.dimensions]) THEN
        RAISE EXCEPTION 'the positive and negative rows cancel out: nothing is left to recommend from'
            USING ERRCODE = 'data_exception';
    END IF;
END $$;

CREATE OR REPLACE FUNCTION semsearch.recommend(index_name text, positive text[], negative text[] DEFAULT '{}',
    n integer DEFAULT 10, filter_keys text[] DEFAULT NULL)
RETURNS TABLE (key text, score float8) ROWS 10 LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
DECLARE
    ix    semsearch.indexes := semsearch.lookup_index(index_name);
    given text[] := coalesce(positive, '{}') || coalesce(negative, '{}');
BEGIN
    PERFORM semsearch.check_search_args(n);
    RETURN QUERY SELECT a.key, a.score FROM semsearch.semantic_arm(ix, semsearch.recommend_vector(ix, positive, negative),
                                                                   n + cardinality(given), filter_keys) a
                  WHERE a.key <> ALL (given) ORDER BY a.score DESC, length(a.key), a.key LIMIT n;
END $$;

-- The rows to probe: probe_keys (a caller working in batches), within filter_keys; NULL: every row.
CREATE OR REPLACE FUNCTION semsearch.probe_keys(probe_keys text[], filter_keys text[])
RETURNS text[] LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT CASE WHEN probe_keys IS NULL THEN filter_keys WHEN filter_keys IS NULL THEN probe_keys
                ELSE ARRAY(SELECT unnest(probe_keys) INTERSECT SELECT unnest(filter_keys)) END
$$;

-- Each probed row's nearest other rows, through the HNSW index: the functions that run it turn
-- sequential scans off, since on a small store the planner would rather sort all of it for every probe
-- (an all-pairs join: 10x slower at 5,000 rows). ($1 = probed keys, NULL: every row; $2 = chunk rows an HNSW scan
-- reads from the row's vector; $3 = filter keys; $5 = rows that may not be neighbours): (probe, key,
-- cosine similarity of the two row vectors); a probe that found no other row has one row of NULLs.
CREATE OR REPLACE FUNCTION semsearch.neighbours_sql(ix semsearch.indexes, probed boolean, filtered boolean,
    excluding boolean DEFAULT false)
RETURNS text LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT format(
        'WITH d AS MATERIALIZED (%1$s) '
        'SELECT d.key AS probe, x.key, (1 - (d.embedding OPERATOR(%2$s.<=>) '
        '       (SELECT %2$s.avg(t.embedding::%2$s.vector) FROM semsearch.%3$I t WHERE t.key = x.key)))::float8 AS similarity '
        '  FROM d LEFT JOIN LATERAL (SELECT DISTINCT s.key FROM (SELECT s.key FROM semsearch.%3$I s WHERE true %4$s %6$s '
        '       ORDER BY s.embedding %5$s d.embedding LIMIT $2) s WHERE s.key <> d.key) x ON true',
        semsearch.document_vectors_sql(ix, probed), semsearch.vector_schema(), ix.store_table,
        CASE WHEN filtered THEN 'AND s.key = ANY($3)' ELSE '' END, semsearch.distance_operator(ix.distance),
        CASE WHEN excluding THEN 'AND s.key <> ALL($5)' ELSE '' END)
$$;

-- Rows in the store the caller can read (within filter_keys), counted once per row.
CREATE OR REPLACE FUNCTION semsearch.row_count(ix semsearch.indexes, filter_keys text[])
RETURNS bigint LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    total bigint;
BEGIN
    EXECUTE format('SELECT count(*) FROM semsearch.%I s WHERE s.chunk = 0 %s', ix.store_table,
                   CASE WHEN filter_keys IS NOT NULL THEN 'AND s.key = ANY($1)' ELSE '' END) INTO total USING filter_keys;
    RETURN total;
END $$;

-- Pairs of rows whose row vectors are at least `threshold` similar (cosine), each pair once (key_a
-- first in key order, shorter keys first). Each probed row's neighbourhood is read through the HNSW
-- index, deeper (4x) for the rows all of whose neighbours found were duplicates, until one is not or
-- the scan has read the whole store: a group of many copies is found whole.
CREATE OR REPLACE FUNCTION semsearch.near_duplicates(index_name text, threshold float8 DEFAULT 0.95,
    filter_keys text[] DEFAULT NULL, probe_keys text[] DEFAULT NULL)
RETURNS TABLE (key_a text, key_b text, similarity float8) LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp SET enable_seqscan = off AS $$
DECLARE
    ix      semsearch.indexes := semsearch.lookup_index(index_name);
    probe   text[] := semsearch.probe_keys(probe_keys, filter_keys);
    reading integer := semsearch.chunk_rows(ix, 10);
    total   bigint;
    found_a text[] := '{}';
    found_b text[] := '{}';
    found_s float8[] := '{}';
    a       text[];
    b       text[];
    s       float8[];
    again   text[];
BEGIN
    IF threshold IS NULL OR NOT (threshold > 0 AND threshold <= 1) THEN
        RAISE EXCEPTION 'threshold must be greater than 0 and at most 1 (a cosine similarity), not %', threshold
            USING ERRCODE = 'data_exception', HINT = '0.95 finds near-copies; lower values find looser matches.';
    END IF;
    total := semsearch.row_count(ix, filter_keys);
    LOOP
        PERFORM semsearch.cover_ef_search(reading);
        EXECUTE 'WITH r AS MATERIALIZED (' || semsearch.neighbours_sql(ix, probe IS NOT NULL, filter_keys IS NOT NULL) || ') '
                'SELECT (SELECT array_agg(probe) FROM r WHERE similarity >= $4), (SELECT array_agg(key) FROM r WHERE similarity >= $4), '
                '       (SELECT array_agg(similarity) FROM r WHERE similarity >= $4), '
                '       (SELECT array_agg(probe) FROM (SELECT probe FROM r GROUP BY probe HAVING bool_and(similarity >= $4)) x)'
            INTO a, b, s, again USING probe, reading, filter_keys, threshold;
        found_a := found_a || coalesce(a, '{}');
        found_b := found_b || coalesce(b, '{}');
        found_s := found_s || coalesce(s, '{}');
        EXIT WHEN again IS NULL OR reading::float8 > total * 4 OR reading > 2147483647 / 4;
        probe := again;
        reading := reading * 4;
    END LOOP;
    RETURN QUERY SELECT u.a, u.b, max(u.s) FROM (
        SELECT CASE WHEN (length(x.a), x.a) <= (length(x.b), x.b) THEN x.a ELSE x.b END AS a,
               CASE WHEN (length(x.a), x.a) <= (length(x.b), x.b) THEN x.b ELSE x.a END AS b, x.s
          FROM unnest(found_a, found_b, found_s) x(a, b, s)) u
     GROUP BY u.a, u.b ORDER BY 3 DESC, length(u.a), u.a, length(u.b), u.b;
END $$;

-- Each probed row's mean cosine distance to its k nearest other rows (rows in `excluded` do not count
-- as neighbours), through the HNSW index: deeper scans for the rows that found fewer than k.
CREATE OR REPLACE FUNCTION semsearch.knn_distances(ix semsearch.indexes, probe text[], k integer,
    filter_keys text[], excluded text[], total bigint)
RETURNS TABLE (key text, score float8) LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp SET enable_seqscan = off AS $$
DECLARE
    reading integer := 2 * semsearch.chunk_rows(ix, k + 1);  -- (an iterative scan reads past excluded rows)
    keys    text[] := '{}';
    scores  float8[] := '{}';
    p       text[];
    sc      float8[];
    again   text[];
BEGIN
    LOOP
        PERFORM semsearch.cover_ef_search(reading);
        EXECUTE 'WITH r AS MATERIALIZED (SELECT probe, similarity, row_number() OVER (PARTITION BY probe ORDER BY similarity DESC NULLS LAST) AS nth '
                '                          FROM (' || semsearch.neighbours_sql(ix, probe IS NOT NULL, filter_keys IS NOT NULL,
                                                                               excluded IS NOT NULL) || ') x), '
                '     full_ AS (SELECT probe, avg(1 - similarity) AS score FROM r WHERE nth <= $4 GROUP BY probe HAVING count(similarity) >= $4) '
                'SELECT (SELECT array_agg(probe) FROM full_), (SELECT array_agg(score) FROM full_), '
                '       (SELECT array_agg(DISTINCT probe) FROM r WHERE probe NOT IN (SELECT probe FROM full_))'
            INTO p, sc, again USING probe, reading, filter_keys, k, excluded;
        keys := keys || coalesce(p, '{}');
        scores := scores || coalesce(sc, '{}');
        EXIT WHEN again IS NULL OR reading::float8 > total * 4 OR reading > 2147483647 / 4;
        probe := again;
        reading := reading * 4;
    END LOOP;
    RETURN QUERY SELECT * FROM unnest(keys, scores);
END $$;

-- The rows farthest from their k nearest other rows (k-nearest-neighbour distance, the usual anomaly
-- score): score = mean cosine distance of the row vector to those k rows' vectors, highest first.
-- Odd rows must not vouch for each other (ten recipes among abstracts are each other's nearest rows),
-- so the share {{outlier_suspects}} of the rows that score highest (whatever n) are scored again with
-- none of them as neighbours. probe_keys (a caller working in batches) scores only those rows, in one pass, with
-- excluded_keys not counted as neighbours: the caller then runs the second pass itself.
CREATE OR REPLACE FUNCTION semsearch.outliers(index_name text, n integer DEFAULT 20, k integer DEFAULT 10,
    filter_keys text[] DEFAULT NULL, probe_keys text[] DEFAULT NULL, excluded_keys text[] DEFAULT NULL)
RETURNS TABLE (key text, score float8) ROWS 20 LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
DECLARE
    ix       semsearch.indexes := semsearch.lookup_index(index_name);
    total    bigint;
    keys     text[];
    scores   float8[];
    suspects text[];
    again_k  text[];
    again_s  float8[];
BEGIN
    PERFORM semsearch.check_search_args(n);
    total := semsearch.row_count(ix, filter_keys);
    IF k IS NULL OR k < 1 OR k >= total THEN
        RAISE EXCEPTION 'k must be from 1 to the number of other rows (%), not %', greatest(total - 1, 0), k
            USING ERRCODE = 'data_exception', HINT = 'k is how many nearest rows a row is compared with; 10 is usual.';
    END IF;
    SELECT array_agg(d.key), array_agg(d.score) INTO keys, scores
      FROM semsearch.knn_distances(ix, semsearch.probe_keys(probe_keys, filter_keys), k, filter_keys, excluded_keys, total) d;
    IF probe_keys IS NULL THEN
        SELECT array_agg(u.k ORDER BY u.s DESC, length(u.k), u.k) INTO suspects
          FROM (SELECT u.k, u.s FROM unnest(keys, scores) u(k, s)
                 ORDER BY u.s DESC, length(u.k), u.k LIMIT ceil(total * {{outlier_suspects}})) u;
        IF total - cardinality(suspects) > k THEN
            SELECT array_agg(d.key), array_agg(d.score) INTO again_k, again_s
              FROM semsearch.knn_distances(ix, suspects, k, filter_keys, suspects, total) d;
            SELECT array_agg(u.k), array_agg(coalesce(a.s, u.s)) INTO keys, scores
              FROM unnest(keys, scores) u(k, s) LEFT JOIN unnest(again_k, again_s) a(k, s) ON a.k = u.k;
        END IF;
    END IF;
    RETURN QUERY SELECT u.k, u.s FROM unnest(keys, scores) u(k, s) ORDER BY u.s DESC, length(u.k), u.k LIMIT n;
END $$;

-- The vectors of given rows by index name (the ORM's classify and classifier), with row_vectors' errors.
CREATE OR REPLACE FUNCTION semsearch.row_vectors_of(index_name text, keys text[])
RETURNS TABLE (key text, embedding vector) LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT r.key, r.embedding FROM semsearch.row_vectors(semsearch.lookup_index(index_name), keys) r
$$;

-- Each row's distinct terms from the keyword index (clusters name themselves with them), and the
-- first chunk of its text (a label for a row where no model class is at hand: the CLI).
CREATE OR REPLACE FUNCTION semsearch.row_terms(index_name text, keys text[])
RETURNS TABLE (key text, terms text[]) LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN QUERY EXECUTE format('SELECT d.key, d.terms FROM %s d WHERE d.key = ANY($1)',
                                semsearch.keyword_table(semsearch.lookup_index(index_name), 'docs')) USING keys;
END $$;

CREATE OR REPLACE FUNCTION semsearch.row_snippets(index_name text, keys text[])
RETURNS TABLE (key text, snippet text) LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN QUERY EXECUTE format('SELECT s.key, s.content FROM semsearch.%I s WHERE s.key = ANY($1) AND s.chunk = 0',
                                (semsearch.lookup_index(index_name)).store_table) USING keys;
END $$;
