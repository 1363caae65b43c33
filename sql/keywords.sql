-- The keyword arm's data: BM25 over an inverted index kept in plain tables (stock PostgreSQL, so it runs
-- on managed services). Per index, beside its store:
--   <store>_docs      one row per source row: its weighted length, its terms with their weighted
--                     frequencies (to score given rows exactly), a content hash and a tsvector (GIN) for
--                     the exact syntaxes (phrase, prefix, websearch)
--   <store>_postings  one row per (row, term): the term's weighted frequency, the row's length and an
--                     impact, the BM25 term score at a reference average length; read per query term in
--                     impact order, so a query reads the best postings of each term, not all of them
--   <store>_terms     document frequencies, split over 16 shards (a worker adds to its own shard)
--   <store>_stats     document count and total length, in the same shards
-- The worker maintains them (semsearch.index_keywords) as soon as it reads a row, before and apart from
-- its embedding. Statistics are exact at every commit; the shards only spare concurrent workers from
-- waiting on one row. Application writes never touch these tables (their triggers only queue keys).

CREATE OR REPLACE FUNCTION semsearch.keyword_table(ix semsearch.indexes, part text)
RETURNS text LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT format('semsearch.%I', 'store_' || ix.name || '_' || part)  -- (not per version: keywords need no model)
$$;

-- BM25's term score as SQL text over the given expressions (tf and dl: the posting's weighted term
-- frequency and the row's weighted length).
CREATE OR REPLACE FUNCTION semsearch.bm25_sql(ix semsearch.indexes, tf text, dl text, avgdl text)
RETURNS text LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT format('(%1$s * %3$s / (%1$s + %4$s * (%5$s + %6$s * %2$s / greatest(%7$s, 1e-9))))',
                  tf, dl, (ix.bm25_k1 + 1)::text, ix.bm25_k1::text, (1 - ix.bm25_b)::text, ix.bm25_b::text, avgdl)
$$;

-- The weight of each indexed column, in column order.
CREATE OR REPLACE FUNCTION semsearch.column_weights(ix semsearch.indexes)
RETURNS float8[] LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT coalesce(ix.column_weights, array_fill(1::float8, ARRAY[cardinality(ix.columns)]))
$$;

-- What the keyword data of a row was made from: its texts, the text search configuration and the
-- weights. NULL for a row that no longer exists.
CREATE OR REPLACE FUNCTION semsearch.keyword_hash(config regconfig, weights float8[], texts text[])
RETURNS bytea LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT CASE WHEN texts IS NOT NULL
                THEN sha256(convert_to(jsonb_build_array(config::text, weights, texts)::text, 'UTF8')) END
$$;

-- The postings' indexes (the ones missing). No primary key: (key, term) is unique by construction, and
-- the btree on key alone (for deletes and for scoring given rows) stores each key once (deduplication),
-- a fraction of a (key, term) index. A first fill goes in without them (semsearch.first_fill): one
-- sorted build at its end instead of a hundred random inserts per row into indexes far larger than
-- shared_buffers.
CREATE OR REPLACE FUNCTION semsearch.build_postings_indexes(ix semsearch.indexes)
RETURNS void LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF to_regclass(format('semsearch.%I', 'store_' || ix.name || '_postings_key')) IS NULL THEN
        EXECUTE format('CREATE INDEX %I ON %s (key)', 'store_' || ix.name || '_postings_key', semsearch.keyword_table(ix, 'postings'));
    END IF;
    IF to_regclass(format('semsearch.%I', 'store_' || ix.name || '_postings_impact')) IS NULL THEN
        EXECUTE format('CREATE INDEX %I ON %s (term, impact DESC) INCLUDE (key, tf, dl)',
                       'store_' || ix.name || '_postings_impact', semsearch.keyword_table(ix, 'postings'));
    END IF;
END $$;

