"""A transactional file sink (Flink's ``FileSink``): exactly-once output through two-phase commit.

Files of subtask *s* in ``directory`` (*seq* counts the files of that subtask, from 0; *writer* is
the writer id, 12 hex digits drawn afresh for every writer built: at a start, at every restore):

- ``.{prefix}-{s}-{seq}.{writer}.inprogress``: hidden, being written since the last barrier;
- ``.{prefix}-{s}-{seq}.{writer}.pending``: hidden, closed and durable, waiting for its checkpoint to
  complete (the committable of ``flowstate.checkpoint.commit``);
- ``{prefix}-{s}-{seq}.{writer}{suffix}``: visible, committed. Only these are output.

Committed output is never replaced. The writer id makes a name unique across runs and attempts (a
``--fresh`` run, a writer whose state was dropped, starts at *seq* 0 again under another id), and
publishing is create-exclusive: a hard link from the pending name to the visible one, which fails
when the visible name exists, then the pending name is removed. A visible file that is not the
pending file's own (a crash between link and unlink leaves both names on one file) stops the writer
with ``CommittedOutputExistsError``. Names without a writer id (``.{prefix}-{s}-{seq}.pending``,
written by earlier versions) are still committed and cleaned up.

Step (1) ``pre_commit(n)``: if anything was written since the last barrier, flush + fsync the
in-progress file, rename it to pending, fsync the directory, record it under *n* in the ``CommitLog``
and move to the next *seq*. The rename is durable before the snapshot that names it is taken, so a
completed checkpoint never names a file that a crash can lose.

Step (2) ``commit(n)``: publish every pending file recorded under an id ≤ *n* under its visible
name (link, then unlink the pending name), in checkpoint order, then fsync the directory. Idempotent:
a pending file that is gone while its visible file exists was committed before; both names on one
file are a publish cut short. If both are gone the output is lost: ``LostOutputError``.

Step (3) restore from a snapshot ``{"seq", "pending"}``: first commit everything it names (that
checkpoint completed), then delete this subtask's hidden files that it does not name (they belong to
checkpoints that never completed; the replay writes their records again), then continue at ``seq``.
A writer built without a snapshot cleans up the same way, with nothing to commit: no checkpoint of
this job completed. Files of other subtasks are never touched.

Step (4) restore at another parallelism *p* (``redistribute_state``): every pending file of every
old writer goes to exactly one new writer (old *j*'s to new ``j % p``), which commits it as in Step
(3). The *seq* reached by every subtask index ever used travels with the state, so new subtask *i*
continues where subtask *i* stopped (in this run or in an earlier one at a higher parallelism) and no
new file takes the name of a committed one. An index that no longer runs is *retired*: writer
``r % p`` deletes its hidden leftovers as its own and keeps its *seq* in its snapshot (``retired``).

Records are written as JSON Lines by default (UTF-8, ``ensure_ascii=False``, compact separators;
tuples become arrays); ``encoder`` (record → str without newline) replaces that. Each batch is one
write call. By default a batch is encoded at once by orjson (``json_lines_batch``), which writes the
lines ``json.dumps`` writes, except that a float in exponent form may be written in another notation
of the same number (``1e16`` for ``1e+16``); a batch orjson would write otherwise is encoded record
by record with ``json``, so what is refused and how is the same either way. ``committed_output()`` lists the
visible files of this sink's prefix and suffix: what a
start from scratch would mix with (``flowstate.checkpoint.restore``).
"""

from __future__ import annotations

import copy
import enum
import json
import os
import re
import secrets
import uuid
from collections.abc import Callable, Sequence
from typing import Any

try:
    import orjson
except ImportError:  # a dependency; without it every batch takes the json path, slower, same lines
    orjson = None  # type: ignore[assignment]

from flowstate import failpoints as fpn
from flowstate.checkpoint.commit import CommitLog, stray_outputs
from flowstate.checkpoint.ids import CheckpointId
from flowstate.errors import UnwritableRecordError

_IN_PROGRESS = ".inprogress"
_PENDING = ".pending"


_WRITER_ID = r"(?:\.[0-9a-f]{12})?"
"""The writer id part of a name (absent in names written by earlier versions)."""


class LostOutputError(RuntimeError):
    """A pending file named by a completed checkpoint is gone and was never made visible: its records
    are lost. The directory was changed behind the sink's back."""


class CommittedOutputExistsError(RuntimeError):
    """Publishing a pending file found another file under its visible name. Committed output is never
    replaced: the writer stops and both files are left as they are."""


def json_lines_encoder() -> Callable[[Any], str]:
    """The default encoder: ``json.dumps(record, ensure_ascii=False, separators=(",", ":"))``, which
    also writes an enum as its value and a UUID as its string (as orjson does, see
    ``json_lines_batch``)."""
    return json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), default=_json_default).encode


