"""Object storage over the S3 API, configured by the standard AWS environment variables (docs/cluster.md).

Every path the project reads or writes may be a local path or a URI. ``s3://bucket/key`` opens a pyarrow
``S3FileSystem`` built from the environment, the same in every process of a job (driver, Ray tasks, actors,
Ray Train workers), so a cluster is configured once, on its nodes:

=============================================  ===============================================================
``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL``  an S3-compatible endpoint (MinIO, Ceph, moto); unset: AWS itself
``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``  credentials (or ``AWS_SESSION_TOKEN``, ``~/.aws``, instance roles:
                                                 the AWS SDK's default chain)
``AWS_REGION`` or ``AWS_DEFAULT_REGION``          the region (an endpoint's default: us-east-1)
``AWS_ALLOW_HTTP=true``                           allow a plain ``http://`` endpoint (a loopback or private one)
``AWS_MAX_ATTEMPTS``                              attempts per request, retries included (default 3)
``DRN_S3_CONNECT_TIMEOUT_S``                      seconds to connect (default 5)
``DRN_S3_REQUEST_TIMEOUT_S``                      seconds a request may stall without a byte (default 20)
=============================================  ===============================================================

The first use of a bucket in a process checks it once (one HEAD request): a bucket that does not exist, wrong
credentials and an endpoint that cannot be reached become one-line :class:`~drn.errors.InputError` messages that
name the URI, after at most ``AWS_MAX_ATTEMPTS`` x the timeouts, never a hang. Other schemes (``gs://``,
``abfs://``, ``hdfs://``) open with ``pyarrow.fs.FileSystem.from_uri`` and their own SDK's configuration.
LanceDB gets the same settings as ``storage_options`` (:func:`lancedb_storage_options`).
"""

from __future__ import annotations

import os
import re
import tempfile
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import pyarrow.fs as pafs

from drn.errors import InputError

S3_SCHEMES = ("s3", "s3a")
DEFAULT_MAX_ATTEMPTS = 3
DEFAULT_CONNECT_TIMEOUT_S = 5.0
DEFAULT_REQUEST_TIMEOUT_S = 20.0
_TRUE = ("1", "true", "yes", "on")


def is_uri(path: str | os.PathLike) -> bool:
    """True for ``scheme://...`` (object stores and ``file://``), False for plain local paths."""
    return "://" in os.fspath(path)


def is_object_store_uri(path: str | os.PathLike) -> bool:
    """True for a URI that is not ``file://``: its bytes live in an object store, not on this machine's disk."""
    text = os.fspath(path)
    return is_uri(text) and not text.startswith("file://")


def local_path(path: str | os.PathLike) -> str | None:
    """The local path of a plain path or a ``file://`` URI; None for an object-store URI."""
    text = os.fspath(path)
    return None if is_object_store_uri(text) else text.removeprefix("file://")


def check_writable(path: str | os.PathLike, what: str = "folder") -> None:
    """InputError before any work when a local ``path`` cannot be created as a folder or written to; object-store
    URIs pass (they answer on the first write). ``what`` names the folder in the message."""
    local = local_path(path)
    if local is None:
        return
    folder = Path(local)
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise InputError(f"the {what} is not writable: {existing} is a file, not a folder", path=path)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as error:
        raise InputError(f"the {what} is not writable: {error.strerror or error}", path=path) from None


@dataclass(frozen=True)
class S3Settings:
    """How to reach S3 (or an S3-compatible store), read from the environment by :meth:`from_env`."""

    endpoint: str | None = None  # scheme://host[:port], or None for AWS
    region: str | None = None
    allow_http: bool = False
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S
    request_timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> S3Settings:
        env = os.environ if environ is None else environ
        endpoint = (env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL") or "").strip() or None
        allow_http = env.get("AWS_ALLOW_HTTP", "").strip().lower() in _TRUE
        if endpoint is not None:
            endpoint = endpoint.rstrip("/")
            parsed = urlparse(endpoint if "://" in endpoint else f"https://{endpoint}")
            if parsed.scheme not in ("http", "https") or not parsed.netloc:
                raise InputError(f"AWS_ENDPOINT_URL must look like https://host[:port], not {endpoint!r}")
            if parsed.scheme == "http" and not allow_http:
                raise InputError(f"AWS_ENDPOINT_URL {endpoint} is plain HTTP; set AWS_ALLOW_HTTP=true to allow it "
                                 "(for a loopback or private endpoint only)")
            endpoint = f"{parsed.scheme}://{parsed.netloc}"
        region = (env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "").strip() or None
        return cls(
            endpoint=endpoint,
            region=region or ("us-east-1" if endpoint else None),
            allow_http=allow_http,
            max_attempts=_positive(env, "AWS_MAX_ATTEMPTS", DEFAULT_MAX_ATTEMPTS, int),
            connect_timeout_s=_positive(env, "DRN_S3_CONNECT_TIMEOUT_S", DEFAULT_CONNECT_TIMEOUT_S, float),
            request_timeout_s=_positive(env, "DRN_S3_REQUEST_TIMEOUT_S", DEFAULT_REQUEST_TIMEOUT_S, float),
        )

    @property
    def where(self) -> str:
        """The endpoint in words, for messages."""
        return self.endpoint or f"AWS S3 ({self.region or 'region from the bucket'})"

    def filesystem(self, region: str | None = None) -> pafs.S3FileSystem:
        """A pyarrow S3 filesystem with these settings; credentials come from the AWS SDK's default chain (so
        they are never pickled into Ray tasks: each process reads its own environment)."""
        scheme = urlparse(self.endpoint).scheme if self.endpoint else "https"
        return pafs.S3FileSystem(
            region=region or self.region,
            endpoint_override=self.endpoint,
            scheme=scheme,
            connect_timeout=self.connect_timeout_s,
            request_timeout=self.request_timeout_s,
            retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=self.max_attempts),
        )

    def lancedb_options(self) -> dict[str, str]:
        """The same settings as LanceDB ``storage_options`` (credentials: LanceDB reads the environment)."""
        options = {
            "connect_timeout": f"{self.connect_timeout_s:g}s",
            "client_max_retries": str(max(0, self.max_attempts - 1)),
        }
        if self.endpoint:
            options["aws_endpoint"] = self.endpoint
        if self.allow_http:
            options["aws_allow_http"] = "true"
        if self.region:
            options["aws_region"] = self.region
        return options


