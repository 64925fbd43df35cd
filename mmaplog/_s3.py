"""Object storage: ``s3://`` URLs, the S3 client, retries, and its errors as mmaplog's.

The only module that imports the S3 client (boto3, the optional extra ``s3``), and
only when a store is opened, so ``import mmaplog`` never needs it. It knows nothing
of the log format: it moves bytes under keys.
"""

from __future__ import annotations

import base64
import hashlib
import os
import random
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

from .exceptions import ConfigError, MissingDependencyError, StorageError

SCHEME = "s3://"
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
# Errors worth a second try: the server is busy, restarting or unreachable.
_TRANSIENT_CODES = {
    "RequestTimeout",
    "RequestTimeoutException",
    "SlowDown",
    "Throttling",
    "ThrottlingException",
    "TooManyRequests",
    "InternalError",
    "ServiceUnavailable",
    "503",
    "500",
    "502",
    "504",
}
_T = TypeVar("_T")


def is_s3_url(text: str) -> bool:
    """Whether ``text`` names object storage (``s3://bucket/prefix``)."""
    return text.startswith(SCHEME)


@dataclass(frozen=True, slots=True)
class S3Url:
    """A bucket and a key prefix without its slashes at either end (may be empty)."""

    bucket: str
    prefix: str

    def key(self, *parts: str) -> str:
        """The key of ``parts`` under the prefix, joined by slashes."""
        return "/".join(p for p in (self.prefix, *parts) if p)

    def __str__(self) -> str:
        return f"{SCHEME}{self.bucket}/{self.prefix}" if self.prefix else f"{SCHEME}{self.bucket}"


def parse_url(url: str) -> S3Url:
    """Split ``s3://bucket[/prefix]``; raises :class:`~mmaplog.ConfigError` when malformed."""
    if not is_s3_url(url):
        raise ConfigError(f"{url!r} is not an s3:// URL (expected s3://BUCKET[/PREFIX])")
    bucket, _, prefix = url[len(SCHEME) :].partition("/")
    if not _BUCKET.match(bucket) or ".." in bucket:
        raise ConfigError(f"{url!r}: {bucket!r} is not a bucket name (3-63 of a-z, 0-9, '.', '-')")
    prefix = prefix.strip("/")
    if "//" in prefix or any(part in (".", "..") for part in prefix.split("/") if prefix):
        raise ConfigError(f"{url!r}: the key prefix has an empty, '.' or '..' part")
    return S3Url(bucket, prefix)


def _import_boto3() -> Any:
    try:
        import boto3  # type: ignore[import-untyped]
        import botocore.config  # type: ignore[import-untyped]
    except ImportError:
        raise MissingDependencyError(
            'the S3 client is not installed: install mmaplog[s3] (pip install "mmaplog[s3]")'
        ) from None
    return boto3, botocore.config


