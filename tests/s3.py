"""A real S3 server for the tests: moto's standalone server on 127.0.0.1, one per session.

Each test gets a bucket of its own (``S3Server.bucket``). Without moto the tests that need it
are skipped with the reason, unless CI=true or REQUIRE_S3=1, where they fail instead (CI
installs requirements-dev.txt, which has it).
"""

from __future__ import annotations

import os
import uuid
from typing import Any

import pytest

# The credentials every test client and service uses (moto accepts any).
CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def unavailable(reason: str) -> None:
    """Skip (or, in CI or with REQUIRE_S3=1, fail) a test that needs the S3 server."""
    message = f"S3 tests not run: {reason}"
    if os.environ.get("CI") == "true" or os.environ.get("REQUIRE_S3") == "1":
        pytest.fail(f"{message} (CI=true or REQUIRE_S3=1)", pytrace=False)
    pytest.skip(message)


class S3Server:
    """moto's S3 server on a free loopback port, in a thread of the test process."""

    def __init__(self) -> None:
        try:
            from moto.server import ThreadedMotoServer
        except ImportError as exc:
            unavailable(f"moto[server] is not installed ({exc}); see requirements-dev.txt")

            raise  # unreachable: unavailable() skips or fails
        from tests.receivers import free_port

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)

    def start(self) -> S3Server:
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop()

    def client(self, endpoint_url: str | None = None) -> Any:
        """A boto3 client of the server (or of a proxy in front of it)."""
        import boto3
        from botocore.config import Config

        return boto3.session.Session(
            aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
            region_name=CREDENTIALS["AWS_DEFAULT_REGION"],
        ).client(
            "s3",
            endpoint_url=endpoint_url or self.url,
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}),
        )

    def bucket(self) -> str:
        """A new, empty bucket."""
        name = f"avatars-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return name

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        """Every object key of a bucket under a prefix, sorted."""
        answer = self.client().list_objects_v2(Bucket=bucket, Prefix=prefix)
        return sorted(entry["Key"] for entry in answer.get("Contents", ()))

    def read(self, bucket: str, key: str) -> bytes:
        """An object's bytes."""
        return self.client().get_object(Bucket=bucket, Key=key)["Body"].read()
