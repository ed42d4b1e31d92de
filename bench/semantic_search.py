"""Benchmark of $semantic-search: p50/p95 latency over HTTP at 100,000 chunks (HNSW), and embedding throughput.

Starts an embedded PostgreSQL in a temporary directory, migrates it, writes the chunks straight into
embedding_chunk (texts from clinical sentence templates; deterministic vectors: the built-in provider's
vector of each template plus seeded noise), builds the indexes, then runs `fhir-server serve` on a loopback
port and times sequential GET [base]/$semantic-search requests (with and without a `patient` filter).

    python bench/semantic_search.py [--chunks 100000] [--requests 300]
"""

import argparse
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import psycopg
from pgvector.psycopg import register_vector

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from fhir_server.embeddings.hashed import HashedProvider  # noqa: E402
from fhir_server.storage.database import migrate  # noqa: E402
from fhir_server.storage.embedded import EmbeddedPostgres  # noqa: E402

DIMENSIONS = 384
SUBJECTS = ["left knee", "right shoulder", "lower back", "chest", "abdomen", "right hip", "neck", "left ankle",
            "heart", "lungs", "kidneys", "thyroid", "skin of both arms", "right eye", "both ears", "liver"]
FINDINGS = ["MRI shows a small tear", "x-ray shows no fracture", "ultrasound is normal", "pain for two weeks",
            "swelling after a fall", "infection treated with antibiotics", "follow up in six weeks",
            "referred to the specialist clinic", "blood tests are within normal limits", "symptoms have improved",
            "new medication started", "physiotherapy advised", "CT scan requested", "biopsy results benign"]
QUERIES = ["knee MRI letter", "shoulder x-ray fracture", "chest infection antibiotics", "back pain physiotherapy",
           "thyroid blood tests", "kidney ultrasound", "skin biopsy result", "eye clinic referral"]


def templates() -> list[str]:
    return [f"The {subject}: {finding}." for subject in SUBJECTS for finding in FINDINGS]


def fill(url: str, chunks: int, per_resource: int = 5) -> None:
    provider = HashedProvider(DIMENSIONS)
    texts = templates()
    started = time.perf_counter()
    base_vectors = provider.embed(texts)
    rate = len(texts) / (time.perf_counter() - started)
    print(f"embedding throughput (built-in provider, one short sentence each): {rate:,.0f} texts/s")
    rng = np.random.default_rng(7)
    random.seed(7)
    resources = chunks // per_resource
    with psycopg.connect(url, autocommit=True) as conn:
        register_vector(conn)
        conn.execute("DROP INDEX embedding_chunk_vector")
        conn.execute(
            "INSERT INTO resource (resource_type, fhir_id, version_id, last_updated, content) "
            "SELECT 'Communication', 'c' || n, 1, now(), convert_to(jsonb_build_object('resourceType', 'Communication', "
            "'id', 'c' || n, 'status', 'completed', 'subject', jsonb_build_object('reference', 'Patient/p' || (n %% 1000)))::text, 'UTF8') "
            "FROM generate_series(1, %s) AS n", (resources,))
        conn.execute(
            "INSERT INTO search_reference (resource_id, resource_type, param, target_type, target_id) "
            "SELECT id, 'Communication', 'patient', 'Patient', 'p' || (substr(fhir_id, 2)::int % 1000) "
            "FROM resource WHERE resource_type = 'Communication'")
        ids = [row[0] for row in conn.execute("SELECT id, fhir_id FROM resource ORDER BY id").fetchall()]
        started = time.perf_counter()
        with conn.cursor().copy("COPY embedding_chunk (resource_id, resource_type, fhir_id, version_id, chunk_index, "
                                "model, patients, text, embedding) FROM STDIN WITH (FORMAT BINARY)") as copy:
            copy.set_types(["int8", "text", "text", "int4", "int4", "text", "text[]", "text", "vector"])
            for index in range(chunks):
                resource = index // per_resource
                choice = random.randrange(len(texts))
                vector = base_vectors[choice] + rng.normal(0, 0.02, DIMENSIONS).astype(np.float32)
                copy.write_row((ids[resource], "Communication", f"c{resource + 1}", 1, index % per_resource,
                                provider.model, [f"p{(resource + 1) % 1000}"], texts[choice],
                                vector / np.linalg.norm(vector)))
        print(f"copied {chunks:,} chunks in {time.perf_counter() - started:.1f} s")
        started = time.perf_counter()
        conn.execute("SET maintenance_work_mem = '1GB'")
        conn.execute("CREATE INDEX embedding_chunk_vector ON embedding_chunk USING hnsw (embedding vector_cosine_ops)")
        conn.execute("VACUUM ANALYZE")
        print(f"HNSW index built in {time.perf_counter() - started:.1f} s")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def measure(base: str, requests: int, extra: dict[str, str]) -> list[float]:
    times = []
    with httpx.Client(base_url=base, timeout=30) as client:
        for index in range(requests + 20):
            started = time.perf_counter()
            response = client.get("/$semantic-search", params={"query": QUERIES[index % len(QUERIES)], "_count": "10",
                                                                **extra})
            elapsed = (time.perf_counter() - started) * 1000
            assert response.status_code == 200, response.text
            if index >= 20:  # warm-up
                times.append(elapsed)
    return times


def report(label: str, times: list[float]) -> None:
    times = sorted(times)
    p95 = times[int(len(times) * 0.95) - 1]
    print(f"{label}: n={len(times)} p50={statistics.median(times):.1f} ms p95={p95:.1f} ms max={times[-1]:.1f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", type=int, default=100_000)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--database-url", help="a database this script filled before (skips the fill)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-semantic-") as directory:
        embedded = None if args.database_url else EmbeddedPostgres(Path(directory) / "pg")
        url = args.database_url or embedded.start()
        try:
            if embedded is not None:
                migrate(url)
                fill(url, args.chunks)
            port = free_port()
            env = {**os.environ, "FHIR_DATABASE_URL": url, "FHIR_BACKGROUND": "off", "FHIR_EMBEDDINGS": "hashed"}
            server = subprocess.Popen([sys.executable, "-m", "fhir_server.cli", "serve", "--host", "127.0.0.1",
                                       "--port", str(port)], env=env, cwd=REPO, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.STDOUT)
            base = f"http://127.0.0.1:{port}/fhir"
            try:
                deadline = time.monotonic() + 60
                while True:
                    try:
                        if httpx.get(base + "/metadata", timeout=1).status_code == 200:
                            break
                    except httpx.TransportError:
                        pass
                    if time.monotonic() > deadline or server.poll() is not None:
                        raise RuntimeError("the server did not start")
                    time.sleep(0.2)
                report(f"$semantic-search at {args.chunks:,} chunks", measure(base, args.requests, {}))
                report("  with patient=Patient/p42", measure(base, args.requests, {"patient": "Patient/p42"}))
                report("  with _type=Communication", measure(base, args.requests, {"_type": "Communication"}))
            finally:
                server.terminate()
                server.wait(10)
        finally:
            if embedded is not None:
                embedded.stop()


if __name__ == "__main__":
    main()
