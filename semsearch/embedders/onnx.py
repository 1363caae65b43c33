"""Embeddings with ONNX Runtime: a sentence-transformers model exported to ONNX once and quantised to
int8 (dynamic, per output channel, the weights of its dense layers only: the attention products stay
float, which keeps the vectors within cosine 0.99 of the original's), cached on disk. The export uses
the model's plain ("eager") attention: the SDPA export adds NaN guards over every attention score that
took 15% of the run time. Forward passes hold at most FORWARD_TOKENS tokens: larger batches fall out
of the CPU caches (measured at 128-token passages: 16 rows per pass ran 1.3x faster than 64).

The index's model is the spec `onnx:<model name or folder>`, e.g. `onnx:all-MiniLM-L6-v2`. Tokenizer,
chunking, prompts and revision are the sentence-transformers model's, so only the encoder differs.
Models made of a transformer, a mean or CLS pooling and an optional normalisation are supported (the
usual sentence-transformers layout). Needs `pip install 'semsearch[onnx]'` (onnxruntime, onnx).
"""
from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import threading
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import ModelUnavailable
from .sentence_transformers import SentenceTransformerEmbedder

SPEC_PREFIX = "onnx:"
QUANTISATION = "int8-eager"  # part of the revision: vectors of another export are other vectors
FORWARD_TOKENS = 2048


def cache_dir() -> Path:
    return Path(os.environ.get("SEMSEARCH_ONNX_CACHE", Path.home() / ".cache" / "semsearch" / "onnx"))


