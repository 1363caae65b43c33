"""A small OpenAI-compatible embeddings server for the tests: POST /v1/embeddings answers with the local
model's vectors, unless the test queued faults first (POST /faults with a JSON list, one per request:
{"status": 429, "retry_after": 1}, {"status": 500}, {"delay": 3} or {"dimensions": 768}).
GET /requests lists what it was asked (time, status, inputs).
Run: python tests/embedding_server.py PORT [--latency SECONDS] [--cache]. --latency: every answer takes
at least that long (a service across a network); --cache: each distinct text is embedded once and then
answered from memory (a GPU box much faster than these cores), so that only the latency remains.
"""
from __future__ import annotations

import argparse
import base64
import json
import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402

from semsearch.embedders import get_embedder  # noqa: E402

model = get_embedder("all-MiniLM-L6-v2")
latency = 0.0
vector_cache: dict[str, list[float]] | None = None
faults: list[dict] = []
requests: list[dict] = []
lock = threading.Lock()


def embed(inputs: list[str]) -> list[list[float]]:
    if vector_cache is None:
        return model.encode(inputs).tolist()
    with lock:
        missing = sorted({t for t in inputs if t not in vector_cache})
    if missing:
        computed = dict(zip(missing, model.encode(missing).tolist()))
        with lock:
            vector_cache.update(computed)
    with lock:
        return [vector_cache[t] for t in inputs]


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):  # quiet
        pass

    def _send(self, status: int, body: dict, headers: dict | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        try:
            self.wfile.write(data)
        except BrokenPipeError:  # the client gave up waiting (the timeout tests)
            pass

    def do_GET(self):
        if self.path == "/requests":
            with lock:
                self._send(200, {"requests": requests})
        else:
            self._send(404, {"error": {"message": "not found"}})

    def do_POST(self):
        started = time.monotonic()
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"null")
        if self.path == "/faults":
            with lock:
                faults.extend(body)
            return self._send(200, {"queued": len(body)})
        if self.path != "/v1/embeddings":
            return self._send(404, {"error": {"message": "not found"}})
        with lock:
            fault = faults.pop(0) if faults else {}
        inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
        status = fault.get("status", 200)
        with lock:
            requests.append({"at": time.time(), "status": status, "inputs": inputs, "fault": fault})
        if "delay" in fault:
            time.sleep(fault["delay"])
        if status != 200:
            headers = {"Retry-After": str(fault["retry_after"])} if "retry_after" in fault else {}
            return self._send(status, {"error": {"message": f"injected {status}", "type": "test"}}, headers)
        vectors = embed(inputs)
        time.sleep(max(0.0, latency - (time.monotonic() - started)))
        if "dimensions" in fault:
            vectors = [(v + [0.0] * fault["dimensions"])[:fault["dimensions"]] for v in vectors]
        if body.get("encoding_format") == "base64":  # as OpenAI's API: little-endian float32, base64
            vectors = [base64.b64encode(np.asarray(v, dtype="<f4").tobytes()).decode() for v in vectors]
        self._send(200, {"object": "list", "model": body["model"],
                         "data": [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)],
                         "usage": {"prompt_tokens": 0, "total_tokens": 0}})


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("port", type=int)
    parser.add_argument("--latency", type=float, default=0.0)
    parser.add_argument("--cache", action="store_true")
    args = parser.parse_args()
    latency = args.latency
    vector_cache = {} if args.cache else None
    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    print("ready", flush=True)
    server.serve_forever()
