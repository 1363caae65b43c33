"""A worker process with the fake embedder: for crash tests, where the model is not the subject.

python -m tests.fake_worker URL [BATCH_SIZE] [--drain] [--report]; --report prints every text it
embedded, one per line (newlines escaped), when it exits. FAKE_ENCODE_DELAY: seconds per encode;
FAKE_CONCURRENCY: batches in flight (the worker's --concurrency).
"""
import signal

# A SIGTERM that comes while the imports below run (a worker respawned just before a test ends) stops
# the worker cleanly once it exists, instead of killing the process with the default action.
early_stop: list[int] = []
signal.signal(signal.SIGTERM, lambda *_: early_stop.append(1))

import logging  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402

from semsearch import Worker  # noqa: E402
from tests.conftest import FakeEmbedder  # noqa: E402

if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    embedder = FakeEmbedder("all-MiniLM-L6-v2", delay=float(os.environ.get("FAKE_ENCODE_DELAY", "0")))
    batch_size = int(sys.argv[2]) if len(sys.argv) > 2 and sys.argv[2].isdigit() else 16
    worker = Worker(sys.argv[1], poll_interval=0.5, batch_size=batch_size,
                    concurrency=int(os.environ.get("FAKE_CONCURRENCY", "1")),
                    embedder_factory=lambda model: FakeEmbedder(model) if model != embedder.name else embedder)
    signal.signal(signal.SIGTERM, lambda *_: worker.stop())
    if early_stop:
        worker.stop()
    worker.run(drain="--drain" in sys.argv)
    if "--report" in sys.argv:
        print("\n".join(text.replace("\n", "\\n") for text in embedder.encoded))
