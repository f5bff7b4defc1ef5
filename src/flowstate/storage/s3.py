"""Checkpoint storage in an S3-compatible object store (``s3://bucket/prefix``), through ``obstore``:
``S3BlobStore``, the blob-store port (``storage.blobs``) over a bucket and prefix, and
``S3CheckpointStorage``, the checkpoint catalogue (``storage.catalogue``) over it.

The objects are laid out as the local adapter lays out files (``flowstate.storage.format``), under
the URL's prefix: ``chk-000001/<name>``, ``chk-000001/_metadata``, ``shared/<key>``.

Rules:

1. A PUT is atomic: an object is absent or complete, never partial, so no temporary names are
   used. Objects larger than ``multipart_chunk_size`` are uploaded in parts, ``max_concurrency``
   parts at a time; every request is retried by the client (5xx answers, dropped connections,
   timeouts) with exponential backoff up to ``max_retries`` times within ``retry_timeout``. A
   request that still fails raises ``ObjectStoreError`` (an ``OSError``) naming the object.
2. ``put_if_absent`` is a **create-only** PUT (``If-None-Match: *``). When the first answer was lost
   and the client's retry finds the object already there, it answers ``False`` and the catalogue
   reads the object back: the same bytes mean the metadata is ours. (moto and AWS S3 honour
   ``If-None-Match``; a store that ignores it degrades to an ordinary PUT, which is safe here
   because checkpoint ids are never reused while a job holds its checkpoint directory.)
3. Every object carries the SHA-256 of its bytes in the user metadata ``flowstate-sha256``
   (``head``'s ``sha256``). It serves only ``write_shared``'s test for "already stored": validation
   and reads always hash the bytes themselves.
4. ``workers`` requests at a time validate a checkpoint's files. ``local_path`` downloads a file into
   ``cache_dir`` (default: ``flowstate-s3-cache`` in the temporary directory) under its SHA-256.
5. Ages, for ``sweep_orphans``, are the objects' ``Last-Modified`` times on the store's clock:
   allow for clock skew in the grace period.
6. Failpoints (``torn`` and ``before_publish`` of the port) are hit immediately before the PUT. A PUT
   interrupted there, or by a crash during the request, leaves no object (rule 1).

Not handled here: multipart uploads abandoned by a crash are invisible to listings and are not
removed by ``sweep_orphans``; give the bucket a lifecycle rule that aborts incomplete multipart
uploads after a day.
"""

from __future__ import annotations

import builtins
import hashlib
import os
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlsplit

import obstore
from obstore.exceptions import AlreadyExistsError, BaseError
from obstore.store import S3Store

from flowstate.failpoints import Failpoints
from flowstate.storage.base import ObjectStoreError, StoredFile
from flowstate.storage.blobs import Blob, Body, Scanned, Sink
from flowstate.storage.catalogue import CheckpointCatalogue

SHA256_ATTRIBUTE = "flowstate-sha256"
_STREAM_CHUNK = 1024 * 1024


def parse_s3_url(url: str) -> tuple[str, str]:
    """``(bucket, prefix)`` of ``s3://bucket/prefix``; the prefix has no leading or trailing ``/``
    and may be empty. ``ValueError`` for anything else."""
    parts = urlsplit(url)
    if parts.scheme != "s3" or not parts.netloc:
        raise ValueError(f"{url!r} is not an S3 URL: expected s3://BUCKET[/PREFIX]")
    if parts.query or parts.fragment:
        raise ValueError(f"S3 URL {url!r} must not have a query or fragment")
    prefix = parts.path.strip("/")
    if any(segment in ("", ".", "..") for segment in prefix.split("/")) and prefix:
        raise ValueError(f"S3 URL {url!r} has an empty, '.' or '..' segment in its prefix")
    return parts.netloc, prefix


def _seconds(value: float | None) -> timedelta | None:
    return None if value is None else timedelta(seconds=value)


