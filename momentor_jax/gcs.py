"""gcsfs set up once per process for `gs://` paths: retries we control, one-line errors, no start-up probe.

What `configure()` does (fileio calls it on the first remote path; it is idempotent):
  - registers `RetryingGCSFileSystem` for fsspec's "gs" and "gcs" protocols, so fileio, etils.epath (under orbax)
    and anything else that asks fsspec for GCS get the same behaviour;
  - uses gcsfs's plain `GCSFileSystem`, not the "extended" one recent gcsfs picks by default
    (GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT): that one first asks the bucket's storage layout over gRPC, which against an
    emulator (or a host without gRPC egress) hangs ~60 s before falling back.

`filesystem()` is one instance per process (keyed by pid), so Grain worker processes, forked or spawned, open their
own connections instead of sharing the parent's aiohttp session and event loop.

Every HTTP request of that filesystem goes through `RetryingGCSFileSystem._request`:
  - transient failures (HTTP 408/429/5xx, a reset or cut connection, a timeout) are retried with exponential backoff
    (MOMENTOR_GCS_RETRIES, default 5; first delay MOMENTOR_GCS_RETRY_DELAY seconds, default 1.0, doubling, capped at
    30 s), each one logged as a warning and counted in `retry_count()`; when they run out: `StorageUnavailableError`;
  - a request that does not finish in MOMENTOR_GCS_TIMEOUT seconds (default 120) counts as transient;
  - 404 -> `StorageNotFoundError` (a FileNotFoundError, so gcsfs's own existence checks keep working),
    401 -> `StorageCredentialsError`, 403 -> `StoragePermissionError`; never retried, so a user hears within
    seconds. Each message is one line naming the gs:// path and what to do.
"""
from __future__ import annotations

import asyncio
import logging
import os
import re
import threading
import urllib.parse

ENV_RETRIES = "MOMENTOR_GCS_RETRIES"
ENV_RETRY_DELAY = "MOMENTOR_GCS_RETRY_DELAY"
ENV_TIMEOUT = "MOMENTOR_GCS_TIMEOUT"
DEFAULT_RETRIES = 5
DEFAULT_RETRY_DELAY = 1.0
DEFAULT_TIMEOUT = 120.0
MAX_RETRY_DELAY = 30.0
TRANSIENT_STATUS = frozenset({408, 429, 500, 502, 503, 504})
LOGIN_HINT = "run `gcloud auth application-default login` (or set GOOGLE_APPLICATION_CREDENTIALS to a key file)"

_lock = threading.Lock()
_configured_pid = None
_filesystems: dict = {}
_retries = [0]


class StorageError(OSError):
    """A gs:// request that failed; str() is one line naming the path and what to do."""


class StorageNotFoundError(StorageError, FileNotFoundError):
    pass


class StoragePermissionError(StorageError, PermissionError):
    pass


class StorageCredentialsError(StoragePermissionError):
    pass


class StorageUnavailableError(StorageError, ConnectionError):
    pass


def retries() -> int:
    return max(int(os.environ.get(ENV_RETRIES, DEFAULT_RETRIES)), 0)


def retry_delay() -> float:
    return max(float(os.environ.get(ENV_RETRY_DELAY, DEFAULT_RETRY_DELAY)), 0.0)


def retry_count() -> int:
    """Transient failures retried so far in this process."""
    return _retries[0]


def gs_name(url: str, params: dict | None = None) -> str:
    """A JSON-API URL -> 'gs://bucket/object' (or 'gs://bucket'), for messages."""
    match = re.search(r"/b/([^/?]+)(?:/o/([^?]*))?", url)
    if not match:
        return url
    bucket, name = urllib.parse.unquote(match.group(1)), match.group(2)
    query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(url).query))
    params = {**query, **(params or {})}
    name = urllib.parse.unquote(name) if name else params.get("name") or params.get("prefix")
    return f"gs://{bucket}/{name}" if name else f"gs://{bucket}"


def _message_of(contents: bytes) -> str:
    import json  # noqa: PLC0415
    text = contents.decode("utf-8", errors="replace") if contents else ""
    try:
        error = json.loads(text)["error"]
        return str(error.get("message", "") if isinstance(error, dict) else error)
    except (ValueError, KeyError, TypeError, AttributeError):
        return text.strip().splitlines()[0] if text.strip() else ""


def error_for(status: int, contents: bytes, where: str) -> StorageError | None:
    """The error for a non-transient HTTP status we explain ourselves (None: leave it to gcsfs)."""
    detail = _message_of(contents)
    if status == 404:
        return StorageNotFoundError(f"{where}: not found in Cloud Storage")
    if status == 401:
        return StorageCredentialsError(f"{where}: no valid Google Cloud credentials (HTTP 401 {detail}); "
                                       f"{LOGIN_HINT}")
    if status == 403:
        return StoragePermissionError(f"{where}: permission denied (HTTP 403 {detail}); give the account in use "
                                      f"access to the bucket (e.g. roles/storage.objectAdmin), or {LOGIN_HINT} "
                                      "as one that has it")
    return None


