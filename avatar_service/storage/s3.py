"""Photos and avatars in an S3-compatible bucket (AWS S3, MinIO, Cloudflare R2): ``STORAGE_URL``.

``s3://BUCKET/PREFIX`` keeps photos and face records under ``PREFIX/photos/`` and avatars
under ``PREFIX/avatars/``. boto3 finds the credentials by the standard chain (the
``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY`` variables, ``AWS_PROFILE``, the shared files,
an instance or task role); ``S3_ENDPOINT_URL`` names a store other than AWS.

Every call has a connect and a read timeout and a bounded number of attempts. An object appears
whole or not at all: small ones are one PUT; a photo is written to a temporary local file, then
sent by boto3's managed upload (multipart when large; a failed multipart upload is aborted, so
nothing is left). A missing object raises ``FileNotFoundError``; anything else that fails
raises ``StorageUnavailable`` (503 ``storage_unavailable``).
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import urlsplit

import boto3
from boto3.exceptions import Boto3Error
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from ..errors import StorageUnavailable
from .base import Area, Download, StoredFile, check_name, content_type_of

logger = logging.getLogger(__name__)

# The codes S3 answers for an object (or bucket listing entry) that is not there.
_MISSING = frozenset({"404", "NoSuchKey", "NotFound"})
# Managed uploads: one PUT up to 16 MiB, above it parts of 16 MiB, a few at a time.
TRANSFER = TransferConfig(
    multipart_threshold=16 * 1024 * 1024,
    multipart_chunksize=16 * 1024 * 1024,
    max_concurrency=4,
)
# What a read of an object holds in memory at a time while it streams.
STREAM_CHUNK = 64 * 1024


def parse_storage_url(url: str) -> tuple[str, str]:
    """The bucket and key prefix ("" or ending in "/") of ``s3://BUCKET/PREFIX``."""
    parts = urlsplit(url)
    if parts.scheme != "s3" or not parts.netloc or parts.query or parts.fragment:
        raise ValueError(f"{url!r} is not s3://BUCKET or s3://BUCKET/PREFIX")
    prefix = parts.path.strip("/")
    return parts.netloc, f"{prefix}/" if prefix else ""


