"""Checkpoint storage: where checkpoint state files, shared files and metadata are made durable.

``open_storage(url_or_path, **options)`` opens the storage a location names: a directory
(``LocalCheckpointStorage``) or ``s3://bucket/prefix`` (``S3CheckpointStorage``). The port and its
contract are in ``storage.base``; every storage is the checkpoint catalogue (``storage.catalogue``)
over a blob store (``storage.blobs``: a directory, S3, or memory for tests).
"""

from flowstate.storage.factory import open_storage

__all__ = ["open_storage"]
