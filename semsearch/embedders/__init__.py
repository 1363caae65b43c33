"""Embedding models: one loaded copy of each per process (get_embedder), made from an index's model spec
(make_embedder): a sentence-transformers model (sentence_transformers), `onnx:<model>` run by ONNX
Runtime in int8 (onnx), `openai:<model>[@<base URL>]` from an OpenAI-compatible server (http)."""
from __future__ import annotations

import logging
import threading
from dataclasses import replace

from ..errors import ModelUnavailable
from ..model_specs import check_model_spec
from ..options import DEFAULT_MODEL, IndexOptions
from .base import CHARS_PER_TOKEN_LIMIT, Embedder, content_hash, encode_queries, model_id
from .sentence_transformers import SentenceTransformerEmbedder, model_revision, resolve_model_path

__all__ = ["CHARS_PER_TOKEN_LIMIT", "Embedder", "content_hash", "encode_queries", "model_id", "model_revision",
           "resolve_model_path", "SentenceTransformerEmbedder", "make_embedder", "get_embedder", "forget_embedder",
           "with_model_dimensions"]

log = logging.getLogger("semsearch")
_cache: dict[str, Embedder] = {}
_cache_lock = threading.Lock()


def make_embedder(spec: str) -> Embedder:
    """The embedder an index's model spec names: `openai:<model>[@<base URL>]` for an OpenAI-compatible
    server (semsearch.embedders.http), `onnx:<model>` for a sentence-transformers model run by ONNX
    Runtime in int8 (semsearch.embedders.onnx), anything else a sentence-transformers model name or folder."""
    try:
        check_model_spec(spec)  # a spec written in SQL was never declared in Python
    except ValueError as exc:
        raise ModelUnavailable(str(exc)) from None
    if spec.startswith("openai:"):
        from .http import OpenAIEmbedder

        return OpenAIEmbedder(spec)
    if spec.startswith("onnx:"):
        from .onnx import OnnxEmbedder

        return OnnxEmbedder(spec)
    return SentenceTransformerEmbedder(spec)


def get_embedder(name: str = DEFAULT_MODEL) -> Embedder:
    """One loaded copy of each model per process."""
    with _cache_lock:
        if name not in _cache:
            log.info("loading embedding model %s", name)
            _cache[name] = make_embedder(name)
        return _cache[name]


def forget_embedder(name: str) -> None:
    """Drop a model from the process's cache: the next get_embedder loads (or asks) it afresh."""
    with _cache_lock:
        _cache.pop(name, None)


def with_model_dimensions(options: IndexOptions) -> IndexOptions:
    """The options with the model's dimensions filled in (loads the model only if it is unknown)."""
    if options.dimensions is not None:
        return options
    return replace(options, dimensions=get_embedder(options.model).dimensions)
