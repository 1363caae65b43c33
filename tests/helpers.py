from semsearch import Worker


def drain(url, embedder=None, **options):
    """Run a worker until the queue is empty."""
    options.setdefault("poll_interval", 0.2)
    if embedder is not None:
        options["embedder_factory"] = lambda model: embedder
    Worker(url, **options).run(drain=True)


def store_rows(conn, index="articles_search"):
    """{key: [chunk contents]} of an index's store."""
    rows = conn.execute(f"SELECT key, content FROM semsearch.store_{index} ORDER BY key, chunk").fetchall()
    out = {}
    for key, content in rows:
        out.setdefault(key, []).append(content)
    return out


def queue_keys(conn):
    return sorted(r[0] for r in conn.execute("SELECT k FROM semsearch.queue, unnest(keys) k").fetchall())