@contextmanager
def _quantizer_logs_dropped():
    """onnxruntime.quantization logs its notes through the root logger itself (logging.info), which
    also sets up logging for an application that had not: keep both out of the application's logs."""
    root = logging.getLogger()
    placeholder = logging.NullHandler() if not root.handlers else None
    if placeholder:
        root.addHandler(placeholder)

    def keep(record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR or "onnxruntime" not in record.pathname

    root.addFilter(keep)
    try:
        yield
    finally:
        root.removeFilter(keep)
        if placeholder:
            root.removeHandler(placeholder)


class OnnxEmbedder:
    """A sentence-transformers model run by ONNX Runtime, int8."""

    def __init__(self, spec: str):
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise ModelUnavailable("onnxruntime is not installed: pip install 'semsearch[onnx]'") from exc
        self.base = SentenceTransformerEmbedder(spec[len(SPEC_PREFIX):])
        modules = {type(m).__name__: m for m in self.base.model}
        if set(modules) - {"Transformer", "Pooling", "Normalize"} or "Pooling" not in modules:
            raise ModelUnavailable(f"{spec}: the ONNX embedder runs models made of Transformer, Pooling and Normalize "
                                   f"modules; this one has {', '.join(modules)}")
        self.pooling = modules["Pooling"].get_config_dict().get("pooling_mode", "mean")
        if self.pooling not in ("mean", "cls"):
            raise ModelUnavailable(f"{spec}: the ONNX embedder pools by mean or CLS, not {self.pooling}")
        self.normalize = "Normalize" in modules
        self.name = spec
        self.dimensions = self.base.dimensions
        self.revision = f"{self.base.revision}-{QUANTISATION}" if self.base.revision else QUANTISATION
        self.tokenizer = self.base.tokenizer
        self.max_length = int(self.base.model.max_seq_length)
        self.inputs = [n for n in ("input_ids", "attention_mask", "token_type_ids") if n in self.tokenizer(["x"])]
        options = ort.SessionOptions()
        options.intra_op_num_threads = os.cpu_count() or 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(self._model_file()), options, providers=["CPUExecutionProvider"])
        self._lock = threading.Lock()

    def _model_file(self) -> Path:
        """The quantised model, exported on first use (a few seconds) and kept in cache_dir()."""
        key = hashlib.sha256(f"{self.base.name}\0{self.revision}".encode()).hexdigest()[:16]
        path = cache_dir() / f"{key}.onnx"
        if path.exists():
            return path
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=path.parent) as work:
            exported, quantised = Path(work) / "model.onnx", Path(work) / "model-int8.onnx"
            self._export(exported)
            from onnxruntime.quantization import QuantType, quantize_dynamic

            with _quantizer_logs_dropped():
                quantize_dynamic(exported, quantised, weight_type=QuantType.QInt8, per_channel=True,
                                 op_types_to_quantize=["MatMul"],
                                 extra_options={"MatMulConstBOnly": True, "DefaultTensorType": 1})  # (1: float)
            os.replace(quantised, path)  # atomic: another process exporting at once replaces it alike
        return path

    def _export(self, target: Path) -> None:
        import torch

        model = self.base.model[0].auto_model.eval()
        names = self.inputs
        attention = getattr(model.config, "_attn_implementation", None)
        model.config._attn_implementation = "eager"

        class Encoder(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.model = model

            def forward(self, *tensors):
                return self.model(**dict(zip(names, tensors))).last_hidden_state

        sample = self.tokenizer(["an example sentence", "another"], padding=True, return_tensors="pt")
        axes = {n: {0: "batch", 1: "tokens"} for n in names + ["last_hidden_state"]}
        try:
            with warnings.catch_warnings():  # the tracer's notes on shapes it fixes: none holds for dynamic axes here
                warnings.simplefilter("ignore")
                torch.onnx.export(Encoder(), tuple(sample[n] for n in names), str(target), input_names=names,
                                  output_names=["last_hidden_state"], dynamic_axes=axes, opset_version=17, dynamo=False)
        except Exception as exc:
            raise ModelUnavailable(f"{self.name}: could not export the model to ONNX: {exc}") from exc
        finally:
            model.config._attn_implementation = attention  # the torch model keeps serving as it was

    def chunk(self, texts: Sequence[str], chunk_tokens: int | None, overlap: int) -> list[list[str]]:
        return self.base.chunk(texts, chunk_tokens, overlap)

    def encode(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """Documents, after the model's "document" prompt if its configuration has one."""
        return self._encode(self._prompted("document", texts), batch_size)

    def encode_query(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """Queries, after the model's "query" prompt if its configuration has one."""
        return self._encode(self._prompted("query", texts), batch_size)

    def _prompted(self, kind: str, texts: Sequence[str]) -> list[str]:
        prompt = (getattr(self.base.model, "prompts", None) or {}).get(kind, "")
        return [prompt + t for t in texts] if prompt else list(texts)

    def _encode(self, texts: list[str], batch_size: int) -> np.ndarray:
        """In passes of similar length (less padding), of at most batch_size rows and FORWARD_TOKENS tokens."""
        out = np.empty((len(texts), self.dimensions), dtype=np.float32)
        lengths = [len(ids) for ids in self.tokenizer(texts, truncation=True, max_length=self.max_length)["input_ids"]]
        order = sorted(range(len(texts)), key=lengths.__getitem__)
        passes, start = [], 0
        while start < len(order):
            rows = order[start:start + batch_size]
            while len(rows) > 1 and len(rows) * lengths[rows[-1]] > FORWARD_TOKENS:
                rows = rows[:max(1, FORWARD_TOKENS // lengths[rows[-1]])]
            passes.append(rows)
            start += len(rows)
        with self._lock:
            for rows in passes:
                tokens = self.tokenizer([texts[i] for i in rows], padding=True, truncation=True,
                                        max_length=self.max_length, return_tensors="np")
                hidden = self.session.run(None, {n: tokens[n].astype(np.int64) for n in self.inputs})[0]
                if self.pooling == "cls":
                    vectors = hidden[:, 0]
                else:
                    mask = tokens["attention_mask"][..., None].astype(np.float32)
                    vectors = (hidden * mask).sum(1) / np.maximum(mask.sum(1), 1e-9)
                if self.normalize:
                    vectors = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
                out[rows] = vectors
        return out
