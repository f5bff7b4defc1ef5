"""Fixtures of the storage tests: a ``Harness`` per blob store (local directory, S3 through moto,
memory), so that one conformance suite runs over all three.

A harness opens storages on one location and reaches the stored files *around* the storage (to
damage, delete or plant them), as a crash, a disk or another process would.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest

from flowstate.storage import open_storage
from flowstate.storage.memory import MemoryBlobStore, MemoryCheckpointStorage

from .object_store import (
    ACCESS_KEY,
    BUCKET,
    REGION,
    SECRET_KEY,
    Faults,
    FaultyProxy,
    MotoServer,
    require_moto,
    unique_prefix,
)


@pytest.fixture(scope="session")
def moto() -> Iterator[MotoServer]:
    server = require_moto()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def proxy(moto: MotoServer) -> Iterator[FaultyProxy]:
    port = int(moto.endpoint.rsplit(":", 1)[1])
    faulty = FaultyProxy(("127.0.0.1", port))
    yield faulty
    faulty.stop()


@pytest.fixture
def faults(proxy: FaultyProxy) -> Iterator[Faults]:
    proxy.faults.reset()
    yield proxy.faults
    proxy.faults.reset()


class Harness:
    """One storage location and a way around the storage to its files."""

    kind: str

    def open(self, **options: Any) -> Any:
        raise NotImplementedError

    def read(self, path: str) -> bytes:
        raise NotImplementedError

    def write(self, path: str, data: bytes) -> None:
        raise NotImplementedError

    def delete(self, path: str) -> None:
        raise NotImplementedError

    def paths(self) -> list[str]:
        """Every stored file, sorted (temporary files included)."""
        raise NotImplementedError

    def uploads(self, path: str) -> int:
        """How many times a file was written under its final name ``path`` since the harness began."""
        raise NotImplementedError

    def exists(self, path: str) -> bool:
        return path in self.paths()


class LocalHarness(Harness):
    kind = "local"

    def __init__(self, root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.root = root
        self.location = str(root)
        self._uploads: list[str] = []
        real_replace = os.replace

        def replace(source: Any, target: Any) -> None:
            real_replace(source, target)
            try:
                self._uploads.append(Path(target).resolve().relative_to(self.root.resolve()).as_posix())
            except ValueError:
                pass

        monkeypatch.setattr(os, "replace", replace)

    def open(self, **options: Any) -> Any:
        return open_storage(self.location, **options)

    def read(self, path: str) -> bytes:
        return (self.root / path).read_bytes()

    def write(self, path: str, data: bytes) -> None:
        (self.root / path).parent.mkdir(parents=True, exist_ok=True)
        (self.root / path).write_bytes(data)

    def delete(self, path: str) -> None:
        (self.root / path).unlink()

    def paths(self) -> list[str]:
        return sorted(p.relative_to(self.root).as_posix() for p in self.root.rglob("*") if p.is_file())

    def uploads(self, path: str) -> int:
        return self._uploads.count(path)


class S3Harness(Harness):
    kind = "s3"

    def __init__(self, moto: MotoServer, proxy: FaultyProxy, cache: Path) -> None:
        import obstore
        from obstore.store import S3Store

        self._obstore = obstore
        self.prefix = unique_prefix()
        self.location = f"s3://{BUCKET}/{self.prefix}"
        self.proxy = proxy
        self.options: dict[str, Any] = {
            "endpoint": proxy.endpoint,
            "region": REGION,
            "access_key_id": ACCESS_KEY,
            "secret_access_key": SECRET_KEY,
            "max_retries": 3,
            "initial_backoff": 0.01,
            "max_backoff": 0.05,
            "retry_timeout": 20,
            "cache_dir": cache,
        }
        # Around the storage: straight to moto, not through the faulty proxy.
        self.direct = S3Store(
            BUCKET, prefix=self.prefix, endpoint=moto.endpoint, region=REGION,
            access_key_id=ACCESS_KEY, secret_access_key=SECRET_KEY, client_options={"allow_http": True},
        )

    def open(self, **options: Any) -> Any:
        return open_storage(self.location, **{**self.options, **options})

    def read(self, path: str) -> bytes:
        return bytes(self._obstore.get(self.direct, path).bytes())

    def write(self, path: str, data: bytes) -> None:
        self._obstore.put(self.direct, path, data)

    def delete(self, path: str) -> None:
        self._obstore.delete(self.direct, path)

    def paths(self) -> list[str]:
        return sorted(meta["path"] for batch in self._obstore.list(self.direct) for meta in batch)

    def uploads(self, path: str) -> int:
        wanted = f"/{BUCKET}/{self.prefix}/{path}"
        count = 0
        for method, target in list(self.proxy.faults.requests):
            parts = urlsplit(target)
            if method == "PUT" and not parts.query and unquote(parts.path) == wanted:
                count += 1
            elif method == "POST" and unquote(parts.path) == wanted and parts.query.startswith("uploadId="):
                count += 1  # the completion of a multipart upload
        return count


class MemoryHarness(Harness):
    kind = "memory"

    def __init__(self, cache: Path) -> None:
        self.store = MemoryBlobStore()
        self.cache = cache
        self.location = "memory"

    def open(self, **options: Any) -> Any:
        return MemoryCheckpointStorage(self.store, cache_dir=self.cache, **options)

    def read(self, path: str) -> bytes:
        return self.store.get(path)

    def write(self, path: str, data: bytes) -> None:
        self.store.plant(path, data)

    def delete(self, path: str) -> None:
        self.store.delete([path])

    def paths(self) -> list[str]:
        return self.store.paths()

    def uploads(self, path: str) -> int:
        return self.store.puts.count(path)


@pytest.fixture(params=["local", "s3", "memory"])
def harness(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Harness:
    if request.param == "local":
        return LocalHarness(tmp_path / "checkpoints", monkeypatch)
    if request.param == "memory":
        return MemoryHarness(tmp_path / "cache")
    moto = request.getfixturevalue("moto")
    proxy = request.getfixturevalue("proxy")
    request.getfixturevalue("faults")
    return S3Harness(moto, proxy, tmp_path / "cache")