class Store:
    """One bucket, through boto3, with retries and mmaplog's errors.

    Standard AWS configuration applies (``AWS_ENDPOINT_URL``, credentials from the
    environment or ``~/.aws``); ``endpoint_url`` overrides the endpoint. Transient
    failures (connection refused or reset, timeouts, 5xx, throttling) are retried
    with exponential backoff and jitter for up to ``retry_for`` seconds; then, and
    at once for anything else, :class:`~mmaplog.StorageError` is raised.
    """

    def __init__(
        self,
        url: S3Url,
        *,
        endpoint_url: str | None = None,
        retry_for: float = 60.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        boto3, config = _import_boto3()
        import botocore.exceptions  # type: ignore[import-untyped]

        self.url = url
        self.retry_for = retry_for
        self._sleep = sleep
        try:
            self._client = self._make_client(boto3, config, endpoint_url)
        except (botocore.exceptions.BotoCoreError, ValueError) as exc:
            # A profile that does not exist, an endpoint that is not a URL, half of a
            # pair of credentials: the settings are wrong, trying again will not help.
            raise ConfigError(f"{url}: the S3 client cannot be set up: {exc}") from None

    def _make_client(self, boto3: Any, config: Any, endpoint_url: str | None) -> Any:
        session = boto3.session.Session()
        endpoint = (
            endpoint_url
            or os.environ.get("AWS_ENDPOINT_URL_S3")
            or os.environ.get("AWS_ENDPOINT_URL")
        )
        self.endpoint = endpoint
        options: dict[str, Any] = {
            # boto3's own quick retries first; ours (longer, below) ride out outages.
            "retries": {"mode": "standard", "max_attempts": 3},
            "connect_timeout": 5,
            "read_timeout": 30,
            # S3-compatible servers on a plain host:port want path-style addressing.
            "s3": {"addressing_style": "path"} if endpoint else {},
            # Content-MD5 is sent by hand; the newer default checksums (boto3 1.36)
            # are refused by some S3-compatible servers.
            "request_checksum_calculation": "when_required",
        }
        try:
            cfg = config.Config(**options)
        except TypeError:  # botocore before 1.36 has no such option
            del options["request_checksum_calculation"]
            cfg = config.Config(**options)
        return session.client(
            "s3",
            endpoint_url=endpoint or None,
            region_name=session.region_name or "us-east-1",
            config=cfg,
        )

    # -- errors and retries ----------------------------------------------------------

    def _call(self, what: str, fn: Callable[[], _T]) -> _T:
        import botocore.exceptions

        deadline = time.monotonic() + self.retry_for
        delay = 0.2
        while True:
            try:
                return fn()
            except botocore.exceptions.NoCredentialsError:
                raise StorageError(
                    f"{self.url}: no credentials (set AWS_ACCESS_KEY_ID and "
                    "AWS_SECRET_ACCESS_KEY, or configure ~/.aws/credentials)"
                ) from None
            except (
                botocore.exceptions.PartialCredentialsError,
                botocore.exceptions.ProfileNotFound,
                botocore.exceptions.InvalidConfigError,
                botocore.exceptions.ParamValidationError,
            ) as exc:
                raise ConfigError(f"{self.url}: {what}: the S3 settings are wrong: {exc}") from None
            except botocore.exceptions.ClientError as exc:
                err = exc.response.get("Error", {})
                code = str(err.get("Code", ""))
                status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))
                if code not in _TRANSIENT_CODES and status not in (429, 500, 502, 503, 504):
                    raise self._refused(what, code, status, str(err.get("Message", ""))) from None
                reason = f"{code or status} {err.get('Message', '')}".strip()
            except (botocore.exceptions.BotoCoreError, OSError) as exc:
                # Connection refused or reset, timeouts, a response cut short.
                reason = str(exc)
            now = time.monotonic()
            if now >= deadline:
                raise StorageError(
                    f"{self.url}: {what} failed for {self.retry_for:g} s: {reason}",
                    transient=True,
                )
            self._sleep(min(delay * (0.5 + random.random()), max(deadline - now, 0.0)))
            delay = min(delay * 2, 5.0)

    def _refused(self, what: str, code: str, status: int, message: str) -> StorageError:
        if code in ("NoSuchBucket",) or (status == 404 and what == "check the bucket"):
            return StorageError(f"{self.url}: the bucket {self.url.bucket!r} does not exist")
        if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "403") or (
            status == 403
        ):
            return StorageError(
                f"{self.url}: access denied ({code or status}): check the credentials "
                "(AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY) and the bucket's policy"
            )
        return StorageError(f"{self.url}: {what}: {code or status} {message}".rstrip())

    # -- operations ------------------------------------------------------------------

    def check_bucket(self) -> None:
        """Raise :class:`~mmaplog.StorageError` unless the bucket exists and answers."""
        self._call("check the bucket", lambda: self._client.head_bucket(Bucket=self.url.bucket))

    def put(self, key: str, data: bytes, metadata: dict[str, str]) -> None:
        """Store ``data`` at ``key``; the server checks it against its MD5 on arrival."""
        md5 = base64.b64encode(hashlib.md5(data).digest()).decode()

        def put() -> object:
            return self._client.put_object(
                Bucket=self.url.bucket, Key=key, Body=data, ContentMD5=md5, Metadata=metadata
            )

        self._call(f"upload {key}", put)

    def head(self, key: str) -> tuple[int, dict[str, str]]:
        """The size and user metadata of the object at ``key``."""
        r = self._call(
            f"read {key}", lambda: self._client.head_object(Bucket=self.url.bucket, Key=key)
        )
        return int(r["ContentLength"]), dict(r.get("Metadata", {}))

    def get(self, key: str) -> bytes:
        """The bytes of the object at ``key`` (objects are small: one batch of blocks)."""
        return self.fetch(key)[0]

    def fetch(self, key: str) -> tuple[bytes, dict[str, str]]:
        """The bytes and the user metadata of the object at ``key``."""

        def get() -> tuple[bytes, dict[str, str]]:
            r = self._client.get_object(Bucket=self.url.bucket, Key=key)
            body = r["Body"]
            try:
                return bytes(body.read()), dict(r.get("Metadata", {}))
            finally:
                body.close()

        return self._call(f"download {key}", get)

    def list(self, prefix: str, *, delimiter: str = "") -> Iterator[tuple[str, int]]:
        """``(key, size)`` of every object under ``prefix``, then ``(common_prefix, -1)``
        for each folder when ``delimiter`` is given; page by page, in key order."""
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {"Bucket": self.url.bucket, "Prefix": prefix}
            if delimiter:
                kwargs["Delimiter"] = delimiter
            if token:
                kwargs["ContinuationToken"] = token
            page = self._call(
                f"list {prefix or '/'}",
                lambda kw=kwargs: self._client.list_objects_v2(**kw),  # type: ignore[misc]
            )
            for obj in page.get("Contents", []):
                yield str(obj["Key"]), int(obj["Size"])
            for common in page.get("CommonPrefixes", []):
                yield str(common["Prefix"]), -1
            if not page.get("IsTruncated"):
                return
            token = page.get("NextContinuationToken")
