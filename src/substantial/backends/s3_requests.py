"""Requests to one S3 bucket: retried against a deadline, their errors typed and explained.

botocore retries throttling, 5xx, timeouts and lost connections a few times
itself; ``Bucket`` adds a deadline, the 409s of racing conditional writes and
bodies cut short, and turns what cannot succeed into ``S3Error`` with a hint.
botocore is imported here and boto3 in s3.py, and nowhere else: they are the ``s3`` extra.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from botocore.config import Config  # type: ignore[import-untyped]
from botocore.exceptions import (  # type: ignore[import-untyped]
    BotoCoreError,
    ClientError,
    ConnectionError,
    HTTPClientError,
    NoCredentialsError,
)

from substantial.errors import StorageError

log = logging.getLogger("substantial.backends.s3")

_RETRYABLE_CODES = {
    "SlowDown",
    "Throttling",
    "ThrottlingException",
    "RequestThrottled",
    "ServiceUnavailable",
    "InternalError",
    "RequestTimeout",
    "ConditionalRequestConflict",
    "OperationAborted",
}
_HINTS = {
    "NoSuchBucket": "the bucket does not exist: create it, or fix the name in the URL",
    "AccessDenied": "check the credentials boto3 found (environment, ~/.aws, instance role) and the bucket policy",
    "InvalidAccessKeyId": "check the credentials boto3 found (environment, ~/.aws, instance role)",
    "SignatureDoesNotMatch": "check the secret key and the region",
    "ExpiredToken": "the session credentials expired: refresh them",
    "NotImplemented": "this store lacks conditional writes (If-None-Match / If-Match on PutObject), "
    "which S3Backend needs: AWS S3 has them since 2024, as do recent MinIO and SeaweedFS",
}


class S3Error(StorageError):
    """An S3 request failed for good: an error retrying cannot fix, or retries ran out."""

    def __init__(self, operation: str, key: str, code: str, message: str) -> None:
        self.operation = operation
        self.key = key
        self.code = code
        hint = _HINTS.get(code, "")
        super().__init__(f"S3 {operation} of {key!r} failed: {code}: {message}" + (f" ({hint})" if hint else ""))


def client_config() -> Any:
    options: dict[str, Any] = {
        "retries": {"mode": "standard", "total_max_attempts": 8},
        "connect_timeout": 5,
        "read_timeout": 30,
        "max_pool_connections": 32,
        "tcp_keepalive": True,
    }
    if "request_checksum_calculation" in Config.OPTION_DEFAULTS:  # botocore >= 1.36
        # checksums only where S3 requires them: third-party stores reject the new trailers
        options["request_checksum_calculation"] = "when_required"
        options["response_checksum_validation"] = "when_required"
    return Config(**options)


class Bucket:
    """The requests of one backend to ``bucket``, through a boto3 ``client``, each retried for ``retry_for`` seconds."""

    def __init__(self, client: Any, bucket: str, retry_for: float) -> None:
        self.client = client
        self.bucket = bucket
        self.retry_for = retry_for

    def call(self, operation: str, key: str, *, then: Callable[[Any], Any] = lambda reply: reply, **kwargs: Any) -> Any:
        """One request (and ``then`` of its reply, such as reading its body), retried with backoff.

        botocore retries throttling, 5xx, timeouts and lost connections a
        few times itself; this adds a deadline, the 409s of racing
        conditional writes and bodies cut short. 412 and 404 go back to the
        caller as ``ClientError``; anything else is ``S3Error``.
        """
        name = self.client.meta.method_to_api_mapping.get(operation, operation)
        deadline = time.monotonic() + self.retry_for
        delay = 0.05
        while True:
            try:
                return then(getattr(self.client, operation)(Bucket=self.bucket, **kwargs))
            except ClientError as e:
                code, status = _code(e), _status(e)
                if status in (404, 412) and code != "NoSuchBucket":
                    raise
                if code not in _RETRYABLE_CODES and status not in (500, 502, 503, 504):
                    raise S3Error(name, key, code, _message(e)) from e
                error: Exception = e
            except (ConnectionError, HTTPClientError) as e:
                error = e
            except NoCredentialsError as e:
                raise S3Error(name, key, "NoCredentials", f"{e}: set AWS_ACCESS_KEY_ID, a profile, or a role") from e
            except BotoCoreError as e:
                raise S3Error(name, key, type(e).__name__, str(e)) from e
            if time.monotonic() + delay > deadline:
                code = _code(error) if isinstance(error, ClientError) else type(error).__name__
                raise S3Error(name, key, code, f"still failing after {self.retry_for:.0f}s: {error}") from error
            log.warning("S3 %s of %r failed (%s); retrying in %.2fs", name, key, error, delay)
            time.sleep(delay * random.uniform(0.5, 1.0))
            delay = min(delay * 2, 5.0)

    def get(self, key: str) -> tuple[bytes, str] | None:
        """The object's body and ETag, or None if there is none."""
        try:
            found: tuple[bytes, str] = self.call(
                "get_object", key, Key=key, then=lambda reply: (reply["Body"].read(), reply["ETag"])
            )
        except ClientError as e:
            if _status(e) == 404:
                return None
            raise S3Error("GetObject", key, _code(e), _message(e)) from e
        return found

    def put(self, key: str, body: bytes, *, if_none_match: bool = False, if_match: str | None = None) -> str | None:
        """Write the object; its new ETag, or None if the condition did not hold."""
        condition: dict[str, Any] = {"IfNoneMatch": "*"} if if_none_match else {"IfMatch": if_match} if if_match else {}
        try:
            return str(self.call("put_object", key, Key=key, Body=body, **condition)["ETag"])
        except ClientError as e:
            if condition and _status(e) in (404, 412):  # If-Match on a missing object: 404 on AWS, 412 elsewhere
                return None
            raise S3Error("PutObject", key, _code(e), _message(e)) from e

    def list(self, prefix: str, *, after: str | None = None, page: int = 1000) -> Iterator[str]:
        """Keys under ``prefix`` (after ``after``) in order, a page per request as they are consumed."""
        kwargs: dict[str, Any] = {"Prefix": prefix, "MaxKeys": page}
        if after is not None:
            kwargs["StartAfter"] = after
        while True:
            reply = self.call("list_objects_v2", prefix, **kwargs)
            for item in reply.get("Contents", []):
                yield item["Key"]
            if not reply.get("IsTruncated"):
                return
            kwargs.pop("StartAfter", None)
            kwargs["ContinuationToken"] = reply["NextContinuationToken"]

    def delete(self, keys: Iterable[str]) -> None:
        """Remove these objects (missing ones are fine), a thousand per request."""
        todo = list(dict.fromkeys(keys))
        for start in range(0, len(todo), 1000):
            batch = [{"Key": k} for k in todo[start : start + 1000]]
            reply = self.call("delete_objects", batch[0]["Key"], Delete={"Objects": batch, "Quiet": True})
            errors = reply.get("Errors", [])
            if errors:
                first = errors[0]
                raise S3Error("DeleteObjects", first.get("Key", ""), first.get("Code", "?"), first.get("Message", ""))


def no_expect_continue(request: Any, **_: Any) -> None:
    if "Expect" in request.headers:
        del request.headers["Expect"]


def _code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", "Unknown"))


def _status(error: ClientError) -> int:
    return int(error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))


def _message(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Message", "")) or str(error)
