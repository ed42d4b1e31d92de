"""Document bytes per tenant: each tenant's objects live in its own area of the S3 bucket or directory."""

import io
import secrets

import pytest

from fhir_server.documents.store import object_store
from fhir_server.settings import Settings
from fhir_server.storage import tenants
from tests.documents.conftest import s3_client

SHA = "ab" * 32


@pytest.mark.parametrize("kind", ["filesystem", "s3"])
def test_each_tenant_has_its_own_area_of_the_store(kind: str, request: pytest.FixtureRequest, tmp_path) -> None:
    if kind == "s3":
        endpoint = request.getfixturevalue("moto_endpoint")
        bucket = f"docs-{secrets.token_hex(6)}"
        s3_client(endpoint).create_bucket(Bucket=bucket)
        settings = Settings(s3_bucket=bucket, s3_endpoint_url=endpoint, s3_access_key_id="testing",
                            s3_secret_access_key="testing", s3_region="us-east-1")
    else:
        settings = Settings(document_dir=tmp_path)

    def store_of(tenant: tenants.Tenant | None):
        selected = tenants.current.set(tenant)
        try:
            return object_store(settings)
        finally:
            tenants.current.reset(selected)

    alpha, beta = store_of(tenants.Tenant("alpha", "tenant_91")), store_of(tenants.Tenant("beta", "tenant_92"))
    alpha.put(SHA, io.BytesIO(b"alpha's bytes"), "text/plain")
    assert alpha.exists(SHA) and b"".join(alpha.open(SHA)) == b"alpha's bytes"
    assert not beta.exists(SHA) and [sha for sha, _ in beta.list()] == []
    with pytest.raises(FileNotFoundError):
        b"".join(beta.open(SHA))
    assert not store_of(None).exists(SHA)
    if kind == "s3":
        keys = [item["Key"] for item in s3_client(settings.s3_endpoint_url).list_objects_v2(Bucket=bucket)["Contents"]]
        assert keys == [f"tenant_91/sha256/{SHA}"]
    else:
        assert [path.relative_to(tmp_path).parts[:2] for path in tmp_path.rglob("*") if path.is_file()] == [
            ("tenant_91", "sha256")]
