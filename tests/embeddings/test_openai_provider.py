"""FHIR_EMBEDDINGS=openai: the real `openai` client against a local OpenAI-compatible server, end to end."""

import json
import os
import subprocess
import sys

import numpy as np

from tests.embeddings.helpers import chunks, hits, settled
from tests.embeddings.test_semantic_search import ECHO, KNEE, communication
from tests.openai_fake import API_KEY, embedding


def openai_env(fake, **extra: str) -> dict[str, str]:
    return {"FHIR_EMBEDDINGS": "openai", "FHIR_OPENAI_BASE_URL": fake.url, "FHIR_OPENAI_API_KEY": API_KEY,
            "FHIR_EMBEDDINGS_MODEL": "text-embedding-3-small", **extra}


async def test_vectors_come_from_the_configured_server(background_app, openai_fake, db) -> None:
    async with background_app(**openai_env(openai_fake)) as (_, client):
        knee = (await client.post("/fhir/Communication", json=communication("p1", KNEE))).json()["id"]
        echo = (await client.post("/fhir/Communication", json=communication("p1", ECHO))).json()["id"]
        await settled(db, "Communication", knee)
        await settled(db, "Communication", echo)
        assert chunks(db, "Communication", knee) == [(1, "openai:text-embedding-3-small", KNEE, ["p1"])]
        stored = db.execute("SELECT embedding::text FROM embedding_chunk WHERE fhir_id = %s", (knee,)).fetchone()[0]
        assert np.allclose(np.array(json.loads(stored)), embedding(KNEE, 384), atol=1e-6)
        assert all(request["model"] == "text-embedding-3-small" and request["dimensions"] == 384
                   for request in openai_fake.requests)
        assert set(openai_fake.authorizations) == {f"Bearer {API_KEY}"}

        found = await client.get("/fhir/$semantic-search", params={"query": "MRI knee meniscus tear"})
        assert found.status_code == 200 and hits(found.json())[0] == f"Communication/{knee}"
        assert openai_fake.requests[-1]["input"] == ["MRI knee meniscus tear"]
        # The key is never shown: not in the capability statement, not in errors.
        assert API_KEY not in (await client.get("/fhir/metadata")).text


async def test_an_unavailable_server_delays_the_work(background_app, openai_fake, db) -> None:
    # The client tries twice per job run; the job is run again by the worker until the server answers.
    openai_fake.failures[:] = [503, 503, 503]
    async with background_app(**openai_env(openai_fake)) as (_, client):
        knee = (await client.post("/fhir/Communication", json=communication("p1", KNEE))).json()["id"]
        await settled(db, "Communication", knee, seconds=60)
        assert chunks(db, "Communication", knee)[0][1] == "openai:text-embedding-3-small"
        assert len(openai_fake.requests) == 4
        openai_fake.failures[:] = [503, 503]
        response = await client.get("/fhir/$semantic-search", params={"query": "knee"})
        assert response.status_code == 503 and response.json()["resourceType"] == "OperationOutcome"


async def test_a_refused_key_dead_letters_without_showing_the_key(background_app, openai_fake, db) -> None:
    async with background_app(**openai_env(openai_fake, FHIR_OPENAI_API_KEY="sk-wrong-key-123")) as (_, client):
        knee = (await client.post("/fhir/Communication", json=communication("p1", KNEE))).json()["id"]
        await settled(db, "Communication", knee)
        state, error = db.execute("SELECT state, last_error FROM outbox WHERE fhir_id = %s", (knee,)).fetchone()
        assert state == "dead" and "401" in error and "sk-wrong-key-123" not in error
        assert chunks(db, "Communication", knee) == []


async def test_changing_provider_and_reindexing(background_app, openai_fake, db, database_url: str) -> None:
    async with background_app(FHIR_EMBEDDINGS="hashed") as (_, client):
        knee = (await client.post("/fhir/Communication", json=communication("p1", KNEE))).json()["id"]
        await settled(db, "Communication", knee)
    assert chunks(db, "Communication", knee)[0][1] == "hashed-v1-384"

    env = {**os.environ, "FHIR_DATABASE_URL": database_url, **openai_env(openai_fake)}
    done = subprocess.run([sys.executable, "-m", "fhir_server.cli", "embeddings", "reindex"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "scheduled 1 resources for embedding with openai:text-embedding-3-small"
    async with background_app(**openai_env(openai_fake)) as (_, client):
        # Until the worker is done, the search reads only vectors of the configured model: never a mix.
        await settled(db, "Communication", knee)
        assert chunks(db, "Communication", knee) == [(1, "openai:text-embedding-3-small", KNEE, ["p1"])]
        found = await client.get("/fhir/$semantic-search", params={"query": "knee meniscus"})
        assert hits(found.json()) == [f"Communication/{knee}"]
