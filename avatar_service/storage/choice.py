"""The storage of a service, chosen once from its settings: a bucket, or the local folders."""

from __future__ import annotations

import logging
from pathlib import Path

from ..config import Settings
from .base import Storage
from .local import LocalFolders

logger = logging.getLogger(__name__)


def open_storage(settings: Settings, root: Path) -> Storage:
    """Where photos and avatars live, chosen once: a bucket (STORAGE_URL), else the folders."""
    if settings.storage_url:
        from .s3 import S3Objects  # boto3 is imported only when a bucket is used

        files: Storage = S3Objects(
            settings.storage_url,
            endpoint_url=settings.s3_endpoint_url or None,
            connect_timeout=settings.storage_connect_timeout,
            read_timeout=settings.storage_read_timeout,
            max_attempts=settings.storage_max_attempts,
        )
    else:
        upload_dir = (
            settings.upload_dir if settings.upload_dir.is_absolute() else root / settings.upload_dir
        )
        output_dir = (
            settings.output_dir if settings.output_dir.is_absolute() else root / settings.output_dir
        )
        for directory in (upload_dir, output_dir):
            directory.mkdir(parents=True, exist_ok=True)
        files = LocalFolders(photos=upload_dir, avatars=output_dir)
    logger.info("photos and avatars are kept in %s", files.describe())
    return files
