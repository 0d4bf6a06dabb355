"""Job storage: one small interface (``Storage``), a local-directory backend and an S3-compatible one."""

from __future__ import annotations

from urllib.parse import unquote, urlsplit

from ..errors import ConfigError
from .base import ObjectInfo, Storage
from .local import LocalStorage

__all__ = ["ObjectInfo", "Storage", "LocalStorage", "open_storage"]


def open_storage(
    url: str,
    *,
    endpoint_url: str = "",
    region: str = "us-east-1",
    access_key_id: str = "",
    secret_access_key: str = "",
) -> Storage:
    """Open the backend ``url`` names: ``file:///path`` or ``s3://bucket[/prefix]``."""
    parts = urlsplit(url)
    if parts.scheme == "file":
        return LocalStorage(unquote(parts.path))
    if parts.scheme == "s3":
        from .s3 import S3Storage  # boto3 is imported only by nodes that use S3

        if not parts.netloc:
            raise ConfigError("BURROW_STORAGE_URL", f"{url!r} names no bucket (expected s3://bucket/prefix)")
        return S3Storage(
            bucket=parts.netloc,
            prefix=parts.path.strip("/"),
            endpoint_url=endpoint_url or None,
            region=region,
            access_key_id=access_key_id or None,
            secret_access_key=secret_access_key or None,
        )
    raise ConfigError("BURROW_STORAGE_URL", f"unsupported scheme {parts.scheme!r}; use file:// or s3://")