def json_lines_batch(records: list[Any]) -> bytes | None:
    """The lines ``json_lines_encoder`` gives ``records`` (each ending in ``\n``, UTF-8), encoded at
    once by orjson; ``None`` when orjson would write the batch otherwise, for ``json`` to encode it
    record by record.

    orjson writes what json writes for ``str``, ``int``, ``float``, ``bool``, ``None``, tuples,
    lists, dicts with ``str`` keys, enums and UUIDs (``json_lines_encoder`` writes these two as
    orjson does), but for: subclasses, dataclasses and datetimes (passed through to a ``default``
    that refuses them), an int beyond 64 bits, a string that does not encode as UTF-8 and a dict key
    that is not a ``str`` (orjson raises), and NaN or an infinity, which orjson writes as ``null``
    where json writes ``NaN``: a batch whose output holds ``null`` goes to json too. The type checks
    are orjson's own: a check in Python would cost more than the encoding.

    One call encodes the batch as a JSON array with a raw newline between the records (an
    ``orjson.Fragment``); a raw newline appears nowhere else in compact JSON (strings escape it), so
    the array's top-level ``,\n,`` separators are exactly the record boundaries. One output per
    batch: orjson's many small outputs of a record at a time are slow to keep alive together."""
    if orjson is None:
        return None
    items = [_LINE_BREAK] * (2 * len(records) - 1)
    items[::2] = records
    try:
        data = orjson.dumps(items, default=_refuse, option=_ORJSON_OPTIONS)
    except orjson.JSONEncodeError:
        return None
    if b"null" in data:
        return None
    return data[1:-1].replace(b",\n,", b"\n") + b"\n"


def _refuse(value: Any) -> Any:
    raise TypeError(f"{type(value).__name__} is left to json")


if orjson is not None:
    _LINE_BREAK = orjson.Fragment(b"\n")
    _ORJSON_OPTIONS = orjson.OPT_PASSTHROUGH_SUBCLASS | orjson.OPT_PASSTHROUGH_DATACLASS | orjson.OPT_PASSTHROUGH_DATETIME


def _json_default(value: Any) -> Any:
    """What ``json_lines_encoder`` writes for an enum (its value) and a UUID (its string), as orjson
    does; anything else json cannot write is refused as json refuses it."""
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, uuid.UUID):
        return str(value)
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


class FileSink:
    """Transactional file output (see the module rules)."""

    __slots__ = ("_directory", "_prefix", "_suffix", "_encoder", "_name")

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        prefix: str = "part",
        suffix: str = ".jsonl",
        encoder: Callable[[Any], str] | None = None,
        name: str | None = None,
    ) -> None:
        if not prefix or "/" in prefix or os.sep in prefix:
            raise ValueError(f"FileSink: prefix must be a non-empty file name part, got {prefix!r}")
        if "/" in suffix or os.sep in suffix:
            raise ValueError(f"FileSink: suffix must not contain a path separator, got {suffix!r}")
        if encoder is not None and not callable(encoder):
            raise TypeError(f"FileSink: encoder must be callable (record → str), got {encoder!r}")
        self._directory = os.fspath(directory)
        self._prefix = prefix
        self._suffix = suffix
        self._encoder = encoder
        self._name = f"file-sink:{self._directory}" if name is None else name

    @property
    def name(self) -> str:
        return self._name

    @property
    def transactional(self) -> bool:
        return True

    def redistribute_state(self, states: Sequence[Any | None], parallelism: int) -> list[dict[str, Any]]:
        """Step (4): the resume states of ``parallelism`` writers from the snapshots of every writer
        of the restored checkpoint (index = old subtask; ``None`` for a writer without one)."""
        if parallelism < 1:
            raise ValueError(f"FileSink {self._name!r}: parallelism must be ≥ 1, got {parallelism}")
        seqs: dict[int, int] = {}
        pending: list[list[tuple[int, str]]] = [[] for _ in range(parallelism)]
        for j, state in enumerate(states):
            if state is None:
                continue
            seq, entries, retired = _parse_snapshot(state)
            for index, reached in [(j, seq), *retired.items()]:
                seqs[index] = max(seqs.get(index, 0), reached)
            pending[j % parallelism].extend(entries)
        return [
            {
                "seq": seqs.get(i, 0),
                "pending": sorted(pending[i], key=lambda entry: entry[0]),
                "retired": {r: seq for r, seq in sorted(seqs.items()) if r >= parallelism and r % parallelism == i},
            }
            for i in range(parallelism)
        ]
    @property
    def directory(self) -> str:
        """Where committed files appear."""
        return self._directory

    def with_directory(self, directory: str | os.PathLike[str]) -> FileSink:
        """The same sink (same class, prefix, suffix, encoder and name) writing to ``directory``:
        how a test harness gives each run of a job its own output."""
        clone = copy.copy(self)
        clone._directory = os.fspath(directory)
        return clone

    def build_writer(self, subtask: int, parallelism: int, resume_state: Any | None) -> FileSinkWriter:
        if not 0 <= subtask < parallelism:
            raise ValueError(f"FileSink {self._name!r}: subtask {subtask} outside 0..{parallelism - 1}")
        os.makedirs(self._directory, exist_ok=True)
        encoder = self._encoder if self._encoder is not None else json_lines_encoder()
        return FileSinkWriter(self._directory, self._prefix, self._suffix, subtask, encoder, resume_state,
                              secrets.token_hex(6), json_lines_batch if self._encoder is None else None)

    def committed_output(self) -> tuple[str, ...]:
        """The committed files of this sink's prefix and suffix in its directory, sorted (of any
        subtask, writer or run; empty when the directory does not exist)."""
        visible = re.compile(rf"{re.escape(self._prefix)}-[0-9]+-[0-9]+{_WRITER_ID}{re.escape(self._suffix)}")
        try:
            names = os.listdir(self._directory)
        except FileNotFoundError:
            return ()
        return tuple(sorted(n for n in names if visible.fullmatch(n)))


