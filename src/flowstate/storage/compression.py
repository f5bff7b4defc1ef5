"""Compression of state files: the codec a ``StateHandle`` records.

Codecs:

* ``"none"``: the bytes as given.
* ``"zstd"``: a Zstandard frame (``zstandard`` package) at level ``ZSTD_LEVEL``, with the content
  size in the frame header, so that decompression allocates once.

Level 1 was chosen by measurement on a pickled ``dict`` of one million ``str`` keys
(``"key-<i>-<random>"``) to ``int`` values (23.6 MiB), median of 5, on one core of the reference
machine: level 1 compresses 2.14x at about 500 MiB/s (47 ms) and decompresses at about 1.3 GiB/s;
levels 2, 3 and 4 compress *less* well on this data (2.01x, 1.97x, 1.95x) and 1.4 to 3.6 times
slower (365, 201, 139 MiB/s). Level 1 halves the bytes written. zstd lets go of the interpreter
lock while it compresses, so on a machine with a core to spare it does not slow the task thread,
unlike the pickling before it (a heap snapshot of a million counts: about 65 ms, holding the lock;
``flowstate.state.heap_pickling``).

``compress`` and ``decompress`` raise ``ValueError`` for an unknown codec name;
``decompress`` raises ``CorruptCheckpointError`` for bytes that are not a valid frame.
"""

from __future__ import annotations

from flowstate.storage.base import CorruptCheckpointError

CODECS = ("none", "zstd")
ZSTD_LEVEL = 1


def check_codec(codec: object) -> str:
    """``codec`` when it names a known codec; ``ValueError`` naming the known ones otherwise."""
    if not isinstance(codec, str) or codec not in CODECS:
        raise ValueError(f"unknown compression codec {codec!r}: use one of {', '.join(CODECS)}")
    return codec


def compress(codec: str, data: bytes) -> bytes:
    """``data`` compressed with ``codec``."""
    if check_codec(codec) == "none":
        return data if isinstance(data, bytes) else bytes(data)
    import zstandard

    return zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_content_size=True).compress(data)


def decompress(codec: str, data: bytes) -> bytes:
    """The bytes that ``compress(codec, …)`` turned into ``data``."""
    if check_codec(codec) == "none":
        return data if isinstance(data, bytes) else bytes(data)
    import zstandard

    try:
        return zstandard.ZstdDecompressor().decompress(data)
    except zstandard.ZstdError as error:
        raise CorruptCheckpointError(f"not a valid zstd frame: {error}") from None
