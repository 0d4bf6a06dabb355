"""Job storage: one small interface (``Storage``), a local-directory backend and an S3-compatible one."""

from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, unquote, urlsplit

from ..errors import ConfigError, StorageError
from .base import ObjectInfo, Storage
from .local import SYNC_MODES, LocalStorage

logger = logging.getLogger(__name__)

#: What botocore takes as a bucket name (S3 itself is stricter; R2 and MinIO alike).
BUCKET_NAME = re.compile(r"[a-zA-Z0-9.\-_]{1,255}")

if TYPE_CHECKING:
    from ..settings import Settings

__all__ = ["ObjectInfo", "Storage", "LocalStorage", "open_storage", "storage_from_settings"]


def storage_from_settings(settings: Settings, *, check: bool = False) -> Storage:
    """The backend a node's settings name (``BURROW_STORAGE_URL`` and the S3 variables).

    ``check``: refuse (``ConfigError``) a store that cannot work, as a node does at start: a local one that
    cannot be written, an S3 bucket that does not exist or refuses the credentials (an S3 endpoint that is
    down for a while only logs a warning: the workers ride it out)."""
    storage = open_storage(
        settings.storage_url,
        endpoint_url=settings.s3_endpoint_url,
        region=settings.s3_region,
        access_key_id=settings.s3_access_key_id,
        secret_access_key=settings.s3_secret_access_key,
    )
    if check:
        try:
            probe = getattr(storage, "check_usable", None)  # (S3Storage is imported only when used)
            warning = probe() if probe is not None else None
        except StorageError as e:
            raise ConfigError("BURROW_STORAGE_URL", str(e)) from None
        if warning:
            logger.warning("BURROW_STORAGE_URL: %s", warning)
    return storage


def open_storage(
    url: str,
    *,
    endpoint_url: str = "",
    region: str = "us-east-1",
    access_key_id: str = "",
    secret_access_key: str = "",
) -> Storage:
    """Open the backend ``url`` names: ``file:///path[?sync=full]`` or ``s3://bucket[/prefix]``."""
    parts = urlsplit(url)
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost"):
            # file://relative/path would silently store under /path ("relative" is a host name in a URL)
            raise ConfigError(
                "BURROW_STORAGE_URL",
                f"{url!r} names host {parts.netloc!r}: use file:///absolute/path (three slashes) or file:relative/path",
            )
        options = parse_qs(parts.query)
        unknown = set(options) - {"sync"}
        if unknown:
            raise ConfigError("BURROW_STORAGE_URL", f"unknown option {sorted(unknown)[0]!r} (file:// takes ?sync=)")
        if len(options.get("sync", [])) > 1:
            raise ConfigError("BURROW_STORAGE_URL", f"sync given {len(options['sync'])} times: give it once")
        sync = options.get("sync", ["normal"])[-1]
        if sync not in SYNC_MODES:
            raise ConfigError("BURROW_STORAGE_URL", f"sync={sync!r}: use one of {', '.join(SYNC_MODES)}")
        path = unquote(parts.path)
        if not path.strip("/"):  # file: and file:// (no path), file:/// (the filesystem's root)
            raise ConfigError("BURROW_STORAGE_URL", f"{url!r} names no directory (e.g. file:///var/lib/burrow)")
        return LocalStorage(path, sync=sync)
    if parts.scheme == "s3":
        from .s3 import S3Storage  # boto3 is imported only by nodes that use S3

        if not parts.netloc:
            raise ConfigError("BURROW_STORAGE_URL", f"{url!r} names no bucket (expected s3://bucket/prefix)")
        if not BUCKET_NAME.fullmatch(parts.netloc):  # (botocore's own check: a multi-line error at first use)
            raise ConfigError("BURROW_STORAGE_URL", f"{parts.netloc!r} is not a bucket name (letters, digits, . - _)")
        return S3Storage(
            bucket=parts.netloc,
            prefix=parts.path.strip("/"),
            endpoint_url=endpoint_url or None,
            region=region,
            access_key_id=access_key_id or None,
            secret_access_key=secret_access_key or None,
        )
    raise ConfigError("BURROW_STORAGE_URL", f"unsupported scheme {parts.scheme!r}; use file:// or s3://")