def _positive(env: Mapping[str, str], name: str, default, kind):
    text = env.get(name, "").strip()
    if not text:
        return default
    try:
        value = kind(text)
    except ValueError:
        value = 0
    if not value > 0:
        raise InputError(f"{name} must be a positive number, not {text!r}")
    return value


def split_bucket(uri: str) -> tuple[str, str, str]:
    """``(scheme, bucket, key)`` of ``scheme://bucket/key``; InputError when the bucket is missing."""
    scheme, _, rest = uri.partition("://")
    bucket, _, key = rest.partition("/")
    if not bucket:
        raise InputError("the URI names no bucket", path=uri)
    return scheme.lower(), bucket, key.rstrip("/")


_lock = threading.Lock()
_filesystems: dict[tuple, pafs.FileSystem] = {}
_checked_buckets: set[tuple] = set()


def filesystem_for(uri: str | os.PathLike) -> tuple[pafs.FileSystem, str]:
    """A pyarrow filesystem and the path inside it: local paths (made absolute), ``file://``, ``s3://`` (from the
    environment, bucket checked once per process) and any other scheme pyarrow knows."""
    text = os.fspath(uri)
    if not is_uri(text):
        return pafs.LocalFileSystem(), os.path.abspath(text)
    if text.startswith("file://"):
        return pafs.LocalFileSystem(), os.path.abspath(text[len("file://"):])
    scheme = text.split("://", 1)[0].lower()
    if scheme in S3_SCHEMES:
        _, bucket, key = split_bucket(text)
        settings = S3Settings.from_env()
        fs = _s3_filesystem(settings, bucket)
        check_bucket(fs, settings, bucket, text)
        return fs, f"{bucket}/{key}" if key else bucket
    try:
        return pafs.FileSystem.from_uri(text)
    except Exception as err:  # unknown scheme, missing SDK configuration
        raise InputError(f"cannot open: {first_line(err)}", path=text) from None


def _s3_filesystem(settings: S3Settings, bucket: str) -> pafs.FileSystem:
    region = settings.region
    if region is None:  # AWS itself with no region given: ask where the bucket lives (as from_uri does)
        try:
            region = pafs.resolve_s3_region(bucket)
        except Exception:  # a missing bucket or no network: the bucket check below says which
            region = "us-east-1"
    key = (settings, region)
    with _lock:
        fs = _filesystems.get(key)
        if fs is None:
            fs = _filesystems[key] = settings.filesystem(region)
    return fs


def check_bucket(fs: pafs.FileSystem, settings: S3Settings, bucket: str, uri: str) -> None:
    """InputError naming ``uri`` unless ``bucket`` exists and the credentials may read it (once per process)."""
    key = (settings, bucket)
    if key in _checked_buckets:
        return
    try:
        info = fs.get_file_info(bucket)
    except OSError as err:
        raise InputError(describe_error(err, settings), path=uri) from None
    if info.type == pafs.FileType.NotFound:
        raise InputError(f"the bucket {bucket!r} does not exist at {settings.where}", path=uri)
    with _lock:
        _checked_buckets.add(key)


def describe_error(err: BaseException, settings: S3Settings | None = None) -> str:
    """One line for an object-store error: what went wrong and which setting to look at."""
    text = str(err)
    where = settings.where if settings is not None else "the object store"
    if "NO_SUCH_BUCKET" in text or "NoSuchBucket" in text:
        return f"the bucket does not exist at {where}"
    if any(code in text for code in ("ACCESS_DENIED", "INVALID_ACCESS_KEY_ID", "SIGNATURE_DOES_NOT_MATCH",
                                     "InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "status: 403")):
        return (f"access denied by {where}: check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and the bucket's "
                "permissions)")
    if "NETWORK_CONNECTION" in text or "curlCode" in text:
        detail = re.search(r"(Could not connect[^;]*|Timeout was reached|Could not resolve[^;]*|"
                           r"Operation too slow[^.;]*)", text)
        attempts = f" after {settings.max_attempts} attempt(s)" if settings is not None else ""
        return (f"cannot reach the object store at {where}{attempts} ({detail.group(1) if detail else 'no answer'})"
                "; check AWS_ENDPOINT_URL and the network")
    return first_line(err)


def first_line(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return (lines[0] if lines else type(err).__name__)[:300]


def lancedb_storage_options(uri: str | os.PathLike) -> dict[str, str] | None:
    """LanceDB ``storage_options`` for ``uri``: the environment's S3 settings for ``s3://``, None otherwise.

    The bucket is checked first (as for every pyarrow access), so a wrong bucket, credentials or endpoint
    is a one-line InputError rather than a LanceDB stack trace."""
    text = os.fspath(uri)
    if not is_object_store_uri(text) or text.split("://", 1)[0].lower() not in S3_SCHEMES:
        return None
    filesystem_for(text)
    return S3Settings.from_env().lancedb_options()

