"""How a stored file is sent: a local file, an object streamed from the bucket, or a redirect.

A local file goes out with ``send_file`` (ranges, conditional requests). An object of the bucket
is streamed a chunk at a time (memory stays bounded whatever its size), with its length, date
and ETag; with ``STORAGE_PUBLIC_READS`` the answer is instead a 307 to a presigned URL that
reads the object straight from the store for ``STORAGE_LINK_TTL`` seconds.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import BinaryIO

from flask import Response, redirect, request, send_file
from werkzeug.wrappers import Response as BaseResponse

from ..storage.base import Download

CHUNK_BYTES = 64 * 1024


def download_response(download: Download, *, max_age: int) -> BaseResponse:
    """The answer that sends ``download``."""
    if download.link is not None:
        response = redirect(download.link, code=307)
        # The link expires: neither the browser nor a shared cache may keep the redirect.
        response.headers["Cache-Control"] = "no-store"
        return response
    if download.path is not None:
        return send_file(download.path, max_age=max_age)
    assert download.body is not None, "a download has a link, a path or a body"
    response = Response(
        _Chunks(download.body), mimetype=download.content_type, direct_passthrough=True
    )
    if download.size is not None:
        response.content_length = download.size
    if download.modified is not None:
        response.last_modified = download.modified  # type: ignore[assignment]
    if download.etag:
        response.set_etag(download.etag)
    response.cache_control.public = True
    response.cache_control.max_age = max_age
    return response.make_conditional(request)


class _Chunks:
    """A WSGI body that reads an object's stream a chunk at a time and closes it once sent
    (or when the server closes the response unstarted: a 304, a client gone)."""

    def __init__(self, body: BinaryIO) -> None:
        self._body = body

    def __iter__(self) -> Iterator[bytes]:
        while chunk := self._body.read(CHUNK_BYTES):
            yield chunk

    def close(self) -> None:
        self._body.close()
