"""Objects in an S3-compatible store through boto3: streamed in (multipart) and out,
memory bounded by the part size times the transfer's concurrency."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import ClientError

from app.settings import Settings

MISSING_CODES = {"NoSuchKey", "404", "NotFound"}


class ObjectMissing(LookupError):
    """The object is not in the bucket."""


@dataclass(frozen=True)
class Written:
    url: str
    size: int
    sha256: str


def split_url(url: str) -> tuple[str, str]:
    """("bucket", "key/prefix") of an s3:// URL."""
    parsed = urlparse(url)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise ValueError(f"{url!r} is not an s3://bucket/key URL")
    return parsed.netloc, parsed.path.lstrip("/")


class _HashingReader:
    """A read()-able view of a byte iterator that hashes what the transfer reads."""

    def __init__(self, stream: Iterable[bytes]) -> None:
        self._it = iter(stream)
        self._buffer = bytearray()
        self.digest = hashlib.sha256()
        self.size = 0

    def read(self, n: int = -1) -> bytes:
        while n < 0 or len(self._buffer) < n:
            piece = next(self._it, None)
            if piece is None:
                break
            self._buffer += piece
        cut = len(self._buffer) if n < 0 else min(n, len(self._buffer))
        out = bytes(self._buffer[:cut])
        del self._buffer[:cut]
        self.digest.update(out)
        self.size += len(out)
        return out


class S3Objects:
    """The bucket and prefix of TRAINERY_ARTIFACT_URL, and the clients to reach it."""

    def __init__(self, settings: Settings) -> None:
        self.bucket, self.prefix = split_url(settings.artifact_url)
        self.prefix = self.prefix.strip("/")
        # Path-style addressing: what MinIO, SeaweedFS and Ceph answer without DNS setup;
        # SigV4 everywhere (boto3 would presign with SigV2, which stores reject with
        # response-header overrides).
        config = Config(signature_version="s3v4", s3={"addressing_style": "path"},
                        retries={"mode": "standard"})
        self.client = boto3.client("s3", endpoint_url=settings.s3_endpoint_url or None,
                                   config=config)
        public = settings.s3_public_endpoint_url or settings.s3_endpoint_url or None
        self._signer = boto3.client("s3", endpoint_url=public, config=config)
        self.part_bytes = settings.s3_part_bytes
        self.presign_ttl_s = settings.s3_presign_ttl_s
        self._transfer = TransferConfig(
            multipart_threshold=settings.s3_part_bytes, multipart_chunksize=settings.s3_part_bytes,
            max_concurrency=settings.s3_max_concurrency, use_threads=True)
        # Parts read ahead of the uploads (s3transfer's knob, not in boto3's signature):
        # the default 10 would hold 10 parts of a stream; as many as are in flight do.
        self._transfer.max_in_memory_upload_chunks = settings.s3_max_concurrency

    def url_for(self, name: str) -> str:
        """The s3:// URL an object called name gets under the prefix."""
        key = f"{self.prefix}/{name}" if self.prefix else name
        return f"s3://{self.bucket}/{key}"

    def put_stream(self, url: str, stream: Iterable[bytes]) -> Written:
        """Upload a byte stream (multipart beyond one part); its size and sha256."""
        bucket, key = split_url(url)
        reader = _HashingReader(stream)
        self.client.upload_fileobj(reader, bucket, key, Config=self._transfer)
        return Written(url, reader.size, reader.digest.hexdigest())

    def put_bytes(self, url: str, data: bytes) -> Written:
        """Upload a small payload in one request."""
        bucket, key = split_url(url)
        self.client.put_object(Bucket=bucket, Key=key, Body=data)
        return Written(url, len(data), hashlib.sha256(data).hexdigest())

    def iter_object(self, url: str, chunk_bytes: int) -> Iterator[bytes]:
        """The object's bytes in pieces of chunk_bytes."""
        bucket, key = split_url(url)
        try:
            body = self.client.get_object(Bucket=bucket, Key=key)["Body"]
        except ClientError as exc:
            if _code(exc) in MISSING_CODES:
                raise ObjectMissing(url) from exc
            raise
        try:
            yield from body.iter_chunks(chunk_bytes)
        finally:
            body.close()

    def delete(self, urls: Iterable[str]) -> None:
        """Delete objects (absent ones are no error), a thousand per request."""
        by_bucket: dict[str, list[str]] = {}
        for url in urls:
            bucket, key = split_url(url)
            by_bucket.setdefault(bucket, []).append(key)
        for bucket, keys in by_bucket.items():
            for i in range(0, len(keys), 1000):
                batch = [{"Key": k} for k in keys[i : i + 1000]]
                self.client.delete_objects(Bucket=bucket, Delete={"Objects": batch, "Quiet": True})

    def presign(self, url: str, *, filename: str, media_type: str) -> str:
        """A GET URL valid presign_ttl_s that names the download like the API would."""
        bucket, key = split_url(url)
        params: dict[str, Any] = {
            "Bucket": bucket, "Key": key, "ResponseContentType": media_type,
            "ResponseContentDisposition": f'attachment; filename="{filename}"'}
        return str(self._signer.generate_presigned_url(
            "get_object", Params=params, ExpiresIn=self.presign_ttl_s))

    def list_urls(self) -> Iterator[str]:
        """Every object under the prefix (the orphan sweep and the tests compare it with SQL)."""
        prefix = f"{self.prefix}/" if self.prefix else ""
        for page in self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=prefix):
            for item in page.get("Contents", []):
                yield f"s3://{self.bucket}/{item['Key']}"


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))
