"""Checkpoint storage: where checkpoint state files, shared files and metadata are made durable.

``open_storage(url_or_path, **options)`` opens the adapter a location names: a directory
(``LocalCheckpointStorage``) or ``s3://bucket/prefix`` (``S3CheckpointStorage``). The port and its
contract are in ``storage.base``.
"""

from flowstate.storage.factory import open_storage

__all__ = ["open_storage"]