def _gcsfs_class():
    # The plain class, never gcsfs's "extended" default (see the module docstring).
    os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")
    import gcsfs.core  # noqa: PLC0415
    return gcsfs.core.GCSFileSystem


def _make_class():
    import aiohttp  # noqa: PLC0415
    import gcsfs.retry  # noqa: PLC0415
    base = _gcsfs_class()

    class RetryingGCSFileSystem(base):
        """gcsfs with our retry policy and error messages on every request (see the module docstring)."""

        protocol = ("gs", "gcs")

        async def _request(self, method, path, *args, headers=None, json=None, data=None, cache_type=None,
                           cache_source=None, **kwargs):
            url = self._format_path(path, args)
            allowed, delay = retries(), retry_delay()
            attempt = 0
            while True:
                try:
                    await self._set_session()
                    if hasattr(data, "seek"):
                        data.seek(0)
                    async with self.session.request(
                            method=method, url=url, params=self._get_params(kwargs), json=json,
                            headers=self._get_headers(headers, cache_type=cache_type, cache_source=cache_source),
                            data=data, timeout=self.requests_timeout) as r:
                        status, response_headers, info = r.status, r.headers, r.request_info
                        contents = await r.read()
                    if status in TRANSIENT_STATUS:
                        raise gcsfs.retry.HttpError({"code": status, "message": _message_of(contents)})
                    if status >= 400 and status != 499:
                        error = error_for(status, contents, gs_name(url, kwargs))
                        if error is not None:
                            raise error
                        gcsfs.retry.validate_response(status, contents, path, args)
                    return status, response_headers, info, contents
                except (aiohttp.ClientError, asyncio.TimeoutError, ConnectionError, gcsfs.retry.HttpError) as e:
                    if isinstance(e, gcsfs.retry.HttpError) and e.code not in TRANSIENT_STATUS:
                        raise
                    if isinstance(e, StorageError):
                        raise
                    what = f"{type(e).__name__}: {e}".strip().rstrip(":")
                    if attempt >= allowed:
                        raise StorageUnavailableError(
                            f"{gs_name(url, kwargs)}: Cloud Storage did not answer after {allowed} retries (last: "
                            f"{what}); check the network (or STORAGE_EMULATOR_HOST), or allow more with "
                            f"{ENV_RETRIES}") from e
                    attempt += 1
                    _retries[0] += 1
                    wait = min(delay * 2 ** (attempt - 1), MAX_RETRY_DELAY)
                    logging.warning("gcs: %s %s failed (%s); retry %d of %d in %.1f s", method,
                                    gs_name(url, kwargs), what, attempt, allowed, wait)
                    await asyncio.sleep(wait)

    return RetryingGCSFileSystem


_CLASS = []


def configure() -> None:
    """Registers the filesystem with fsspec once per process (cheap when already done)."""
    global _configured_pid
    if _configured_pid == os.getpid():
        return
    with _lock:
        if _configured_pid == os.getpid():
            return
        import fsspec  # noqa: PLC0415
        if not _CLASS:
            _CLASS.append(_make_class())
        for protocol in ("gs", "gcs"):
            fsspec.register_implementation(protocol, _CLASS[0], clobber=True)
        _configured_pid = os.getpid()


def filesystem():
    """This process's filesystem (a fork or a spawned worker builds its own, with its own connections)."""
    pid = os.getpid()
    fs = _filesystems.get(pid)
    if fs is not None:
        return fs
    configure()
    import aiohttp  # noqa: PLC0415
    timeout = float(os.environ.get(ENV_TIMEOUT, DEFAULT_TIMEOUT))
    with _lock:
        if pid not in _filesystems:
            _filesystems.clear()  # a parent's instance is not ours to use
            _filesystems[pid] = _CLASS[0](requests_timeout=aiohttp.ClientTimeout(total=timeout, sock_connect=10),
                                          skip_instance_cache=True)
        return _filesystems[pid]


def bucket_exists(bucket: str) -> bool:
    return filesystem().exists(bucket)


def explain_missing(path: str) -> StorageNotFoundError:
    """A not-found error for `gs://bucket/key` that says whether the bucket or the object is missing."""
    bucket = path.split("://", 1)[-1].split("/", 1)[0]
    try:
        has_bucket = bucket_exists(bucket)
    except StorageError as e:
        return StorageNotFoundError(str(e))
    if not has_bucket:
        return StorageNotFoundError(f"{path}: bucket gs://{bucket} does not exist (check the name, or create it: "
                                    f"gcloud storage buckets create gs://{bucket})")
    return StorageNotFoundError(f"{path}: no such object in gs://{bucket}")


def reset() -> None:
    """Forgets this process's filesystem (the next call builds one for the current endpoint)."""
    with _lock:
        _filesystems.clear()
