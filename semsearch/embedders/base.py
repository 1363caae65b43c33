"""What an embedder is (the Protocol the worker and the queries use) and what identifies its vectors."""
from __future__ import annotations

import hashlib
from typing import Protocol, Sequence

import numpy as np

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