-- Create an index's keyword tables (no-op when they exist). Returns true when it created them.
CREATE OR REPLACE FUNCTION semsearch.build_keyword_tables(ix semsearch.indexes)
RETURNS boolean LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    -- Before schema 0002 the store held the keyword column.
    IF EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = format('semsearch.%I', ix.store_table)::regclass
               AND attname = 'tsv' AND NOT attisdropped) THEN
        EXECUTE format('ALTER TABLE semsearch.%I DROP COLUMN tsv', ix.store_table);
    END IF;
    IF to_regclass(semsearch.keyword_table(ix, 'docs')) IS NOT NULL THEN
        RETURN false;
    END IF;
    EXECUTE format('CREATE TABLE %s (key text PRIMARY KEY, length real NOT NULL, terms text[] NOT NULL, '
                   'tfs real[] NOT NULL, content_hash bytea NOT NULL, tsv tsvector NOT NULL)', semsearch.keyword_table(ix, 'docs'));
    -- The term lists are read for every row a search scores: kept inline and uncompressed where they fit,
    -- with the tsvector (read only by the exact syntaxes, through its index) moved out of line first.
    EXECUTE format('ALTER TABLE %s ALTER COLUMN terms SET STORAGE MAIN, ALTER COLUMN tfs SET STORAGE MAIN, '
                   'ALTER COLUMN tsv SET STORAGE EXTERNAL', semsearch.keyword_table(ix, 'docs'));
    EXECUTE format('CREATE INDEX %I ON %s USING gin (tsv)', 'store_' || ix.name || '_docs_gin', semsearch.keyword_table(ix, 'docs'));
    EXECUTE format('CREATE TABLE %s (term text NOT NULL, key text NOT NULL, tf real NOT NULL, dl real NOT NULL, '
                   'impact real NOT NULL)', semsearch.keyword_table(ix, 'postings'));
    PERFORM semsearch.build_postings_indexes(ix);
    EXECUTE format('CREATE TABLE %s (term text NOT NULL, shard smallint NOT NULL, df integer NOT NULL, '
                   'PRIMARY KEY (term, shard))', semsearch.keyword_table(ix, 'terms'));
    EXECUTE format('CREATE TABLE %s (shard smallint PRIMARY KEY, docs bigint NOT NULL, length float8 NOT NULL)',
                   semsearch.keyword_table(ix, 'stats'));
    RETURN true;
END $$;

