"""semsearch leaves the process as it found it: importing it, loading the default model and searching
change no environment variable, logger, warnings filter, signal handler or thread count, and the
default model never reaches for the network, whether or not HF_HUB_OFFLINE is set."""
import json
import os
import subprocess
import sys

PROBE = '''
import json, logging, os, signal, sys, time, warnings

network = []
sys.addaudithook(lambda event, args: network.append(f"{event} {args[:2]}")
                 if event in ("socket.connect", "socket.getaddrinfo") else None)

# The libraries semsearch loads set up their own loggers on import: that is theirs, so taken first.
import sentence_transformers, torch
from transformers.utils import logging as transformers_logging


def state():
    return {
        "environ": dict(os.environ),
        "root logger": [logging.root.level, [repr(h) for h in logging.root.handlers]],
        "loggers": {name: [logger.level, logger.propagate, logger.disabled, [repr(h) for h in logger.handlers]]
                    for name, logger in logging.root.manager.loggerDict.items()
                    if isinstance(logger, logging.Logger) and name.split(".")[0] != "semsearch"},
        "warnings filters": [repr(f) for f in warnings.filters],
        "signal handlers": [repr(signal.getsignal(s)) for s in (signal.SIGINT, signal.SIGTERM)],
        "torch threads": torch.get_num_threads(),
        "progress bars": transformers_logging.is_progress_bar_enabled(),
    }


before = state()
started = time.monotonic()
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

import semsearch
from semsearch.embedders import encode_queries, get_embedder


class Base(DeclarativeBase):
    pass


class Article(Base):
    __tablename__ = "articles"
    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str]
    search = semsearch.SearchIndex("title")


vector = encode_queries(get_embedder("all-MiniLM-L6-v2"), ["how do I parse command line options"])[0]
str(Article.search.hybrid("how do I parse command line options"))  # embeds the query: the model is used
seconds = time.monotonic() - started
after = state()
after["loggers"] = {name: value for name, value in after["loggers"].items() if name in before["loggers"]}


def difference(old, new):
    """What changed, down to the keys of a dict (the environment is not printed whole)."""
    if isinstance(old, dict):
        return {key: difference(old.get(key), new.get(key)) for key in old.keys() | new.keys()
                if old.get(key) != new.get(key)}
    return {"before": old, "after": new}


changed = {key: difference(before[key], after[key]) for key in before if before[key] != after[key]}
print(json.dumps({"changed": changed, "network": network, "dimensions": len(vector), "seconds": seconds}))
'''


def test_import_and_default_model_leave_the_process_as_it_was():
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    probe = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=300)
    assert probe.returncode == 0, probe.stderr
    result = json.loads(probe.stdout.splitlines()[-1])
    assert result["dimensions"] == 384
    assert result["changed"] == {}
    assert result["network"] == []  # not one connection or name lookup: nothing waits on a model hub
