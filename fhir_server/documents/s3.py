"""The object store on S3 or any S3-compatible service (MinIO, Ceph, ...), through boto3."""

from collections.abc import Iterator
from datetime import datetime
from typing import BinaryIO
from urllib.parse import quote

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import ClientError

from fhir_server.documents.store import CHUNK_BYTES

PREFIX = "sha256/"
# upload_fileobj switches to a multipart upload above this size, so no part needs to be held whole.
TRANSFER = TransferConfig(multipart_threshold=8 * 1024 * 1024, multipart_chunksize=8 * 1024 * 1024)


class S3Store:
    """Objects at s3://bucket/[prefix]sha256/<hex> (prefix: a tenant's area), written with server-side
    encryption (SSE-S3, AES256) requested."""

    def __init__(self, bucket: str, endpoint_url: str | None, region: str | None, access_key_id: str | None,
                 secret_access_key: str | None, prefix: str = "") -> None:
        self.bucket = bucket
        self.prefix = prefix + PREFIX
        self.client = boto3.session.Session().client(
            "s3", endpoint_url=endpoint_url, region_name=region, aws_access_key_id=access_key_id,
            aws_secret_access_key=secret_access_key, config=Config(signature_version="s3v4"))

    def exists(self, sha256: str) -> bool:
        try:
            self.client.head_object(Bucket=self.bucket, Key=self.prefix + sha256)
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise
        return True

    def put(self, sha256: str, file: BinaryIO, content_type: str) -> None:
        self.client.upload_fileobj(file, self.bucket, self.prefix + sha256, Config=TRANSFER, ExtraArgs={
            "ContentType": content_type, "ServerSideEncryption": "AES256"})

    def open(self, sha256: str) -> Iterator[bytes]:
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=self.prefix + sha256)["Body"]
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") in ("404", "NoSuchKey"):
                raise FileNotFoundError(sha256) from None
            raise
        return self._chunks(body)

    @staticmethod
    def _chunks(body) -> Iterator[bytes]:
        try:
            yield from body.iter_chunks(CHUNK_BYTES)
        finally:
            body.close()

    def delete(self, sha256: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self.prefix + sha256)

    def list(self) -> Iterator[tuple[str, datetime]]:
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self.prefix):
            for item in page.get("Contents", ()):
                yield item["Key"][len(self.prefix):], item["LastModified"]

    def presigned_url(self, sha256: str, content_type: str, filename: str | None, seconds: int) -> str:
        params = {"Bucket": self.bucket, "Key": PREFIX + sha256, "ResponseContentType": content_type}
        if filename:
            params["ResponseContentDisposition"] = f"attachment; filename*=UTF-8''{quote(filename, safe='')}"
        return self.client.generate_presigned_url("get_object", Params=params, ExpiresIn=seconds)

