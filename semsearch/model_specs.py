"""Model specs as indexes name them, checked when they are declared: a sentence-transformers model name or
folder, `onnx:<model>`, or `openai:<model>[@<base URL>]` (what such a spec says: parse_spec)."""
from __future__ import annotations

import os
import re
from typing import NamedTuple
from urllib.parse import parse_qsl, urlsplit

from .errors import ModelUnavailable, SemsearchError

SPEC_PREFIX = "openai:"
SPEC_OPTIONS = ("timeout", "max_retries", "query_prefix", "document_prefix")


class Spec(NamedTuple):
    model: str
    base_url: str | None
    timeout: float
    max_retries: int
    query_prefix: str
    document_prefix: str


def parse_spec(spec: str) -> Spec:
    """What an `openai:` spec says."""
    rest = spec[len(SPEC_PREFIX):]
    model, _, base_url = rest.partition("@")
    if not model:
        raise ModelUnavailable(f"embedder spec {spec!r} names no model: write openai:<model>[@<base URL>]")
    timeout, max_retries = 60.0, 5
    if base_url:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ModelUnavailable(f"embedder spec {spec!r}: {base_url!r} is not an http(s) URL")
        options = dict(parse_qsl(parts.query, keep_blank_values=True))
        unknown = sorted(set(options) - set(SPEC_OPTIONS))
        if unknown:
            raise ModelUnavailable(f"embedder spec {spec!r}: unknown option {', '.join(unknown)}; "
                                   f"the base URL's query takes {', '.join(SPEC_OPTIONS)}")
        try:
            timeout = float(options.get("timeout", timeout))
            max_retries = int(options.get("max_retries", max_retries))
        except ValueError as exc:
            raise ModelUnavailable(f"embedder spec {spec!r}: timeout and max_retries must be numbers") from exc
        base_url = parts._replace(query="").geturl()
    else:
        options = {}
    return Spec(model, base_url or None, timeout, max_retries, options.get("query_prefix", ""),
                options.get("document_prefix", ""))


_SPEC_PREFIX = re.compile(r"[A-Za-z][\w.+-]+:")  # two letters or more: "C:" is a drive, not an embedder


def check_model_spec(model: str) -> None:
    """Refuse a model spec that no embedder can load when it is declared, not when a worker first tries:
    an OpenAI-compatible server's spec is parsed, and an unknown `word:` prefix is a typo, not a model."""
    if not isinstance(model, str) or not model.strip():
        raise ValueError("model must name a sentence-transformers model or folder, onnx:<model> or "
                         "openai:<model>[@<base URL>]")
    if model.startswith("openai:"):
        try:
            parse_spec(model)
        except SemsearchError as exc:
            raise ValueError(str(exc)) from None
    elif model.startswith("onnx:"):
        if not model[len("onnx:"):].strip():
            raise ValueError(f"model {model!r} names no model: write onnx:<sentence-transformers model or folder>")
    elif (prefix := _SPEC_PREFIX.match(model)) and not os.path.exists(os.path.expanduser(model)):
        raise ValueError(f"model {model!r}: no embedder is called {prefix.group()!r}; write openai:<model>[@<base URL>] "
                         "for an OpenAI-compatible server, onnx:<model> for ONNX Runtime, or a sentence-transformers "
                         "model name or folder")
