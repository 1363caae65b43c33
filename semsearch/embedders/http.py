"""Embeddings from any OpenAI-compatible server (OpenAI, vLLM, Ollama, LiteLLM, text-embeddings-inference)
through the official `openai` client, which batches nothing itself but retries rate limits (honouring
Retry-After), 5xx answers, timeouts and dropped connections with backoff.

The index's model is the spec `openai:<model>` or `openai:<model>@<base URL>`, so a worker needs no
application code: the registry holds the spec, the environment the key (SEMSEARCH_EMBEDDINGS_API_KEY,
else OPENAI_API_KEY; a local server needs none). The base URL's query string may set `timeout`
(seconds per request, default 60), `max_retries` (default 5), and the prefixes a model wants before
queries and documents (`query_prefix`, `document_prefix`, URL-encoded), e.g.
`openai:nomic-embed-text@http://localhost:11434/v1?timeout=10&query_prefix=search_query:%20&document_prefix=search_document:%20`.
The spec is the model's identity, so changing it builds a new version; SEMSEARCH_EMBEDDINGS_TIMEOUT and
SEMSEARCH_EMBEDDINGS_MAX_RETRIES override its timeout and max_retries in one process instead (short ones
for a web app's queries, the spec's for the worker).
"""
from __future__ import annotations

import os
from typing import Sequence

import numpy as np

from ..errors import EmbedderMisconfigured, EmbedderUnavailable, ModelUnavailable
from ..model_specs import parse_spec

CHARS_PER_TOKEN = 4  # the usual average for English text: this embedder has no tokenizer of the server's model
DEFAULT_CHUNK_TOKENS = 512
MAX_INPUTS_PER_REQUEST = 2048  # OpenAI's limit on inputs per request


def _setting(variable: str, kind: type, default):
    """A client setting from the environment, overriding the spec's in this process only."""
    value = os.environ.get(variable, "").strip()
    if not value:
        return default
    try:
        number = kind(value)
    except ValueError:
        number = -1
    if number < 0 or (kind is float and not 0 < number < float("inf")):
        raise ModelUnavailable(f"{variable}={value!r}: give " + ("the seconds per request, e.g. 5" if kind is float
                                                                  else "the retries, 0 or more") + ", or unset it")
    return number