class FileSinkWriter:
    """The files of one subtask. State: the next *seq*, the ``CommitLog`` of pending files, and the
*seq* of every retired subtask index it looks after (Step 4)."""

    __slots__ = (
        "_directory", "_prefix", "_suffix", "_subtask", "_encode", "_seq", "_log", "_file", "_hidden", "_retired",
        "_failpoints", "_writer_id", "_encode_batch",
    )

    def __init__(
        self,
        directory: str,
        prefix: str,
        suffix: str,
        subtask: int,
        encode: Callable[[Any], str],
        resume_state: Any | None,
        writer_id: str,
        encode_batch: Callable[[list[Any]], bytes | None] | None = None,
    ) -> None:
        """``encode_batch``: the lines of a whole batch at once, or ``None`` to leave that batch to
        ``encode``; it must give what ``encode`` would."""
        if not re.fullmatch(r"[0-9a-f]{12}", writer_id):
            raise ValueError(f"FileSink: a writer id is 12 hex digits, got {writer_id!r}")
        self._writer_id = writer_id
        self._directory = directory
        self._prefix = prefix
        self._suffix = suffix
        self._subtask = subtask
        self._encode = encode
        self._encode_batch = encode_batch
        self._file: Any = None
        self._failpoints: Any = None
        self._log: CommitLog[str] = CommitLog()
        self._seq = 0
        self._retired: dict[int, int] = {}
        named: list[str] = []
        if resume_state is not None:
            seq, pending, retired = _parse_snapshot(resume_state)
            if subtask in retired:
                raise ValueError(f"FileSink: subtask {subtask} is listed as retired in its own snapshot")
            # Step (3): the restored checkpoint completed, so what it names is committed first.
            _, to_commit = CommitLog.restore(pending)
            named = list(to_commit)
            self._publish(to_commit)
            self._seq = seq
            self._retired = retired
        indices = "|".join(str(i) for i in [subtask, *sorted(self._retired)])
        self._hidden = re.compile(
            rf"\.{re.escape(prefix)}-(?:{indices})-[0-9]+{_WRITER_ID}(?:{re.escape(_IN_PROGRESS)}|{re.escape(_PENDING)})"
        )
        existing = [n for n in os.listdir(directory) if self._hidden.fullmatch(n)]
        strays = stray_outputs(existing, named)
        for stray in strays:
            os.unlink(os.path.join(directory, stray))
        if strays:
            _fsync_directory(directory)

    def attach_failpoints(self, failpoints: Any) -> None:
        """Let tests stop this writer between the steps of a pre-commit or a commit."""
        self._failpoints = failpoints

    def write_batch(self, records: list[Any]) -> None:
        if not records:
            return
        data = self._encode_batch(records) if self._encode_batch is not None else None
        if data is None:
            data = self._encode_lines(records)
        if self._file is None:
            self._file = open(self._path(self._hidden_name(self._seq, _IN_PROGRESS)), "xb")
        self._file.write(data)

    def _encode_lines(self, records: list[Any]) -> bytes:
        """The lines of ``records``, encoded one record at a time."""
        try:
            text = "\n".join(map(self._encode, records))
        except Exception as exc:  # noqa: BLE001 - the encoder's error, with the record it failed on
            raise _unencodable(self._encode, records) or UnwritableRecordError(records, exc) from exc
        if text.count("\n") != len(records) - 1:
            raise _unencodable(self._encode, records) or ValueError(
                "FileSink: an encoded record contains a newline; one record must be one line")
        return (text + "\n").encode("utf-8")

    def pre_commit(self, checkpoint_id: int) -> None:
        if self._file is None:
            self._log = self._log.pre_commit(CheckpointId(checkpoint_id), ())
            return
        pending = self._hidden_name(self._seq, _PENDING)
        # Decided before any side effect: an illegal checkpoint id raises and changes nothing.
        log = self._log.pre_commit(CheckpointId(checkpoint_id), (pending,))
        self._close_in_progress(pending)
        self._log = log
        self._seq += 1

    def snapshot(self) -> dict[str, Any]:
        state: dict[str, Any] = {"seq": self._seq, "pending": self._log.snapshot()}
        if self._retired:
            state["retired"] = dict(self._retired)
        return state

    def commit(self, checkpoint_id: int) -> None:
        log, to_commit = self._log.complete(CheckpointId(checkpoint_id))
        self._publish(to_commit)
        self._log = log

    def finish(self) -> None:
        to_commit: list[str] = []
        if self._log.pending:
            # Everything pending, as if the newest pre-committed checkpoint completed.
            _, to_commit = self._log.complete(self._log.pending[-1][0])
        if self._file is not None:
            pending = self._hidden_name(self._seq, _PENDING)
            self._close_in_progress(pending)
            to_commit = [*to_commit, pending]
            self._seq += 1
        self._publish(to_commit)
        self._log = CommitLog()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    # ---- files -----------------------------------------------------------------------------------

    def _hidden_name(self, seq: int, kind: str) -> str:
        return f".{self._prefix}-{self._subtask}-{seq}.{self._writer_id}{kind}"

    def _path(self, name: str) -> str:
        return os.path.join(self._directory, name)

    def _close_in_progress(self, pending: str) -> None:
        """Step (1): make the in-progress file durable under its pending name."""
        file = self._file
        file.flush()
        os.fsync(file.fileno())
        file.close()
        self._file = None
        if self._failpoints:
            self._failpoints.hit(fpn.SINK_MID_PRE_COMMIT)
        os.rename(self._path(self._hidden_name(self._seq, _IN_PROGRESS)), self._path(pending))
        _fsync_directory(self._directory)

    def _publish(self, pending_names: list[str]) -> None:
        """Step (2): give each pending file its visible name, create-exclusive and idempotently, in
        order: link the visible name to the file (fails if that name exists), then unlink the pending
        name. A crash between the two leaves both names on one file, which the next commit completes."""
        if not pending_names:
            return
        for pending in pending_names:
            final = pending[1:-len(_PENDING)] + self._suffix
            source, target = self._path(pending), self._path(final)
            try:
                os.link(source, target)
            except FileNotFoundError:
                if not os.path.exists(target):
                    raise LostOutputError(
                        f"FileSink: neither {pending!r} nor {final!r} exists in {self._directory!r}; "
                        "the output of a completed checkpoint is lost"
                    ) from None
                continue  # committed before
            except FileExistsError:
                if not os.path.samefile(source, target):
                    raise CommittedOutputExistsError(
                        f"FileSink: cannot publish {pending!r} in {self._directory!r}: the committed file "
                        f"{final!r} exists and is not this file; committed output is never replaced. "
                        "Another writer uses this name: give each job its own directory or prefix"
                    ) from None
            if self._failpoints:
                self._failpoints.hit(fpn.SINK_MID_COMMIT)
            os.unlink(source)
        _fsync_directory(self._directory)


