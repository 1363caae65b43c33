"""One batch of the worker: claim queued keys -> lock them -> read their text as it is now -> index
keywords -> chunk -> embed -> replace their chunks in the store (both stores during a build) -> commit.
An item that fails while the others succeed is retried with backoff, then recorded in failures; an
embedder that fails as a whole raises, so the batch rolls back and no row loses an attempt."""
from __future__ import annotations

import logging
import random
from dataclasses import dataclass, replace

import psycopg
from psycopg import sql
from pgvector import HalfVector

from .embedders import Embedder, content_hash, model_id
from .errors import EmbedderUnavailable, ModelUnavailable
from .registry import BatchVersions, IndexSpec, RegistryChanged, Version

log = logging.getLogger("semsearch.worker")

TOKENIZE_CHARS = 2_000_000
KEYWORD_BATCH_KEYS = 500  # keys the keyword pass indexes per transaction


@dataclass
class Item:
    key: str
    attempts: int
    first_queued_at: object
    text: str | None = None
    hash: bytes | None = None
    chunks: list[str] | None = None



class BatchWriter:
    """The batch steps, mixed into semsearch.worker.Worker."""

    batch_size: int
    max_attempts: int
    retry_base_seconds: float
    max_chunks: int
    max_text_chars: int
    _store_rls: dict[str, bool]

    def process_keywords(self, conn: psycopg.Connection, ix: IndexSpec) -> int:
        """Index the keywords of queued rows ahead of their embeddings, so keyword search finds a row as
        soon as the worker has read it, however long its embedding waits. The rows stay queued for
        embedding, marked keywords_done. Returns how many queue rows it marked."""
        with conn.transaction():
            conn.execute("SELECT semsearch.lock_for_batch(%s)", (ix.id,))
            rows = conn.execute(
                """SELECT id, keys FROM semsearch.queue WHERE index_id = %s AND NOT keywords_done
                    ORDER BY id LIMIT %s FOR UPDATE SKIP LOCKED""", (ix.id, KEYWORD_BATCH_KEYS)).fetchall()
            taken, total = [], 0
            for row in rows:
                if taken and total + len(row.keys) > KEYWORD_BATCH_KEYS:
                    break
                taken.append(row)
                total += len(row.keys)
            if not taken:
                return 0
            # The keys' advisory locks, as for embedding: keys held by a batch stay for that batch.
            locked = {r.k for r in conn.execute(
                "SELECT k FROM unnest(%s::text[]) k WHERE pg_try_advisory_xact_lock(%s, hashtext(k)) ORDER BY k",
                (sorted({k for row in taken for k in row.keys}), ix.id))}
            if locked:
                conn.execute("SELECT semsearch.index_keywords(%s, %s)", (ix.id, sorted(locked)))
            marked = [row.id for row in taken if locked.issuperset(row.keys)]
            conn.execute("UPDATE semsearch.queue SET keywords_done = true WHERE id = ANY(%s)", (marked,))
        conn.execute("SELECT semsearch.refresh_keyword_stats(%s)", (ix.id,))
        conn.commit()
        return len(marked)

    def process_batch(self, conn: psycopg.Connection, ix: IndexSpec) -> int:
        """Claim and process up to batch_size queued keys; returns how many keys were settled."""
        # Load the models before claiming anything: claimed keys never wait.
        embedder = self._index_embedder(conn, ix)
        if ix.build_model:
            self._build_embedder(ix.build_model)
        with conn.transaction():
            # Source table, then store, then queue rows: the order an application's TRUNCATE and drop_index
            # take them in, so a worker never deadlocks with them.
            conn.execute("SELECT semsearch.lock_for_batch(%s)", (ix.id,))
            versions = BatchVersions.read(conn, ix.id)
            # A switch, or a build started or ended, since the registry was read (a busy worker reads it
            # only between its batches' transactions, so this is where it learns of them).
            if (versions.current != Version(ix.store_table, ix.model, ix.dimensions, ix.storage, ix.chunk_tokens,
                                            ix.chunk_overlap)
                    or (versions.build.model if versions.build else None) != ix.build_model):
                raise RegistryChanged(ix.name)
            claimed = self._claim(conn, ix)
            if not claimed:
                return 0
            if len(claimed[0].keys) > self.batch_size:
                # A bulk statement's row: split it into batch-sized rows and commit at once,
                # so every worker can take a share.
                conn.execute(
                    """WITH big AS (DELETE FROM semsearch.queue WHERE id = %(id)s RETURNING *)
                       INSERT INTO semsearch.queue (index_id, keys, queued_at, run_after, attempts, last_error,
                                                    keywords_done)
                       SELECT index_id, keys[i:i + %(n)s - 1], queued_at, run_after, attempts, last_error, keywords_done
                         FROM big, generate_series(1, cardinality(keys), %(n)s) i ORDER BY i""",
                    {"id": claimed[0].id, "n": self.batch_size})
                split = True
            else:
                split = False
                taken, total = [], 0
                for row in claimed:
                    if taken and total + len(row.keys) > self.batch_size:
                        break
                    taken.append(row)
                    total += len(row.keys)
                # Keys another worker is embedding right now stay queued for later.
                locked = {r.k for r in conn.execute(
                    "SELECT k FROM unnest(%s::text[]) k WHERE pg_try_advisory_xact_lock(%s, hashtext(k)) ORDER BY k",
                    (sorted({k for row in taken for k in row.keys}), ix.id),
                )}
                if not locked:
                    return 0
                items: dict[str, Item] = {}
                for row in taken:
                    for key in row.keys:
                        if key in locked:
                            item = items.setdefault(key, Item(key, row.attempts, row.queued_at))
                            item.attempts = max(item.attempts, row.attempts)
                            item.first_queued_at = min(item.first_queued_at, row.queued_at)
                # A row with a key held elsewhere stays queued whole: its other keys come round
                # again later and cost only a hash comparison.
                conn.execute("DELETE FROM semsearch.queue WHERE id = ANY(%s)",
                             ([row.id for row in taken if locked.issuperset(row.keys)],))
                if len(items) < self.batch_size:
                    # Most likely the queue's last batch: flushed at commit (the worker's commits are
                    # asynchronous otherwise), so a read replica streams it now rather than up to
                    # wal_writer_delay later, once the worker idles.
                    conn.execute("SET LOCAL synchronous_commit = local")
                self._settle(conn, ix, embedder, list(items.values()), versions)
        if split:
            return self.process_batch(conn, ix)
        if self.on_progress:
            self.on_progress(len(items))
        return len(items)

    def _claim(self, conn: psycopg.Connection, ix: IndexSpec) -> list:
        """Lock queue rows for about batch_size keys, oldest first, skipping rows other batches hold. A
        row stays locked until this batch commits, whether taken or not: so rows are claimed a few at a
        time (one, then as many as the keys per row so far say are needed), never batch_size rows of a
        bulk statement's many keys each, which would leave other lanes and workers nothing to take."""
        claimed: list = []
        keys = last_id = 0
        while keys < self.batch_size:
            wanted = 1 if not claimed else -(-(self.batch_size - keys) * len(claimed) // keys)
            rows = conn.execute(
                """SELECT id, keys, attempts, queued_at FROM semsearch.queue
                    WHERE index_id = %s AND run_after <= now() AND id > %s
                    ORDER BY id LIMIT %s FOR UPDATE SKIP LOCKED""",
                (ix.id, last_id, wanted)).fetchall()
            if not rows:
                break
            claimed.extend(rows)
            keys += sum(len(r.keys) for r in rows)
            last_id = rows[-1].id
        return claimed

    def _settle(self, conn: psycopg.Connection, ix: IndexSpec, embedder: Embedder, items: list[Item],
                versions: BatchVersions) -> None:
        self._clear_problem(conn, ix)
        # Keywords first, whatever happens to the embedding.
        conn.execute("SELECT semsearch.index_keywords(%s, %s)", (ix.id, sorted(i.key for i in items)))
        texts = self._read_source(conn, ix, [i.key for i in items])
        gone = [i.key for i in items if i.key not in texts]
        present, failed = self._embeddable(items, texts)
        failed.extend(self._write_version(conn, ix, versions.current, embedder, present, gone + [f[0].key for f in failed]))
        failed_keys = {f[0].key for f in failed}
        if versions.build is not None:
            # Writes during a build reach both versions: the new one is exact when it becomes current.
            build_embedder = None if versions.build_problem else self._checked_build_embedder(conn, ix, versions.build)
            if versions.build_phase == "indexing":  # its HNSW index is being built: embedded just after
                conn.execute("SELECT semsearch.note_build_keys(%s, %s)", (ix.id, sorted(i.key for i in items)))
            elif build_embedder is None:  # stopped: its walk starts again, so only remove what changed
                self._delete_keys(conn, versions.build, [i.key for i in items])
            else:
                built = [i for i in present if i.key not in failed_keys]
                failed.extend(self._write_version(conn, ix, versions.build, build_embedder, built,
                                                  gone + sorted(failed_keys)))
                failed_keys = {f[0].key for f in failed}
        settled = [i.key for i in items if i.key not in failed_keys]
        if settled:
            conn.execute("DELETE FROM semsearch.failures WHERE index_id = %s AND key = ANY(%s)", (ix.id, settled))
        for item, reason, permanent in failed:
            self._record_failure(conn, ix, item, reason, permanent)

    def _embeddable(self, items: list[Item], texts: dict[str, str | None]):
        """The items whose row exists and has text to embed within the worker's limits, and the failures
        of the others (item, reason, permanent)."""
        present: list[Item] = []
        failed: list[tuple[Item, str, bool]] = []
        for item in items:
            if item.key not in texts:
                continue
            item.text = texts[item.key]
            if item.text is None or not item.text.strip():
                failed.append((item, "nothing to embed: the indexed columns are NULL, empty or blank", True))
            elif len(item.text) > self.max_text_chars:
                failed.append((item, f"text too long: {len(item.text)} characters, over the worker's max_text_chars "
                                     f"({self.max_text_chars}); raise it (--max-text-chars) to embed it", True))
            else:
                present.append(item)
        return present, failed

    def _write_version(self, conn: psycopg.Connection, ix: IndexSpec, version: Version, embedder: Embedder,
                       items: list[Item], stale_keys: list[str]) -> list[tuple[Item, str, bool]]:
        """Embed the items whose text (or model) changed since this version stored them and replace their
        chunks; remove the vectors of stale_keys (deleted rows, failed items). Returns the failures."""
        store = sql.Identifier(version.store_table)
        current = dict(conn.execute(
            sql.SQL("SELECT key, content_hash FROM semsearch.{} WHERE key = ANY(%s) AND chunk = 0").format(store),
            ([i.key for i in items],)).fetchall())
        model = model_id(embedder)
        changed: list[Item] = []
        for item in items:
            item = replace(item, hash=content_hash(model, version.chunk_tokens, version.chunk_overlap, item.text),
                           chunks=None)
            if current.get(item.key) != item.hash:  # else: already embedded from exactly this text
                changed.append(item)

        failed: list[tuple[Item, str, bool]] = []
        to_embed: list[Item] = []
        for item, chunks in zip(changed, self._chunk(embedder, version, changed)):
            if isinstance(chunks, Exception):
                failed.append((item, f"chunking failed: {chunks!r}", False))
            elif len(chunks) > self.max_chunks:
                failed.append((item, f"text too long: {len(chunks)} chunks, over the worker's max_chunks "
                                     f"({self.max_chunks}); raise max_chunks (--max-chunks) to embed it", True))
            else:
                item.chunks = chunks
                to_embed.append(item)
        vectors, embed_failures = self._embed(embedder, to_embed)
        failed.extend(embed_failures)
        embedded = [i for i in to_embed if i.key in vectors]
        # A failed item's old vectors describe text it no longer has: never serve them.
        self._delete_keys(conn, version, list(stale_keys) + [i.key for i in embedded] + [f[0].key for f in failed])
        if embedded:
            rows = [(item.key, n, chunk, vector, model, item.hash)
                    for item in embedded for n, (chunk, vector) in enumerate(zip(item.chunks, vectors[item.key]))]
            self._write_store(conn, ix, version, rows)
        return failed

    @staticmethod
    def _delete_keys(conn: psycopg.Connection, version: Version, keys: list[str]) -> None:
        if keys:
            conn.execute(sql.SQL("DELETE FROM semsearch.{} WHERE key = ANY(%s)").format(sql.Identifier(version.store_table)),
                         (sorted(set(keys)),))

    def _write_store(self, conn: psycopg.Connection, ix: IndexSpec, version: Version, rows: list[tuple]) -> None:
        """Binary COPY; or, for a worker role under the store's row-level security (PostgreSQL refuses
        COPY FROM there), one INSERT of unnested arrays."""
        store = sql.Identifier(version.store_table)
        if version.store_table not in self._store_rls:
            self._store_rls[version.store_table] = conn.execute("SELECT row_security_active(%s::regclass)",
                                                                (f"semsearch.{version.store_table}",)).fetchone()[0]
        if not self._store_rls[version.store_table]:
            with conn.cursor().copy(sql.SQL(
                    "COPY semsearch.{} (key, chunk, content, embedding, model, content_hash) FROM STDIN (FORMAT BINARY)"
            ).format(store)) as copy:
                copy.set_types(["text", "int4", "text", version.storage, "text", "bytea"])
                for row in rows:
                    copy.write_row(row if version.storage == "vector" else row[:3] + (HalfVector(row[3]),) + row[4:])
            return
        columns = list(zip(*rows))
        conn.execute(sql.SQL(
            "INSERT INTO semsearch.{} (key, chunk, content, embedding, model, content_hash) "
            "SELECT k, c, t, e::vector, m, h FROM unnest(%s::text[], %s::int4[], %s::text[], %s::text[], %s::text[], "
            "%s::bytea[]) AS u(k, c, t, e, m, h)").format(store),
            (list(columns[0]), list(columns[1]), list(columns[2]),
             ["[" + ",".join(map(repr, map(float, v))) + "]" for v in columns[3]], list(columns[4]), list(columns[5])))

    @staticmethod
    def _read_source(conn: psycopg.Connection, ix: IndexSpec, keys: list[str]) -> dict[str, str | None]:
        """The current text of these keys (keys of deleted rows are absent); any primary key type."""
        return dict(conn.execute("SELECT key, content FROM semsearch.read_source(%s, %s)", (ix.id, keys)).fetchall())

    @staticmethod
    def _chunk(embedder: Embedder, version: Version, items: list[Item]) -> list[list[str] | Exception]:
        """Chunk the batch in few tokenizer calls (each over at most TOKENIZE_CHARS characters, which
        bounds memory); item by item if one fails, to find the culprit."""
        groups, size = [[]], 0
        for item in items:
            if groups[-1] and size + len(item.text) > TOKENIZE_CHARS:
                groups.append([])
                size = 0
            groups[-1].append(item)
            size += len(item.text)
        if len(groups) > 1:
            return [chunks for group in groups for chunks in BatchWriter._chunk(embedder, version, group)]
        try:
            return embedder.chunk([i.text for i in items], version.chunk_tokens, version.chunk_overlap)
        except Exception:
            results: list[list[str] | Exception] = []
            for item in items:
                try:
                    results.extend(embedder.chunk([item.text], version.chunk_tokens, version.chunk_overlap))
                except Exception as exc:
                    results.append(exc)
            return results

    def _embed(self, embedder: Embedder, items: list[Item]):
        """Embed all chunks at once; on an error, split the batch to isolate the poison items."""
        vectors: dict[str, list] = {}
        failures: list[tuple[Item, str, bool]] = []
        if not items:
            return vectors, failures
        try:
            flat = embedder.encode([c for i in items for c in i.chunks], batch_size=self.batch_size)
        except (EmbedderUnavailable, ModelUnavailable):
            raise  # the service or its configuration, not these items: the whole batch waits
        except Exception as exc:
            if len(items) == 1:
                failures.append((items[0], f"embedding failed: {exc!r}", False))
                return vectors, failures
            mid = len(items) // 2
            for half in (items[:mid], items[mid:]):
                v, f = self._embed(embedder, half)
                vectors.update(v)
                failures.extend(f)
            return vectors, failures
        start = 0
        for item in items:
            vectors[item.key] = flat[start:start + len(item.chunks)]
            start += len(item.chunks)
        return vectors, failures

    def _record_failure(self, conn, ix: IndexSpec, item: Item, reason: str, permanent: bool) -> None:
        attempts = item.attempts + 1
        if permanent or attempts >= self.max_attempts:
            log.warning("index %s key %s failed after %d attempt(s): %s", ix.name, item.key, attempts, reason)
            conn.execute(
                """INSERT INTO semsearch.failures (index_id, key, error, attempts, first_queued_at)
                   VALUES (%s, %s, %s, %s, %s)
                   ON CONFLICT (index_id, key) DO UPDATE
                   SET error = excluded.error, attempts = excluded.attempts, failed_at = now()""",
                (ix.id, item.key, reason, attempts, item.first_queued_at))
            return
        delay = min(self.retry_base_seconds * 2 ** (attempts - 1), 3600) * random.uniform(0.5, 1.5)
        log.info("index %s key %s failed (attempt %d), retrying in %.1fs: %s", ix.name, item.key, attempts, delay, reason)
        conn.execute(
            """INSERT INTO semsearch.queue (index_id, keys, queued_at, run_after, attempts, last_error)
               VALUES (%s, ARRAY[%s], %s, now() + make_interval(secs => %s), %s, %s)""",
            (ix.id, item.key, item.first_queued_at, delay, attempts, reason))
