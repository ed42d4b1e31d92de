"""A local HTTP server that speaks OpenAI's embeddings API (POST /v1/embeddings), for the real `openai` client.

Its vectors come from a bag of hashed words (SHA-256 buckets), unlike the server's own providers, so a test can
tell which one made a vector. `failures` are HTTP statuses to answer, one per request, before succeeding.
"""

import hashlib
import json
import math
import re
import threading
from http.server import BaseHTTPRequestHandler

from tests.local_http import LocalAPI

API_KEY = "sk-test-embeddings-key"


def embedding(text: str, dimensions: int) -> list[float]:
    vector = [0.0] * dimensions
    for word in re.findall(r"[a-z0-9]+", text.lower()):
        digest = hashlib.sha256(word.encode()).digest()
        vector[int.from_bytes(digest[:4], "big") % dimensions] += 1.0 if digest[4] & 1 else -1.0
    norm = math.sqrt(sum(value * value for value in vector)) or 1.0
    return [value / norm for value in vector]


class FakeOpenAI(LocalAPI):
    path_prefix = "/v1"

    def __init__(self) -> None:
        self.requests: list[dict] = []
        self.authorizations: list[str | None] = []
        self.failures: list[int] = []
        self._lock = threading.Lock()
        super().__init__()

    def reset(self) -> None:
        with self._lock:
            self.requests.clear()
            self.authorizations.clear()
            self.failures.clear()

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        body = json.loads(handler.rfile.read(int(handler.headers.get("Content-Length") or 0)))
        with self._lock:
            self.authorizations.append(handler.headers.get("Authorization"))
            failure = self.failures.pop(0) if self.failures else None
            self.requests.append(body)
        if handler.path != "/v1/embeddings":
            return self._answer(handler, 404, {"error": {"message": "not found", "type": "invalid_request_error"}})
        if handler.headers.get("Authorization") != f"Bearer {API_KEY}":
            return self._answer(handler, 401, {"error": {"message": "Incorrect API key", "type": "invalid_api_key"}})
        if failure is not None:
            return self._answer(handler, failure, {"error": {"message": "overloaded", "type": "server_error"}})
        inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
        dimensions = body.get("dimensions") or 1536
        self._answer(handler, 200, {
            "object": "list", "model": body["model"],
            "data": [{"object": "embedding", "index": index, "embedding": embedding(text, dimensions)}
                     for index, text in enumerate(inputs)],
            "usage": {"prompt_tokens": sum(len(text.split()) for text in inputs),
                      "total_tokens": sum(len(text.split()) for text in inputs)},
        })
