"""``open_storage``: the checkpoint storage named by a path or URL.

* ``s3://bucket/prefix`` opens ``S3CheckpointStorage`` (needs the ``s3`` extra: ``obstore``); the
  options are its keyword arguments (``endpoint``, ``region``, ``access_key_id``, …, see its
  constructor), unset ones come from the ``AWS_*`` environment variables.
* ``file:///path``, or a plain path, opens ``LocalCheckpointStorage``; its only option is
  ``failpoints``.

Any other scheme, or an option the chosen storage does not know, raises ``ValueError`` naming it.
"""

from __future__ import annotations

import inspect
import os
from urllib.parse import unquote, urlsplit

from flowstate.storage.base import CheckpointStorage
from flowstate.storage.local import LocalCheckpointStorage

_LOCAL_OPTIONS = frozenset({"failpoints"})


def is_url(location: str | os.PathLike[str]) -> bool:
    """Whether ``location`` is a URL (``scheme://…``) rather than a path."""
    return isinstance(location, str) and "://" in location


def open_storage(url_or_path: str | os.PathLike[str], **options: object) -> CheckpointStorage:
    """The checkpoint storage at ``url_or_path`` (see the module docstring)."""
    if not is_url(url_or_path):
        return _local(url_or_path, options)
    scheme = urlsplit(str(url_or_path)).scheme
    if scheme == "file":
        parts = urlsplit(str(url_or_path))
        if parts.netloc not in ("", "localhost"):
            raise ValueError(f"file URL {url_or_path!r} names a host: use file:///path")
        return _local(unquote(parts.path), options)
    if scheme in ("s3", "s3a"):
        try:
            from flowstate.storage.s3 import S3BlobStore, S3CheckpointStorage
        except ImportError as error:
            raise ValueError(
                f"S3 checkpoint storage needs the obstore package ({error}): "
                "pip install 'flowstate[s3]'"
            ) from None
        known = (set(inspect.signature(S3BlobStore).parameters) | {"cache_dir"}) - {"url"}
        unknown = sorted(set(options) - known)
        if unknown:
            raise ValueError(
                f"unknown S3 storage option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
            )
        url = str(url_or_path)
        if scheme == "s3a":
            url = "s3" + url[len("s3a"):]
        return S3CheckpointStorage(url, **options)  # type: ignore[arg-type]
    raise ValueError(
        f"unsupported checkpoint storage URL {str(url_or_path)!r}: use a directory, file:///path "
        "or s3://bucket/prefix"
    )


def _local(path: str | os.PathLike[str], options: dict[str, object]) -> LocalCheckpointStorage:
    unknown = sorted(set(options) - _LOCAL_OPTIONS)
    if unknown:
        raise ValueError(
            f"unknown local storage option(s) {', '.join(unknown)}; known: {', '.join(sorted(_LOCAL_OPTIONS))}"
        )
    return LocalCheckpointStorage(path, **options)  # type: ignore[arg-type]
