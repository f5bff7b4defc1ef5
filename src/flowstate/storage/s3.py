"""Checkpoint storage in an S3-compatible object store (``s3://bucket/prefix``), through ``obstore``.

The objects are laid out as the local adapter lays out files (``flowstate.storage.format``), under
the URL's prefix: ``chk-000001/<name>``, ``chk-000001/_metadata``, ``shared/<key>``.

Rules:

1. A PUT is atomic: an object is absent or complete, never partial, so no temporary names are
   used. Objects larger than ``multipart_chunk_size`` are uploaded in parts, ``max_concurrency``
   parts at a time; every request is retried by the client (5xx answers, dropped connections,
   timeouts) with exponential backoff up to ``max_retries`` times within ``retry_timeout``. A
   request that still fails raises ``ObjectStoreError`` (an ``OSError``) naming the object.
2. ``_metadata`` is written last, with a **create-only** PUT (``If-None-Match: *``), so that a
   checkpoint, once complete, is never replaced. When the first answer was lost and the client's
   retry finds the object already there, the object is read back: the same bytes mean the metadata
   is ours and the write succeeded; other bytes raise ``FileExistsError``. (moto and AWS S3 honour
   ``If-None-Match``; a store that ignores it degrades to an ordinary PUT, which is safe here
   because checkpoint ids are never reused while a job holds its checkpoint directory.)
3. Every object carries the SHA-256 of its bytes in the user metadata ``flowstate-sha256``. It
   serves only ``write_shared``'s test for "already stored": validation and reads always hash the
   bytes themselves.
4. Validation (``restore_candidates``, ``list_checkpoints``, ``file_problem``) downloads and hashes
   every referenced file, ``workers`` files at a time. A store that cannot be reached is not a
   verdict on a checkpoint: validation, ``sweep`` and ``sweep_orphans`` then raise
   ``ObjectStoreError`` instead of refusing checkpoints or taking their files for orphans.
   ``local_path`` downloads a file into ``cache_dir`` under its SHA-256 (verified before it is
   renamed into place) and reuses a cached copy when it still verifies. The cache is never pruned
   by the storage; clear it between runs if space matters.
5. Removal deletes ``_metadata`` first, then the rest of the checkpoint's objects, then the shared
   files it released; a crash in between leaves an incomplete checkpoint or orphans, never a
   checkpoint that looks complete but is not.
6. Ages, for ``sweep_orphans``, are the objects' ``Last-Modified`` times on the store's clock:
   allow for clock skew in the grace period. ``write_shared`` of bytes already stored under the key,
   when no checkpoint references them yet, uploads them again to refresh that time.
7. Failpoints: ``storage.state_mid_write`` is hit immediately before the PUT of a state file;
   ``storage.metadata_torn`` and ``storage.metadata_before_rename`` immediately before the
   create-only PUT of the metadata. A PUT interrupted there, or by a crash during the request,
   leaves no object (rule 1), hence an incomplete checkpoint.

Not handled here: multipart uploads abandoned by a crash are invisible to listings and are not
removed by ``sweep_orphans``; give the bucket a lifecycle rule that aborts incomplete multipart
uploads after a day.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal, TypeVar
from urllib.parse import urlsplit

import obstore
from obstore.exceptions import AlreadyExistsError, BaseError
from obstore.store import S3Store

from flowstate import failpoints as fpn
from flowstate.checkpoint.ids import CheckpointId
from flowstate.checkpoint.restore import CandidateStatus, Invalid, Valid
from flowstate.failpoints import Failpoints
from flowstate.storage.base import (
    CheckpointInfo,
    CheckpointMetadata,
    CorruptCheckpointError,
    ObjectStoreError,
    StateHandle,
    StoredFile,
)
from flowstate.storage.compression import check_codec, compress
from flowstate.storage.format import (
    METADATA_FILE,
    NO_METADATA,
    SHARED_DIR,
    check_checkpoint_id,
    check_key,
    check_keys,
    check_state_name,
    checkpoint_dir_name,
    decode_metadata,
    encode_metadata,
    hash_problem,
    parse_checkpoint_dir_name,
    reference_problem,
    relative_path_problem,
    shared_path,
    verified_state,
)
from flowstate.storage.registry import SharedStateRegistry, shared_files

SHA256_ATTRIBUTE = "flowstate-sha256"
_STREAM_CHUNK = 1024 * 1024
T = TypeVar("T")
R = TypeVar("R")


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


@dataclass(frozen=True, slots=True)
class _Object:
    path: str
    size: int
    modified: float


@dataclass(frozen=True, slots=True)
class _Inspection:
    verdict: Valid[CheckpointMetadata] | Invalid
    status: Literal["completed", "incomplete", "corrupt"]
    metadata: CheckpointMetadata | None


class S3CheckpointStorage:
    """``CheckpointStorage`` in an S3-compatible object store (see the module rules).

    Thread-safe like the local adapter: tasks upload concurrently (the client releases the GIL
    during requests); the reference counts of shared files are guarded by a lock.
    """

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
        cache_dir: str | os.PathLike[str] | None = None,
        failpoints: Failpoints | None = None,
        environ: Mapping[str, str] = os.environ,
    ) -> None:
        """Open ``url`` (``s3://bucket/prefix``) and count the shared files referenced by every
        checkpoint whose metadata is valid.

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
                client_options=client,
                retry_config=retry or None,
                **config,
            )
        except BaseError as error:
            raise ValueError(f"cannot configure S3 storage {url!r}: {error}") from None
        self._url = url
        self._chunk = multipart_chunk_size
        self._concurrency = max_concurrency
        self._workers = workers
        self._cache = Path(cache_dir) if cache_dir is not None else (
            Path(tempfile.gettempdir()) / "flowstate-s3-cache"
        )
        self._failpoints = failpoints
        self._lock = threading.Lock()
        self._registry = SharedStateRegistry.from_metadata(self._valid_metadata())

    @property
    def url(self) -> str:
        return self._url

    def __repr__(self) -> str:
        return f"S3CheckpointStorage({self._url!r})"

    # --- writing -------------------------------------------------------------------------------

    def write_state(
        self, checkpoint_id: CheckpointId, name: str, data: bytes, *, codec: str = "none"
    ) -> StateHandle:
        """Upload ``data``, compressed with ``codec``, as ``chk-<id>/<name>`` (contract rule 1)."""
        check_state_name(name)
        check_codec(codec)
        check_checkpoint_id(checkpoint_id)
        stored = compress(codec, data)
        path = f"{checkpoint_dir_name(checkpoint_id)}/{name}"
        sha256 = hashlib.sha256(stored).hexdigest()
        if self._failpoints:
            self._failpoints.hit(fpn.STORAGE_STATE_MID_WRITE)
        self._put(path, stored, sha256)
        return StateHandle(path, len(stored), sha256, codec)

    def write_shared(self, key: str, source: bytes | os.PathLike[str]) -> StateHandle:
        """Upload ``source`` (bytes, or the path of a file, streamed) as ``shared/<key>``
        (contract rule 6; module rules 3 and 6). The same errors as the local adapter."""
        check_key(key)
        path = shared_path(key)
        if isinstance(source, bytes | bytearray | memoryview):
            body: bytes | Path = source if isinstance(source, bytes) else bytes(source)
            size, sha256 = len(body), hashlib.sha256(body).hexdigest()
        else:
            body = Path(source)
            size = body.stat().st_size
            with open(body, "rb") as file:
                sha256 = hashlib.file_digest(file, "sha256").hexdigest()
        if self._failpoints:
            self._failpoints.hit(fpn.STORAGE_SHARED_MID_UPLOAD)  # a put leaves no partial object
        existing = self._head(path)
        if existing is not None:
            stored_size, attributes = existing
            same = stored_size == size and attributes.get(SHA256_ATTRIBUTE) == sha256
            with self._lock:
                referenced = self._registry.count(path) > 0
            if same and referenced:
                return StateHandle(path, size, sha256)
            if referenced:
                raise FileExistsError(
                    f"{path} already holds other bytes, referenced by a checkpoint: a shared "
                    "file is immutable, so its key must name its content"
                )
        self._put(path, body, sha256)
        return StateHandle(path, size, sha256)

    def write_shared_many(
        self, items: Iterable[tuple[str, bytes | os.PathLike[str]]]
    ) -> list[StateHandle]:
        """``write_shared`` of every ``(key, source)``, ``workers`` at a time; the handles in the
        order given. Keys are validated (and must differ) before anything is written; when writes
        fail, the first failure is raised once every write has ended."""
        items = list(items)
        check_keys([key for key, _ in items])
        if len(items) <= 1:
            return [self.write_shared(key, source) for key, source in items]
        with ThreadPoolExecutor(min(self._workers, len(items)), thread_name_prefix="shared-upload") as pool:
            futures = [pool.submit(self.write_shared, key, source) for key, source in items]
        for future in futures:
            error = future.exception()
            if error is not None:
                raise error
        return [future.result() for future in futures]

    def write_metadata(self, metadata: CheckpointMetadata) -> None:
        """Complete the checkpoint with a create-only PUT of its ``_metadata`` (contract rule 2,
        module rule 2). The checks before it are those of the local adapter; files already counted
        by another checkpoint are not asked for again (they cannot be deleted meanwhile)."""
        raw = encode_metadata(metadata)
        problem = reference_problem(metadata)
        if problem is not None:
            raise ValueError(f"cannot complete checkpoint {metadata.checkpoint_id}: {problem}")
        checkpoint_id = metadata.checkpoint_id
        with self._lock:
            unknown = [h for h in metadata.files() if self._registry.count(h.path) == 0]
            for handle, found in zip(unknown, self._parallel(self._size_of, unknown), strict=True):
                if found is None:
                    raise CorruptCheckpointError(
                        f"cannot complete checkpoint {checkpoint_id}: {handle.path} is missing"
                    )
                if found != handle.size:
                    raise CorruptCheckpointError(
                        f"cannot complete checkpoint {checkpoint_id}: {handle.path} has "
                        f"{found} bytes, its handle says {handle.size}"
                    )
            self._registry.register(checkpoint_id, shared_files(metadata))
        if self._failpoints:
            self._failpoints.hit(fpn.STORAGE_METADATA_TORN)
            self._failpoints.hit(fpn.STORAGE_METADATA_BEFORE_RENAME)
        path = f"{checkpoint_dir_name(checkpoint_id)}/{METADATA_FILE}"
        sha256 = hashlib.sha256(raw).hexdigest()
        try:
            with _translated(f"writing {path}"):
                obstore.put(
                    self._store, path, raw, mode="create", use_multipart=False,
                    attributes={SHA256_ATTRIBUTE: sha256},
                )
        except AlreadyExistsError:
            found = self._get_bytes(path)
            if found != raw:
                raise FileExistsError(
                    f"{path} already exists with other content: checkpoint {checkpoint_id} was "
                    "completed before, and a completed checkpoint is never replaced"
                ) from None

    # --- reading -------------------------------------------------------------------------------

    def read_state(self, handle: StateHandle) -> bytes:
        """The bytes given to ``write_state`` for ``handle``, verified (contract rule 4)."""
        return verified_state(handle, self._get_bytes)

    def local_path(self, handle: StateHandle) -> Path:
        """A verified copy of ``handle``'s bytes as stored, in the cache (module rule 4)."""
        problem = relative_path_problem(handle.path)
        if problem is not None:
            raise ValueError(problem)
        cached = self._cache / handle.sha256
        if _verifies(cached, handle):
            return cached
        self._cache.mkdir(parents=True, exist_ok=True, mode=0o700)
        temporary = self._cache / f".{handle.sha256}.tmp-{secrets.token_hex(8)}"
        try:
            with open(temporary, "xb") as file:
                size, sha256 = self._download(handle.path, file.write)
            if size is None:
                raise CorruptCheckpointError(f"{handle.path} is missing")
            problem = hash_problem(handle, size, sha256)
            if problem is not None:
                raise CorruptCheckpointError(problem)
            os.replace(temporary, cached)
        finally:
            try:
                os.unlink(temporary)
            except FileNotFoundError:
                pass
        return cached

    def restore_candidates(self) -> Iterator[Valid[CheckpointMetadata] | Invalid]:
        """Every checkpoint, newest first, each validated when it is reached (contract rule 3)."""
        for checkpoint_id, directory in reversed(self._checkpoint_directories()):
            yield self._inspect(checkpoint_id, directory).verdict

    def list_checkpoints(self) -> list[CheckpointInfo]:
        """Every checkpoint, oldest first, each fully validated; ``bytes_on_disk`` counts every
        object under the checkpoint's directory."""
        sizes: dict[str, int] = {}
        for found in self._list(""):
            top = found.path.split("/", 1)[0]
            sizes[top] = sizes.get(top, 0) + found.size
        infos = []
        for checkpoint_id, directory in self._checkpoint_directories():
            inspection = self._inspect(checkpoint_id, directory)
            reason = inspection.verdict.reason if isinstance(inspection.verdict, Invalid) else None
            infos.append(
                CheckpointInfo(
                    checkpoint_id, inspection.status, reason, inspection.metadata,
                    sizes.get(directory, 0),
                )
            )
        return infos

    def highest_id(self) -> int:
        return max((found_id for found_id, _ in self._checkpoint_directories()), default=0)

    # --- inspection ----------------------------------------------------------------------------

    def checkpoint_ids(self) -> list[CheckpointId]:
        return [checkpoint_id for checkpoint_id, _ in self._checkpoint_directories()]

    def load_metadata(self, checkpoint_id: CheckpointId) -> CheckpointMetadata:
        directory = dict(self._checkpoint_directories()).get(checkpoint_id)
        if directory is None:
            raise FileNotFoundError(f"checkpoint {checkpoint_id} has no objects")
        return self._load_metadata(checkpoint_id, directory)

    def file_problem(self, handle: StateHandle) -> str | None:
        """Why the object of ``handle`` is missing or differs in size or SHA-256, or ``None``.
        A store that cannot be reached raises ``ObjectStoreError``: that is no verdict on the file."""
        size, sha256 = self._download(handle.path, None, expected_size=handle.size)
        if size is None:
            return f"{handle.path} is missing"
        return hash_problem(handle, size, sha256)

    def list_files(self) -> list[StoredFile]:
        """Every object under a checkpoint directory or ``shared/``, in path order."""
        found = []
        for item in self._list(""):
            top = item.path.split("/", 1)[0]
            if top == SHARED_DIR or parse_checkpoint_dir_name(top) is not None:
                found.append(StoredFile(item.path, item.size, item.modified))
        return sorted(found, key=lambda f: f.path)

    # --- removing ------------------------------------------------------------------------------

    def discard(self, checkpoint_id: CheckpointId) -> None:
        """Delete the checkpoint's objects, ``_metadata`` first, then the shared files no other
        checkpoint references (contract rules 6 and 7, module rule 5). Missing is fine."""
        for found_id, directory in self._all_checkpoint_directories():
            if found_id == checkpoint_id:
                self._remove_directory(directory)
        self._release(checkpoint_id)

    def sweep(self, keep: set[CheckpointId]) -> list[CheckpointId]:
        """Delete every checkpoint not in ``keep`` whose metadata is missing or invalid (only the
        metadata is checked), releasing its shared files; return the deleted ids, oldest first."""
        removed = []
        for checkpoint_id, directory in self._checkpoint_directories():
            if checkpoint_id in keep:
                continue
            if isinstance(self._inspect(checkpoint_id, directory, verify_files=False).verdict, Invalid):
                self._remove_directory(directory)
                removed.append(checkpoint_id)
        for checkpoint_id in removed:
            self._release(checkpoint_id)
        return removed

    def sweep_orphans(self, grace_seconds: float, now: float) -> list[str]:
        """Delete every object under ``shared/`` that no valid metadata references (nor any
        checkpoint being completed by this instance) and whose ``Last-Modified`` is more than
        ``grace_seconds`` before ``now`` (contract rule 8). Returns the deleted paths, sorted."""
        if grace_seconds < 0:
            raise ValueError(f"the grace period cannot be negative, not {grace_seconds!r}")
        cutoff = now - grace_seconds
        referenced = {h.path for metadata in self._valid_metadata() for h in shared_files(metadata)}
        with self._lock:
            referenced |= self._registry.referenced()
            doomed = sorted(
                item.path
                for item in self._list(SHARED_DIR)
                if item.path not in referenced and item.modified < cutoff
            )
            self._delete(doomed)
        return doomed

    # --- internals -----------------------------------------------------------------------------

    def _release(self, checkpoint_id: CheckpointId) -> None:
        with self._lock:
            self._delete(self._registry.unregister(checkpoint_id))

    def _remove_directory(self, directory: str) -> None:
        self._delete([f"{directory}/{METADATA_FILE}"])
        self._delete(sorted(item.path for item in self._list(directory)))

    def _put(self, path: str, body: bytes | Path, sha256: str) -> None:
        with _translated(f"writing {path}"):
            obstore.put(
                self._store, path, body, attributes={SHA256_ATTRIBUTE: sha256},
                chunk_size=self._chunk, max_concurrency=self._concurrency,
            )

    def _head(self, path: str) -> tuple[int, Mapping[str, str]] | None:
        """Size and attributes of ``path``, or ``None`` when there is no such object."""
        try:
            with _translated(f"reading {path}"):
                result = obstore.get(self._store, path, options={"head": True})
                return result.meta["size"], dict(result.attributes)
        except FileNotFoundError:
            return None

    def _size_of(self, handle: StateHandle) -> int | None:
        try:
            with _translated(f"reading {handle.path}"):
                return obstore.head(self._store, handle.path)["size"]
        except FileNotFoundError:
            return None

    def _get_bytes(self, path: str) -> bytes:
        with _translated(f"reading {path}"):
            return bytes(obstore.get(self._store, path).bytes())

    def _download(
        self, path: str, sink: Callable[[bytes], object] | None, *, expected_size: int | None = None
    ) -> tuple[int | None, str | None]:
        """Stream ``path`` into ``sink`` while hashing it: ``(size, sha256)``, ``(None, None)``
        when it is missing, ``(size, None)`` without downloading when ``expected_size`` differs."""
        digest = hashlib.sha256()
        size = 0
        try:
            with _translated(f"reading {path}"):
                result = obstore.get(self._store, path)
                if expected_size is not None and result.meta["size"] != expected_size:
                    return result.meta["size"], None
                for chunk in result.stream(min_chunk_size=_STREAM_CHUNK):
                    data = bytes(chunk)
                    digest.update(data)
                    size += len(data)
                    if sink is not None:
                        sink(data)
        except FileNotFoundError:
            return None, None
        return size, digest.hexdigest()

    def _list(self, prefix: str) -> list[_Object]:
        with _translated(f"listing {prefix or 'the storage root'}"):
            return [
                _Object(meta["path"], meta["size"], meta["last_modified"].timestamp())
                for batch in obstore.list(self._store, prefix or None, chunk_size=1000)
                for meta in batch
            ]

    def _delete(self, paths: list[str]) -> None:
        if paths:
            with _translated(f"deleting {paths[0]}" + (f" and {len(paths) - 1} more" if len(paths) > 1 else "")):
                obstore.delete(self._store, paths)

    def _parallel(self, function: Callable[[T], R], items: Iterable[T]) -> list[R]:
        items = list(items)
        if len(items) <= 1:
            return [function(item) for item in items]
        with ThreadPoolExecutor(min(self._workers, len(items)), thread_name_prefix="s3-storage") as pool:
            return list(pool.map(function, items))

    def _all_checkpoint_directories(self) -> list[tuple[CheckpointId, str]]:
        with _translated("listing the checkpoints"):
            listed = obstore.list_with_delimiter(self._store, None)
        found = []
        for prefix in listed["common_prefixes"]:
            name = prefix.rstrip("/").rsplit("/", 1)[-1]
            checkpoint_id = parse_checkpoint_dir_name(name)
            if checkpoint_id is not None:
                found.append((checkpoint_id, name))
        return found

    def _checkpoint_directories(self) -> list[tuple[CheckpointId, str]]:
        """One directory per id, oldest first; ``chk-000007`` wins over ``chk-7``."""
        chosen: dict[CheckpointId, str] = {}
        for checkpoint_id, name in sorted(
            self._all_checkpoint_directories(),
            key=lambda item: (item[1] != checkpoint_dir_name(item[0]), item[1]),
        ):
            chosen.setdefault(checkpoint_id, name)
        return sorted(chosen.items())

    def _valid_metadata(self) -> list[CheckpointMetadata]:
        # Only a missing or corrupt metadata is skipped. A store that cannot be reached raises:
        # skipping a checkpoint it could not read would let its shared files look unreferenced.
        def load(item: tuple[CheckpointId, str]) -> CheckpointMetadata | None:
            try:
                return self._load_metadata(*item)
            except (FileNotFoundError, CorruptCheckpointError):
                return None

        return [m for m in self._parallel(load, self._checkpoint_directories()) if m is not None]

    def _load_metadata(self, checkpoint_id: CheckpointId, directory: str) -> CheckpointMetadata:
        where = f"{directory}/{METADATA_FILE}"
        raw = self._get_bytes(where)
        try:
            metadata = decode_metadata(raw)
        except CorruptCheckpointError as error:
            raise CorruptCheckpointError(f"{where}: {error}") from None
        if metadata.checkpoint_id != checkpoint_id:
            raise CorruptCheckpointError(
                f"{where} names checkpoint {metadata.checkpoint_id}, not {checkpoint_id} of its directory"
            )
        return metadata

    def _inspect(
        self, checkpoint_id: CheckpointId, directory: str, *, verify_files: bool = True
    ) -> _Inspection:
        try:
            metadata = self._load_metadata(checkpoint_id, directory)
        except FileNotFoundError:
            return _Inspection(Invalid(checkpoint_id, NO_METADATA, CandidateStatus.INCOMPLETE), "incomplete", None)
        except CorruptCheckpointError as error:
            return _Inspection(Invalid(checkpoint_id, str(error)), "corrupt", None)
        if verify_files:
            for problem in self._parallel(self.file_problem, metadata.files()):
                if problem is not None:
                    return _Inspection(Invalid(checkpoint_id, problem), "corrupt", metadata)
        return _Inspection(Valid(checkpoint_id, metadata), "completed", metadata)


def _verifies(path: Path, handle: StateHandle) -> bool:
    try:
        with open(path, "rb") as file:
            if os.fstat(file.fileno()).st_size != handle.size:
                return False
            return hashlib.file_digest(file, "sha256").hexdigest() == handle.sha256
    except FileNotFoundError:
        return False


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