class S3BlobStore:
    """The blob-store port over ``s3://bucket/prefix`` (see the module rules). Thread-safe: the
    client releases the GIL during requests."""

    def __init__(
        self,
        url: str,
        *,
        endpoint: str | None = None,
        region: str | None = None,
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
        session_token: str | None = None,
        allow_http: bool | None = None,
        max_retries: int | None = None,
        retry_timeout: float | None = None,
        initial_backoff: float | None = None,
        max_backoff: float | None = None,
        connect_timeout: float | None = None,
        request_timeout: float | None = None,
        multipart_chunk_size: int = 8 * 1024 * 1024,
        max_concurrency: int = 8,
        workers: int = 8,
        failpoints: Failpoints | None = None,
        environ: Mapping[str, str] = os.environ,
    ) -> None:
        """Open ``url`` (``s3://bucket/prefix``).

        Unset options come from the environment as the AWS tools read it (``AWS_ENDPOINT_URL``,
        ``AWS_REGION``, ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``, …);
        ``allow_http`` defaults to true exactly when the endpoint is ``http://``. Times are seconds.
        ``max_retries``, ``retry_timeout`` and the backoffs default to the client's (10 retries
        within 3 minutes, backoff from 0.1 s to 15 s).
        """
        self._bucket, self._prefix = parse_s3_url(url)
        if multipart_chunk_size < 5 * 1024 * 1024:
            raise ValueError("multipart_chunk_size must be at least 5 MiB (the S3 minimum part size)")
        if max_concurrency < 1 or workers < 1:
            raise ValueError("max_concurrency and workers must be at least 1")
        endpoint = (
            endpoint
            or environ.get("AWS_ENDPOINT_URL_S3")
            or environ.get("AWS_ENDPOINT_URL")
            or environ.get("AWS_ENDPOINT")
        )
        config: dict[str, Any] = {}
        for name, value in (
            ("endpoint", endpoint),
            ("region", region),
            ("access_key_id", access_key_id),
            ("secret_access_key", secret_access_key),
            ("session_token", session_token),
        ):
            if value is not None:
                config[name] = value
        client: dict[str, Any] = {
            "allow_http": bool(endpoint and endpoint.startswith("http://"))
            if allow_http is None
            else allow_http
        }
        if connect_timeout is not None:
            client["connect_timeout"] = _seconds(connect_timeout)
        if request_timeout is not None:
            client["timeout"] = _seconds(request_timeout)
        retry: dict[str, Any] = {}
        if max_retries is not None:
            retry["max_retries"] = max_retries
        if retry_timeout is not None:
            retry["retry_timeout"] = _seconds(retry_timeout)
        backoff = {
            key: _seconds(value)
            for key, value in (("init_backoff", initial_backoff), ("max_backoff", max_backoff))
            if value is not None
        }
        if backoff:
            retry["backoff"] = {"base": 2, **backoff}
        try:
            self._store = S3Store(
                self._bucket,
                prefix=self._prefix or None,
                # obstore types these as TypedDicts; the keys above are theirs.
                client_options=cast(Any, client),
                retry_config=cast(Any, retry or None),
                **config,
            )
        except BaseError as error:
            raise ValueError(f"cannot configure S3 storage {url!r}: {error}") from None
        self.url = url
        self.workers = workers
        self._chunk = multipart_chunk_size
        self._concurrency = max_concurrency
        self._failpoints = failpoints

    def put(self, path: str, body: Body, *, torn: str | None = None) -> tuple[int, str]:
        if isinstance(body, bytes):
            size, sha256 = len(body), hashlib.sha256(body).hexdigest()
        else:
            size = body.stat().st_size
            with open(body, "rb") as file:
                sha256 = hashlib.file_digest(file, "sha256").hexdigest()
        if self._failpoints and torn:
            self._failpoints.hit(torn)
        with _translated(f"writing {path}"):
            obstore.put(
                self._store, path, body, attributes={SHA256_ATTRIBUTE: sha256},
                chunk_size=self._chunk, max_concurrency=self._concurrency,
            )
        return size, sha256

    def put_if_absent(
        self, path: str, data: bytes, *, torn: str | None = None, before_publish: str | None = None
    ) -> bool:
        if self._failpoints:
            for point in (torn, before_publish):
                if point:
                    self._failpoints.hit(point)
        try:
            with _translated(f"writing {path}"):
                obstore.put(
                    self._store, path, data, mode="create", use_multipart=False,
                    attributes={SHA256_ATTRIBUTE: hashlib.sha256(data).hexdigest()},
                )
        except AlreadyExistsError:
            return False
        return True

    def get(self, path: str) -> bytes:
        with _translated(f"reading {path}"):
            return bytes(obstore.get(self._store, path).bytes())

    def scan(self, path: str, sink: Sink | None = None, *, expected_size: int | None = None) -> Scanned | None:
        digest = hashlib.sha256()
        size = 0
        try:
            with _translated(f"reading {path}"):
                result = obstore.get(self._store, path)
                if expected_size is not None and result.meta["size"] != expected_size:
                    return Scanned(result.meta["size"], None)
                for chunk in result.stream(min_chunk_size=_STREAM_CHUNK):
                    data = bytes(chunk)
                    digest.update(data)
                    size += len(data)
                    if sink is not None:
                        sink(data)
        except FileNotFoundError:
            return None
        return Scanned(size, digest.hexdigest())

    def head(self, path: str) -> Blob | None:
        try:
            with _translated(f"reading {path}"):
                result = obstore.get(self._store, path, options={"head": True})
                meta, attributes = result.meta, dict(result.attributes)
        except FileNotFoundError:
            return None
        return Blob(meta["size"], meta["last_modified"].timestamp(), attributes.get(SHA256_ATTRIBUTE))

    def list(self, directory: str) -> list[StoredFile]:
        with _translated(f"listing {directory}"):
            return [
                StoredFile(meta["path"], meta["size"], meta["last_modified"].timestamp())
                for batch in obstore.list(self._store, f"{directory}/", chunk_size=1000)
                for meta in batch
            ]

    def directories(self) -> builtins.list[str]:
        with _translated("listing the checkpoints"):
            listed = obstore.list_with_delimiter(self._store, None)
        return [prefix.rstrip("/").rsplit("/", 1)[-1] for prefix in listed["common_prefixes"]]

    def delete(self, paths: builtins.list[str]) -> None:
        if paths:
            with _translated(f"deleting {paths[0]}" + (f" and {len(paths) - 1} more" if len(paths) > 1 else "")):
                obstore.delete(self._store, paths)

    def delete_directory(self, directory: str) -> None:
        self.delete(sorted(found.path for found in self.list(directory)))

    def local_file(self, path: str) -> Path | None:
        return None

    def __repr__(self) -> str:
        return f"S3BlobStore({self.url!r})"


class S3CheckpointStorage(CheckpointCatalogue):
    """``CheckpointStorage`` in an S3-compatible object store: the catalogue over an
    ``S3BlobStore``. The options are ``S3BlobStore``'s, and ``cache_dir`` (module rule 4)."""

    __slots__ = ()

    def __init__(self, url: str, *, cache_dir: str | os.PathLike[str] | None = None, **options: Any) -> None:
        super().__init__(
            S3BlobStore(url, **options),
            cache_dir=Path(tempfile.gettempdir()) / "flowstate-s3-cache" if cache_dir is None else cache_dir,
        )

    @property
    def url(self) -> str:
        return self._store.url  # type: ignore[attr-defined, no-any-return]

    def __repr__(self) -> str:
        return f"S3CheckpointStorage({self.url!r})"


@contextmanager
def _translated(what: str) -> Iterator[None]:
    """Turns the client's errors, other than a missing object and a refused create-only put, into
    ``ObjectStoreError`` (an ``OSError``) naming what was being done."""
    try:
        yield
    except AlreadyExistsError:
        raise
    except BaseError as error:
        text = str(error).strip()
        first_line = text.splitlines()[0] if text else type(error).__name__
        raise ObjectStoreError(f"{what} failed: {first_line}") from error