def _unencodable(encode: Callable[[Any], str], records: list[Any]) -> UnwritableRecordError | None:
    """The error for the first of ``records`` that ``encode`` fails on or turns into more than one
    line (found again, one record at a time, only once a batch failed)."""
    for record in records:
        try:
            line = encode(record)
        except Exception as exc:  # noqa: BLE001
            return UnwritableRecordError(record, exc)
        if not isinstance(line, str):
            return UnwritableRecordError(record, TypeError(f"the encoder returned a {type(line).__name__}, not a str"))
        if "\n" in line:
            return UnwritableRecordError(record, ValueError("its encoding contains a newline; one record must be one line"))
    return None


def _parse_snapshot(state: Any) -> tuple[int, list[tuple[int, str]], dict[int, int]]:
    try:
        seq = state["seq"]
        pending = [(int(cid), str(name)) for cid, name in state["pending"]]
        retired = dict(state.get("retired") or {})
    except (TypeError, KeyError, ValueError, AttributeError) as error:
        raise ValueError(f"FileSink: not a file sink snapshot: {state!r}") from error
    for value in (seq, *retired.keys(), *retired.values()):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"FileSink: snapshot seq and retired subtasks must be ints ≥ 0, got {value!r}")
    for _, name in pending:
        if not (name.startswith(".") and name.endswith(_PENDING)) or os.sep in name or "/" in name:
            raise ValueError(f"FileSink: snapshot names {name!r}, which is not a pending file")
    return seq, pending, retired


def _fsync_directory(directory: str) -> None:
    """Make renames and deletions in ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
