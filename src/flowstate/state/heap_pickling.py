"""How a full heap snapshot pickles the entries of one state (Step 3 of ``flowstate.state.memory``).

Rules:

1. **One pickler call, fast mode** (``fast_chunks``): the entries are pickled as one dict by one
   call of a pickler in fast mode (no memo), the usual way. Per entry that costs about 60 ns where
   chunks of 10,000 entries, each copied into a dict and pickled with a memo, cost about 200 ns (a
   million entries of a count: 63 ms of CPU against 200 ms, all of it holding the interpreter lock
   against the task thread; one call *with* a memo costs 290 ms: a memo of a million objects no
   longer fits in the caches).
2. **The lock is let go frame by frame**: the pickler writes each frame (~64 KiB) to its file as
   it goes, and that file's ``write`` is Python code (``_Frames``), where a thread waiting for the
   interpreter lock gets it. So the one call never holds the lock for long, as the chunks did not.
3. **Exactness** is pickle's: every value comes back of its exact type (``int``, ``bool``,
   ``float``, ``tuple``, ``list``, ``str``, ``bytes``, ``bytearray``, subclasses, any picklable
   class), the entries in their order. Without a memo, an object reachable twice from one state is
   written twice and comes back as two equal objects, as RocksDB's per-value encoding gives it back
   and as chunks did across their bounds: no backend promises more.
4. **What fast mode cannot pickle is pickled as before** (``memo_chunks``: chunks of
   ``chunk_entries`` entries, each with a memo): a cyclic value (fast mode raises ``ValueError``),
   a value that needs the memo to end its recursion, and some 50 ``frozenset`` objects or more
   (CPython without the fix of gh-146059: fast mode never leaves a frozenset's nesting level, and
   ends in a ``KeyError`` or a false ``ValueError``; what it wrote before it raised is dropped). Fast
   mode only raises, it never writes wrong bytes: its nesting count only serves to detect cycles.
   The backend then pickles that state so from the next snapshot on (``HeapSnapshot``).
5. Both write the same thing, pickled dicts of entries; a reader cannot tell them apart, and reads
   snapshots written before (chunks of 10,000 entries) the same way.
"""

from __future__ import annotations

import itertools
import pickle
from typing import Any

__all__ = ["fast_chunks", "memo_chunks"]


class _Frames:
    """The file ``fast_chunks`` pickles into (rule 2): the frames the pickler writes, in order."""

    __slots__ = ("parts",)

    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def write(self, data: bytes) -> int:
        self.parts.append(data)
        return len(data)


def fast_chunks(entries: dict[Any, Any]) -> list[bytes] | None:
    """Rules 1 and 2: ``entries`` pickled as one chunk; ``None`` when fast mode cannot (rule 4)."""
    frames = _Frames()
    pickler = pickle.Pickler(frames, protocol=pickle.HIGHEST_PROTOCOL)
    try:
        pickler.fast = True  # documented as deprecated since Python 3.0, and still there
        pickler.dump(entries)
    except Exception:  # noqa: BLE001 - rule 4: whatever fast mode raises, pickling with a memo decides
        return None
    return [b"".join(frames.parts)]


def memo_chunks(entries: dict[Any, Any], size: int) -> list[bytes]:
    """Rule 4: ``entries`` as pickled dicts of at most ``size`` entries, each pickled with a memo."""
    items = iter(entries.items())
    chunks = []
    while chunk := dict(itertools.islice(items, size)):
        chunks.append(pickle.dumps(chunk, protocol=pickle.HIGHEST_PROTOCOL))
    return chunks