class OpenAIEmbedder:
    """An embedding model behind an OpenAI-compatible /v1/embeddings endpoint."""

    def __init__(self, spec: str, dimensions: int | None = None):
        try:
            import openai
        except ImportError as exc:
            raise ModelUnavailable("the openai client is not installed: pip install 'semsearch[openai]'") from exc
        self.name = spec
        self.revision = ""  # the server's to keep: the spec names the model
        self.model, base_url, timeout, max_retries, self.query_prefix, self.document_prefix = parse_spec(spec)
        timeout = _setting("SEMSEARCH_EMBEDDINGS_TIMEOUT", float, timeout)
        max_retries = _setting("SEMSEARCH_EMBEDDINGS_MAX_RETRIES", int, max_retries)
        api_key = os.environ.get("SEMSEARCH_EMBEDDINGS_API_KEY") or os.environ.get("OPENAI_API_KEY") or "none"
        self._openai = openai
        self.client = openai.OpenAI(base_url=base_url, api_key=api_key, timeout=timeout, max_retries=max_retries)
        self.base_url = str(self.client.base_url)  # (with OPENAI_BASE_URL or the client's default filled in)
        self._dimensions = dimensions

    @property
    def dimensions(self) -> int:
        """The server's vector size, asked once (one short input) when not given."""
        if self._dimensions is None:
            self._dimensions = len(self._request(["dimensions probe"])[0])
        return self._dimensions

    def chunk(self, texts: Sequence[str], chunk_tokens: int | None, overlap: int) -> list[list[str]]:
        """Windows of about chunk_tokens tokens (4 characters each), cut at whitespace where there is one."""
        size = (chunk_tokens or DEFAULT_CHUNK_TOKENS) * CHARS_PER_TOKEN
        step = max(size - min(overlap * CHARS_PER_TOKEN, size // 2), 1)
        result = []
        for text in texts:
            chunks, start = [], 0
            while True:
                end = start + size
                if end < len(text):
                    cut = text.rfind(" ", start + step, end)
                    end = cut if cut > start else end
                if text[start:end].strip():
                    chunks.append(text[start:end].strip())
                if end >= len(text):
                    break
                start = max(end - (size - step), start + 1)
            result.append(chunks or [text])
        return result

    def encode(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """Documents' embeddings (after the spec's document_prefix)."""
        return self._encode([self.document_prefix + t for t in texts] if self.document_prefix else texts, batch_size)

    def encode_query(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """Queries' embeddings (after the spec's query_prefix)."""
        return self._encode([self.query_prefix + t for t in texts] if self.query_prefix else texts, batch_size)

    def _encode(self, texts: Sequence[str], batch_size: int) -> np.ndarray:
        if not texts:
            return np.empty((0, self._dimensions or 0), dtype=np.float32)
        batch = max(1, min(batch_size, MAX_INPUTS_PER_REQUEST))
        vectors = [v for start in range(0, len(texts), batch) for v in self._request(list(texts[start:start + batch]))]
        result = np.asarray(vectors, dtype=np.float32).reshape(len(texts), -1)
        if self._dimensions is not None and result.shape[1] != self._dimensions:
            raise EmbedderUnavailable(
                f"{self.name}: the server returned {result.shape[1]}-dimensional vectors, not {self._dimensions}; "
                "is it serving another model under this name? Nothing was stored.")
        return result

    def _request(self, inputs: list[str]) -> list[list[float]]:
        """One /v1/embeddings call. A server that is down, overloaded or failing (after the client's own
        retries) raises EmbedderUnavailable: the worker waits for it, and the rows keep their attempts.
        Any other error (a 400 for an input the model refuses) is the input's."""
        errors = self._openai
        try:
            # (The client asks for base64, a tenth of the bytes and no float parsing, and reads floats from a
            # server that ignores it.)
            response = self.client.embeddings.create(model=self.model, input=inputs)
        except errors.APITimeoutError as exc:  # the settings this process used, which the environment may set
            raise EmbedderUnavailable(
                f"{self.name}: {self.base_url} gave no answer within {self.client.timeout:g} s, "
                f"{self.client.max_retries + 1} time(s) (timeout and max_retries: the spec's, or "
                "SEMSEARCH_EMBEDDINGS_TIMEOUT / SEMSEARCH_EMBEDDINGS_MAX_RETRIES in this process)") from exc
        except errors.APIConnectionError as exc:
            cause = f" ({exc.__cause__})" if exc.__cause__ else ""
            raise EmbedderUnavailable(f"{self.name}: cannot reach {self.base_url}: {exc}{cause}") from exc
        except (errors.AuthenticationError, errors.PermissionDeniedError) as exc:
            raise EmbedderMisconfigured(
                f"{self.name}: {self.base_url} refused the API key (HTTP {exc.status_code}: {exc.message}); set "
                "SEMSEARCH_EMBEDDINGS_API_KEY (or OPENAI_API_KEY) where the worker and the application run") from exc
        except errors.NotFoundError as exc:
            raise EmbedderMisconfigured(
                f"{self.name}: {self.base_url.rstrip('/')}/embeddings answered 404 ({exc.message}): check the base "
                f"URL (it usually ends in /v1) and the model name {self.model!r} in the index's model spec") from exc
        except (errors.RateLimitError, errors.InternalServerError) as exc:
            raise EmbedderUnavailable(f"{self.name}: {type(exc).__name__}: {exc}") from exc
        except errors.APIStatusError as exc:
            if exc.status_code >= 500 or exc.status_code in (408, 409, 429):
                raise EmbedderUnavailable(f"{self.name}: HTTP {exc.status_code}: {exc}") from exc
            raise
        data = sorted(response.data, key=lambda d: d.index)
        if len(data) != len(inputs):
            raise EmbedderUnavailable(f"{self.name}: the server returned {len(data)} embeddings for {len(inputs)} inputs")
        return [d.embedding for d in data]
