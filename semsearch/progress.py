"""Progress of a long job: a bar with rate and ETA on a terminal, plain log lines otherwise."""
from __future__ import annotations

import logging
import sys
import threading
import time

log = logging.getLogger("semsearch")


class Progress:
    def __init__(self, total: int, label: str, stream=sys.stderr, log_every: float = 5.0):
        self.total = max(total, 0)
        self.label = label
        self.stream = stream
        self.tty = stream.isatty()
        self.log_every = log_every
        self.done = 0
        self.started = time.monotonic()
        self._last_line = 0.0
        self._lock = threading.Lock()

    def advance(self, n: int) -> None:
        with self._lock:
            self.done += n
            now = time.monotonic()
            if self.tty or now - self._last_line >= self.log_every or self.done >= self.total:
                self._last_line = now
                self._show(now)

    def grow(self, n: int) -> None:
        """More work turned up (a backfill queued rows): the total stays true."""
        with self._lock:
            self.total += n

    def _show(self, now: float) -> None:
        elapsed = max(now - self.started, 1e-9)
        rate = self.done / elapsed
        left = max(self.total - self.done, 0)
        eta = f"{left / rate:.0f}s" if rate > 0 else "?"
        line = f"{self.label}: {self.done}/{self.total} rows, {rate:.1f} rows/s, ETA {eta}"
        if self.tty:
            width = 30
            filled = int(width * min(self.done / self.total, 1)) if self.total else width
            self.stream.write(f"\r{self.label} [{'#' * filled}{'.' * (width - filled)}] "
                              f"{self.done}/{self.total} {rate:.1f}/s ETA {eta}  ")
            self.stream.flush()
        else:
            log.info(line)

    def close(self) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()
