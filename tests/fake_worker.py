"""A worker process with the fake embedder: for crash tests, where the model is not the subject."""
import logging
import signal
import sys

from semsearch import Worker
from tests.conftest import FakeEmbedder

if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    worker = Worker(sys.argv[1], poll_interval=0.5, batch_size=int(sys.argv[2]) if len(sys.argv) > 2 else 16,
                    embedder_factory=lambda model: FakeEmbedder(model))
    signal.signal(signal.SIGTERM, lambda *_: worker.stop())
    worker.run(drain="--drain" in sys.argv)