class S3Objects:
    """One bucket (and prefix) of an S3-compatible store."""

    kind = "s3"

    def __init__(
        self,
        url: str,
        *,
        endpoint_url: str | None = None,
        connect_timeout: float = 5.0,
        read_timeout: float = 30.0,
        max_attempts: int = 3,
    ) -> None:
        self.url = url
        self.bucket, self.prefix = parse_storage_url(url)
        self.endpoint_url = endpoint_url or None
        config = Config(
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            retries={"max_attempts": max_attempts, "mode": "standard"},
            signature_version="s3v4",
            # MinIO and most self-hosted stores answer on one host name: buckets in the path.
            s3={"addressing_style": "path" if self.endpoint_url else "auto"},
        )
        self.client: Any = boto3.session.Session().client(
            "s3", endpoint_url=self.endpoint_url, config=config
        )

    def key(self, area: Area, name: str) -> str:
        """The object key of a stored name."""
        return f"{self.prefix}{area}/{check_name(name)}"

    @contextmanager
    def publish(self, area: Area, name: str) -> Iterator[BinaryIO]:
        """A temporary local file, uploaded whole (managed upload) when the block ends."""
        key = self.key(area, name)
        with tempfile.TemporaryFile(prefix="avatar-service-", suffix=".part") as handle:
            yield handle
            handle.flush()
            handle.seek(0)
            with self._answers("upload", key):
                self.client.upload_fileobj(
                    handle,
                    self.bucket,
                    key,
                    ExtraArgs={"ContentType": content_type_of(name)},
                    Config=TRANSFER,
                )

    def write(self, area: Area, name: str, data: bytes) -> None:
        """One PUT: the object appears whole or not at all."""
        key = self.key(area, name)
        with self._answers("put", key):
            self.client.put_object(
                Bucket=self.bucket, Key=key, Body=data, ContentType=content_type_of(name)
            )

    def read(self, area: Area, name: str) -> bytes:
        """The object's bytes."""
        key = self.key(area, name)
        with self._answers("get", key):
            body = self.client.get_object(Bucket=self.bucket, Key=key)["Body"]
            try:
                return bytes(body.read())
            finally:
                body.close()

    @contextmanager
    def local_copy(self, area: Area, name: str) -> Iterator[Path]:
        """The object downloaded (streamed) to a temporary file, removed after the block."""
        key = self.key(area, name)
        suffix = Path(name).suffix
        with tempfile.NamedTemporaryFile(prefix="avatar-service-", suffix=suffix) as handle:
            with self._answers("download", key):
                self.client.download_fileobj(self.bucket, key, handle, Config=TRANSFER)
            handle.flush()
            yield Path(handle.name)

    def exists(self, area: Area, name: str) -> bool:
        """A HEAD of the object."""
        key = self.key(area, name)
        try:
            with self._answers("head", key):
                self.client.head_object(Bucket=self.bucket, Key=key)
        except FileNotFoundError:
            return False
        return True

    def open(self, area: Area, name: str) -> Download:
        """The object's body, opened to be streamed (read a chunk at a time)."""
        key = self.key(area, name)
        with self._answers("get", key):
            answer = self.client.get_object(Bucket=self.bucket, Key=key)
        return Download(
            name=name,
            size=answer.get("ContentLength"),
            modified=answer["LastModified"].timestamp() if "LastModified" in answer else None,
            etag=str(answer.get("ETag", "")).strip('"') or None,
            body=answer["Body"],
        )

    def link(self, area: Area, name: str, *, expires: float) -> str | None:
        """A presigned GET of the object, valid ``expires`` seconds (signed here, no call)."""
        key = self.key(area, name)
        with self._answers("presign", key):
            url = self.client.generate_presigned_url(
                "get_object",
                Params={"Bucket": self.bucket, "Key": key},
                ExpiresIn=max(1, int(expires)),
            )
        return str(url)

    def listing(self, area: Area) -> Iterator[StoredFile]:
        """Every object under the area's prefix (a page of 1,000 at a time)."""
        start = f"{self.prefix}{area}/"
        with self._answers("list", start):
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=start
            )
            for page in pages:
                for entry in page.get("Contents", ()):
                    name = entry["Key"][len(start) :]
                    if name and "/" not in name and not name.startswith("."):
                        yield StoredFile(name, entry["LastModified"].timestamp())

    def delete(self, area: Area, name: str) -> bool:
        """DELETE the object (S3 answers the same whether it was there or not: True)."""
        key = self.key(area, name)
        with self._answers("delete", key):
            self.client.delete_object(Bucket=self.bucket, Key=key)
        return True

    def describe(self) -> str:
        """The bucket, prefix and endpoint."""
        return f"{self.url} at {self.endpoint_url or 'AWS S3'}"

    @contextmanager
    def _answers(self, operation: str, key: str) -> Iterator[None]:
        """Turn boto3's errors into FileNotFoundError (no such object) or StorageUnavailable."""
        try:
            yield
        except ClientError as exc:
            error = exc.response.get("Error", {})
            code = str(error.get("Code", ""))
            if code in _MISSING:
                raise FileNotFoundError(f"s3://{self.bucket}/{key}") from None
            raise self._unavailable(operation, key, f"{code}: {error.get('Message', '')}") from exc
        except (BotoCoreError, Boto3Error) as exc:
            cause = exc.__cause__ if isinstance(exc.__cause__, ClientError) else None
            if cause is not None and str(cause.response.get("Error", {}).get("Code")) in _MISSING:
                raise FileNotFoundError(f"s3://{self.bucket}/{key}") from None
            raise self._unavailable(operation, key, str(exc)) from exc

    def _unavailable(self, operation: str, key: str, reason: str) -> StorageUnavailable:
        logger.error("storage %s of %s failed: %s", operation, key, reason)
        return StorageUnavailable(
            "the photo and avatar storage does not answer; try again shortly",
            details={"operation": operation, "reason": reason[:300]},
        )
