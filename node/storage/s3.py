"""An S3-compatible backend (Cloudflare R2, MinIO, AWS) through boto3."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

from ..errors import ObjectNotFound, PreconditionFailed, StorageError, StorageUnavailable
from .base import ObjectInfo, Storage
from .s3_clock import EndpointClock

_NOT_FOUND = {"NoSuchKey", "404", "NotFound"}
#: Answers no retry mends: the bucket is not there, or the credentials are refused.
_REFUSED = {
    "NoSuchBucket",
    "InvalidBucketName",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "InvalidToken",
    "ExpiredToken",
    "AuthorizationHeaderMalformed",
}
#: What a node reads at start to see that its store answers (no job has this key).
PROBE_KEY = "burrow/probe"
# R2 and AWS answer a lost conditional write with 412; a concurrent conditional write in flight gives 409.
_PRECONDITION = {"PreconditionFailed", "412", "ConditionalRequestConflict", "409"}


class S3Storage(Storage):
    """Objects live in ``bucket`` under ``prefix``.

    Large files go through boto3's transfer manager (multipart above ``multipart_threshold``); conditional
    writes use S3's ``If-Match`` / ``If-None-Match`` headers, which R2, AWS and MinIO honour.

    Parameters:
        bucket: Bucket name.
        prefix: Key prefix inside the bucket (may be empty).
        endpoint_url: The S3 endpoint (R2: ``https://<account>.r2.cloudflarestorage.com``); ``None`` for AWS.
        region: Region name (``auto`` for R2).
        access_key_id: Access key; ``None`` uses boto3's credential chain (environment, profile, role).
        secret_access_key: Secret key.
        multipart_threshold: Files larger than this many bytes are uploaded in parts.
    """

    def __init__(
        self,
        *,
        bucket: str,
        prefix: str = "",
        endpoint_url: str | None = None,
        region: str = "us-east-1",
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
        multipart_threshold: int = 64 * 1024 * 1024,
    ) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.endpoint_url = endpoint_url
        self._client_args = {
            "endpoint_url": endpoint_url,
            "region_name": region,
            "aws_access_key_id": access_key_id,
            "aws_secret_access_key": secret_access_key,
        }
        #: The endpoint's time: a node whose clock is off signs with it and judges job expiry by it.
        self.clock = EndpointClock()
        self.client = self._new_client(
            Config(retries={"max_attempts": 5, "mode": "standard"}, connect_timeout=5, read_timeout=60)
        )
        self.transfer_config = TransferConfig(multipart_threshold=multipart_threshold, multipart_chunksize=16 << 20)

    def _new_client(self, config: Config):
        client = boto3.client("s3", **self._client_args, config=config)
        self.clock.attach(client)
        return client

    def now(self) -> float:
        return self.clock.now()

    def __repr__(self) -> str:
        return f"S3Storage(bucket={self.bucket!r}, prefix={self.prefix!r}, endpoint_url={self.endpoint_url!r})"

    def check_usable(self) -> str | None:
        """One quick read of a key no job has, as a node does at start. Raises ``StorageError`` for an answer
        no retry mends (the bucket does not exist, the credentials are refused, there are none): every job
        would otherwise retry its record writes against a store that never works. An endpoint that does not
        answer now passes: the workers ride out an outage. Returns a warning to log, or ``None``."""
        probe = self._new_client(Config(retries={"max_attempts": 1}, connect_timeout=3, read_timeout=10))
        try:
            probe.get_object(Bucket=self.bucket, Key=self._key(PROBE_KEY))
        except ClientError as e:
            code = str(e.response.get("Error", {}).get("Code", ""))
            if code == "NoSuchBucket":
                raise StorageError(
                    f"bucket {self.bucket!r} does not exist at {self.endpoint_url or 'AWS S3'}"
                ) from None
            if code in _REFUSED:
                raise StorageError(f"bucket {self.bucket!r}: the endpoint refuses these credentials ({code})") from None
            if code == "RequestTimeTooSkewed":  # (only if the endpoint's Date did not tell the offset)
                return f"bucket {self.bucket!r} refuses this machine's clock ({code}): set it right (NTP)"
            if code not in _NOT_FOUND:
                return f"bucket {self.bucket!r} answered a test read with {code or 'an error'}: {_one_line(e)}"
        except NoCredentialsError:
            raise StorageError("no S3 credentials (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)") from None
        except BotoCoreError as e:
            where = self.endpoint_url or "AWS S3"
            return f"S3 endpoint {where} does not answer now ({type(e).__name__}); the workers will retry"
        return None

    def _key(self, key: str) -> str:
        self.check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _strip(self, full_key: str) -> str:
        return full_key[len(self.prefix) + 1 :] if self.prefix else full_key

    def _error(self, error: ClientError, key: str) -> StorageError:
        code = str(error.response.get("Error", {}).get("Code", ""))
        if code in _NOT_FOUND:
            return ObjectNotFound(key)
        if code in _PRECONDITION:
            return PreconditionFailed(f"{key!r}: conditional write lost ({code})")
        return StorageUnavailable(f"{key!r}: {_one_line(error)}")

    @contextlib.contextmanager
    def _errors(self, key: str) -> Iterator[None]:
        """Raise what boto3 raises as ``StorageError``: an answer of the endpoint (``ClientError``) by its
        code, and no answer at all (no credentials, endpoint unreachable, timeouts: ``BotoCoreError``)
        naming the endpoint, so callers see one kind of error and a CLI prints one line."""
        try:
            yield
        except ClientError as e:
            raise self._error(e, key) from None
        except NoCredentialsError:
            raise StorageUnavailable(
                f"{key!r}: no S3 credentials (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)"
            ) from None
        except boto3.exceptions.S3UploadFailedError as e:
            raise StorageUnavailable(f"{key!r}: {_one_line(e)}") from None
        except BotoCoreError as e:
            where = self.endpoint_url or "AWS S3"
            raise StorageUnavailable(f"{key!r}: S3 endpoint {where}: {type(e).__name__}: {_one_line(e)}") from None

    def put(self, key: str, data: bytes, *, if_match: str | None = None, if_none_match: bool = False) -> ObjectInfo:
        extra: dict = {}
        if if_match is not None:
            extra["IfMatch"] = f'"{if_match}"'
        if if_none_match:
            extra["IfNoneMatch"] = "*"
        with self._errors(key):
            response = self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data, **extra)
        return ObjectInfo(key=key, etag=response["ETag"].strip('"'), size=len(data))

    def get(self, key: str) -> tuple[bytes, ObjectInfo]:
        with self._errors(key):
            response = self.client.get_object(Bucket=self.bucket, Key=self._key(key))
            data = response["Body"].read()
        return data, ObjectInfo(key=key, etag=response["ETag"].strip('"'), size=len(data))

    def head(self, key: str) -> ObjectInfo | None:
        try:
            with self._errors(key):
                response = self.client.head_object(Bucket=self.bucket, Key=self._key(key))
        except ObjectNotFound:
            return None
        return ObjectInfo(key=key, etag=response["ETag"].strip('"'), size=response["ContentLength"])

    def delete(self, key: str) -> None:
        with self._errors(key):
            self.client.delete_object(Bucket=self.bucket, Key=self._key(key))

    def list(self, prefix: str = "") -> Iterator[str]:
        full_prefix = f"{self.prefix}/{prefix}" if self.prefix else prefix
        paginator = self.client.get_paginator("list_objects_v2")
        with self._errors(prefix):
            for page in paginator.paginate(Bucket=self.bucket, Prefix=full_prefix):
                for item in page.get("Contents", []):
                    yield self._strip(item["Key"])

    def upload_file(self, key: str, path: str | Path) -> ObjectInfo:
        with self._errors(key):
            self.client.upload_file(str(path), self.bucket, self._key(key), Config=self.transfer_config)
        info = self.head(key)
        if info is None:  # pragma: no cover - the upload just succeeded
            raise StorageError(f"{key!r}: uploaded but not found")
        return info

    def download_file(self, key: str, path: str | Path) -> ObjectInfo:
        info = self.head(key)
        if info is None:
            raise ObjectNotFound(key)
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
        os.close(fd)
        try:
            with self._errors(key):
                self.client.download_file(self.bucket, self._key(key), tmp, Config=self.transfer_config)
            os.replace(tmp, target)
        finally:
            Path(tmp).unlink(missing_ok=True)
        return info


def _one_line(error: Exception) -> str:
    """botocore's message on one line (some span several: a CLI error is one line)."""
    return " ".join(str(error).split())