-- Bring the keyword data of these keys in line with their rows as they are now: rows whose text (or the
-- index's configuration or weights) changed are re-indexed, deleted rows removed, unchanged rows left
-- alone. Returns how many keys changed. The worker calls it holding the keys' advisory locks.
CREATE OR REPLACE FUNCTION semsearch.index_keywords(index_id integer, keys text[])
RETURNS integer LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    ix       semsearch.indexes;
    shard    smallint := pg_backend_pid() % 16;
    texts    text;
    weights  float8[];
    changed  text[];
    indexed  text[];
    avgdl    float8;
BEGIN
    SELECT * INTO STRICT ix FROM semsearch.indexes i WHERE i.id = index_keywords.index_id;
    weights := semsearch.column_weights(ix);
    SELECT format('ARRAY[%s]', string_agg(format('t.%I::text', c), ', ' ORDER BY n)) INTO texts
      FROM unnest(ix.columns) WITH ORDINALITY u(c, n);
    EXECUTE format(
        'SELECT array_agg(k.k), array_agg(k.k) FILTER (WHERE d.key IS NOT NULL) FROM (SELECT DISTINCT k FROM unnest($1) k) k '
        'LEFT JOIN (SELECT %s AS key, %s AS texts FROM %s t WHERE %s) s ON s.key = k.k '
        'LEFT JOIN %s d ON d.key = k.k '
        'WHERE semsearch.keyword_hash($2, $3, s.texts) IS DISTINCT FROM d.content_hash',
        semsearch.key_text_sql(ix, 't'), texts, ix.source, semsearch.key_in_sql(ix, 't', '$1'),
        semsearch.keyword_table(ix, 'docs'))
        INTO changed, indexed USING keys, ix.ts_config, weights;
    IF changed IS NULL THEN
        RETURN 0;
    END IF;

    -- The old data of those indexed before goes, with its share of the statistics (rows in term order:
    -- workers that update the same shard lock its rows in the same order). Rows never indexed have none
    -- to look for (a first fill's rows: its postings have no index on key yet).
    IF indexed IS NOT NULL THEN
        EXECUTE format(
            'WITH gone AS (DELETE FROM %s p WHERE p.key = ANY($1) RETURNING p.term) '
            'INSERT INTO %s AS s (term, shard, df) SELECT term, $2, -count(*) FROM gone GROUP BY term ORDER BY term '
            'ON CONFLICT (term, shard) DO UPDATE SET df = s.df + excluded.df',
            semsearch.keyword_table(ix, 'postings'), semsearch.keyword_table(ix, 'terms'))
            USING indexed, shard;
        EXECUTE format(
            'WITH gone AS (DELETE FROM %s d WHERE d.key = ANY($1) RETURNING d.length) '
            'INSERT INTO %s AS s (shard, docs, length) SELECT $2, -count(*), -sum(length) FROM gone HAVING count(*) > 0 '
            'ON CONFLICT (shard) DO UPDATE SET docs = s.docs + excluded.docs, length = s.length + excluded.length',
            semsearch.keyword_table(ix, 'docs'), semsearch.keyword_table(ix, 'stats'))
            USING indexed, shard;
    END IF;

    -- Their current text: each column's lexemes, a term's frequency weighted by its column (BM25F).
    EXECUTE format('SELECT sum(length) / nullif(sum(docs), 0) FROM %s', semsearch.keyword_table(ix, 'stats')) INTO avgdl;
    EXECUTE format(
        'WITH src AS (SELECT %1$s AS key, %2$s AS texts FROM %3$s t WHERE %4$s), '
        'lex AS (SELECT s.key, l.lexeme AS term, sum($3[c.n] * cardinality(l.positions))::real AS tf '
        '          FROM src s, unnest(s.texts) WITH ORDINALITY c(txt, n), unnest(to_tsvector($2, c.txt)) l '
        '         WHERE c.txt IS NOT NULL GROUP BY 1, 2 HAVING sum($3[c.n] * cardinality(l.positions)) > 0), '
        'doc AS (SELECT key, sum(tf)::real AS length, array_agg(term ORDER BY term) AS terms, '
        '               array_agg(tf ORDER BY term) AS tfs FROM lex GROUP BY key), '
        'new_docs AS (INSERT INTO %5$s (key, length, terms, tfs, content_hash, tsv) '
        '             SELECT s.key, d.length, d.terms, d.tfs, semsearch.keyword_hash($2, $3, s.texts), '
        '                    to_tsvector($2, array_to_string(s.texts, chr(10))) FROM src s JOIN doc d USING (key) '
        '             RETURNING length), '
        'new_stats AS (INSERT INTO %6$s AS s (shard, docs, length) SELECT $4, count(*), sum(length) FROM new_docs '
        '              HAVING count(*) > 0 ON CONFLICT (shard) '
        '              DO UPDATE SET docs = s.docs + excluded.docs, length = s.length + excluded.length), '
        'new_postings AS (INSERT INTO %7$s (term, key, tf, dl, impact) '
        '                 SELECT l.term, l.key, l.tf, d.length, %8$s FROM lex l JOIN doc d USING (key) RETURNING term) '
        'INSERT INTO %9$s AS s (term, shard, df) SELECT term, $4, count(*) FROM new_postings GROUP BY term ORDER BY term '
        'ON CONFLICT (term, shard) DO UPDATE SET df = s.df + excluded.df',
        semsearch.key_text_sql(ix, 't'), texts, ix.source, semsearch.key_in_sql(ix, 't', '$1'),
        semsearch.keyword_table(ix, 'docs'), semsearch.keyword_table(ix, 'stats'), semsearch.keyword_table(ix, 'postings'),
        semsearch.bm25_sql(ix, 'l.tf', 'd.length', 'coalesce($5, avg(d.length) OVER ())'),
        semsearch.keyword_table(ix, 'terms'))
        USING changed, ix.ts_config, weights, shard, coalesce(ix.bm25_avgdl, avgdl);
    RETURN cardinality(changed);
END $fn$;

-- Keep the postings' reading order true to the corpus: when the average length has drifted more than
-- 25% from the one their impacts were computed with (or k1, b changed: bm25_avgdl is then NULL),
-- recompute the impacts. Scores never depend on it: they use the current statistics. compact: also drop
-- the document-frequency rows that have come to 0 (workers ask for it when idle).
CREATE OR REPLACE FUNCTION semsearch.refresh_keyword_stats(index_id integer, compact boolean DEFAULT false)
RETURNS void LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    ix      semsearch.indexes;
    avgdl   float8;
BEGIN
    SELECT * INTO ix FROM semsearch.indexes i WHERE i.id = refresh_keyword_stats.index_id;
    IF NOT FOUND OR to_regclass(semsearch.keyword_table(ix, 'stats')) IS NULL THEN
        RETURN;
    END IF;
    EXECUTE format('SELECT sum(length) / nullif(sum(docs), 0) FROM %s', semsearch.keyword_table(ix, 'stats')) INTO avgdl;
    IF avgdl IS NOT NULL AND (ix.bm25_avgdl IS NULL OR abs(avgdl / ix.bm25_avgdl - 1) > 0.25) THEN
        PERFORM 1 FROM semsearch.indexes i WHERE i.id = ix.id FOR UPDATE;
        EXECUTE format('UPDATE %s p SET impact = %s', semsearch.keyword_table(ix, 'postings'),
                       semsearch.bm25_sql(ix, 'p.tf', 'p.dl', avgdl::text));
        UPDATE semsearch.indexes i SET bm25_avgdl = avgdl WHERE i.id = ix.id;
    END IF;
    IF compact THEN
        EXECUTE format('DELETE FROM %s WHERE df = 0', semsearch.keyword_table(ix, 'terms'));
    END IF;
END $$;
