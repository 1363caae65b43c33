import threading

from semsearch import Worker


def drain(url, embedder=None, timeout: float = 300, **options):
    """Run a worker until the queue is empty; fail (stopping it) if it is not empty within timeout seconds."""
    options.setdefault("poll_interval", 0.2)
    if embedder is not None:
        options["embedder_factory"] = lambda model: embedder
    worker, errors = Worker(url, **options), []

    def run():
        try:
            worker.run(drain=True)
        except BaseException as exc:  # noqa: BLE001 - raised below, in the test's thread
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        worker.stop()
        thread.join(30)
        raise AssertionError(f"the queue did not drain within {timeout:g}s")
    if errors:
        raise errors[0]


def store_rows(conn, index="articles_search"):
    """{key: [chunk contents]} of an index's store."""
    rows = conn.execute(f"SELECT key, content FROM semsearch.store_{index} ORDER BY key, chunk").fetchall()
    out = {}
    for key, content in rows:
        out.setdefault(key, []).append(content)
    return out


def queue_keys(conn):
    return sorted(r[0] for r in conn.execute("SELECT k FROM semsearch.queue, unnest(keys) k").fetchall())
