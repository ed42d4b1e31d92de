"""Object stores for the document tests: a real S3-compatible HTTP endpoint (moto in server mode, tests/conftest.py)
and a directory."""

import secrets
from collections.abc import Iterator
from pathlib import Path

import boto3
import psycopg
import pytest

CREDENTIALS = {"FHIR_S3_ACCESS_KEY_ID": "testing", "FHIR_S3_SECRET_ACCESS_KEY": "testing",
               "FHIR_S3_REGION": "us-east-1"}


def s3_client(endpoint: str):
    return boto3.session.Session().client("s3", endpoint_url=endpoint, region_name="us-east-1",
                                          aws_access_key_id="testing", aws_secret_access_key="testing")


class Store:
    """One store under test: the settings that select it, and a look at what it holds."""

    def __init__(self, kind: str, env: dict[str, str], endpoint: str | None = None) -> None:
        self.kind, self.env, self.endpoint = kind, env, endpoint

    def objects(self) -> list[str]:
        """The SHA-256 of every stored object."""
        if self.kind == "s3":
            listing = s3_client(self.endpoint).list_objects_v2(Bucket=self.env["FHIR_S3_BUCKET"])
            return sorted(item["Key"].removeprefix("sha256/") for item in listing.get("Contents", ()))
        root = Path(self.env["FHIR_DOCUMENT_DIR"]) / "sha256"
        return sorted(path.name for path in root.glob("??/*")) if root.exists() else []


@pytest.fixture(params=["filesystem", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    """Each test runs against the filesystem store and against a fresh bucket on the S3 endpoint."""
    if request.param == "filesystem":
        return Store("filesystem", {"FHIR_DOCUMENT_DIR": str(tmp_path / "documents")})
    endpoint = request.getfixturevalue("moto_endpoint")
    bucket = f"docs-{secrets.token_hex(6)}"
    s3_client(endpoint).create_bucket(Bucket=bucket)
    return Store("s3", {"FHIR_S3_BUCKET": bucket, "FHIR_S3_ENDPOINT_URL": endpoint, **CREDENTIALS}, endpoint)


@pytest.fixture(autouse=True)
def clean_documents(request: pytest.FixtureRequest) -> None:
    if "database_url" in request.fixturenames:
        with psycopg.connect(request.getfixturevalue("database_url"), autocommit=True) as conn:
            conn.execute("TRUNCATE document_object")
