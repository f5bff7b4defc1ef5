"""Embedded RocksDB keyed state backend (through ``rocksdict``), with incremental snapshots.

Modules: ``layout`` (row keys), ``cache`` (the object cache and its frozen layers), ``states`` (the
state objects), ``snapshot`` (the synchronous and asynchronous parts of a snapshot), ``backend``
(the database, restore, close).

**Layout.** One database per operator subtask, in a working directory of its own; one column family
per state (``"state:" + name``). Every row key starts with the **key prefix** of its key (``layout``):
the key group (two bytes, big-endian), the length of the key's canonical encoding (a varint) and that
encoding (``flowstate.state.codec``). The prefix is prefix-free, so the rows of one key are exactly
the rows that start with its prefix, and the rows of a key-group range are one contiguous range:

- value and reducing state: the row key is the prefix;
- list state: prefix + an 8-byte big-endian sequence number, one row per element in the order they
  were added (``add`` writes one row, never reads the list);
- map state: prefix + the canonical encoding of the map key, one row per entry.

Row values are ``codec.ValueCodec`` encodings (a tag byte, then msgpack or pickle). Writes skip the
write-ahead log: durability comes from checkpoints. SST files are compressed with zstd when the
bundled RocksDB has it (it does in rocksdict 0.3), else lz4, else not at all (``compression`` says
which), and carry Bloom filters for point lookups.

**Object cache** (``cache``). Rows read or written are kept as **objects** in a dict per state, the
top layer, so that a change made in place to a value read from state is stored, as on the heap
(rule 2 of ``flowstate.state.values``), and a key updated by many records in a row costs dict
operations and one encoding per flush. Between batches a top layer over its limit is encoded and
written as one ``WriteBatch``. Before a batch of a keyed operator, the rows of the batch's keys of the
value and reducing states that miss the cache may be read with one multi-get per state (a
**prefetch**, when the rows the last batches read from RocksDB say it pays), so that the records'
reads hit the cache; a row found nowhere is cached as absent and not looked for again.

**Snapshots** (``snapshot``). The synchronous part only freezes the top layers (O(states)); the
asynchronous part writes them, flushes the memtables and creates a RocksDB checkpoint (hard links),
whose SST files are shared files of incremental checkpoints. Until the checkpoint exists the task
thread reads through the frozen layers, copying on read, and writes nothing to RocksDB, so a snapshot
is the state at its barrier (rule 1).

``data`` (format ``rocksdb-v1``): ``{"format", "max_parallelism", "key_groups": [start, stop],
"states": {name: kind}, "sst": {file name: file key}, "inline": {file name: bytes},
"next_sequence": int, "full": bool}``.

**Restore** (``backend``). Of the snapshots given, the one that shares the most key groups with this
subtask is the base: its SSTs are hard-linked (or copied) into the new database directory under their
own names, its small files written, and the database opened as it is; when it holds key groups this
subtask does not own, they are deleted with two range deletes (cheap: RocksDB drops them in later
compactions). Every other snapshot that shares key groups is opened read-only in a scratch directory
and only the rows of the shared key-group range are read (range scans) and written. So a restore at
the same parallelism opens the files in place, and a rescale reads only its ranges.
"""

from flowstate.state.rocksdb.backend import (
    COMPRESSIONS,
    DEFAULT_WRITE_BATCH_BYTES,
    DEFAULT_WRITE_BATCH_ENTRIES,
    DEFAULT_WRITE_BUFFER_SIZE,
    FORMAT,
    PREFETCH_MODES,
    RocksDBBackendFactory,
    RocksDBKeyedStateBackend,
)
from flowstate.state.rocksdb.cache import CF_PREFIX
from flowstate.state.rocksdb.layout import key_prefix, split_prefix, successor
from flowstate.state.rocksdb.snapshot import RocksDBSnapshot
from flowstate.state.rocksdb.states import (
    RocksListState,
    RocksMapState,
    RocksReducingState,
    RocksValueState,
)

__all__ = [
    "CF_PREFIX",
    "COMPRESSIONS",
    "DEFAULT_WRITE_BATCH_BYTES",
    "DEFAULT_WRITE_BATCH_ENTRIES",
    "DEFAULT_WRITE_BUFFER_SIZE",
    "FORMAT",
    "PREFETCH_MODES",
    "RocksDBBackendFactory",
    "RocksDBKeyedStateBackend",
    "RocksDBSnapshot",
    "RocksListState",
    "RocksMapState",
    "RocksReducingState",
    "RocksValueState",
    "key_prefix",
    "split_prefix",
    "successor",
]
