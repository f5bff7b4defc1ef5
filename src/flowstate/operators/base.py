"""Runtime operators: what each node of the dataflow does to a batch of records.

Contract of every operator, in the order the task calls it:

1. ``open(resume_state)``: restore from the state assigned to this subtask from the restored
   checkpoint (``None`` on a fresh start; ``flowstate.task.assignment``), then open user
   functions.
2. ``process_batch(batch)`` for every input batch, returning the output batch (a new list; the
   input list is never changed) or ``None`` for a sink.
3. ``snapshot(checkpoint_id)``: the synchronous part, between two batches; returns a
   ``SnapshotPart`` whose ``materialize()`` (the asynchronous part) yields a picklable value, or
   ``None`` when the operator has no state. A keyed operator returns the ``KeyedSnapshot`` of its
   state backend (``flowstate.state.backend``): its ``materialize()`` yields ``SnapshotParts``, and
   its ``release()`` is to be called once the parts are stored. Its ``open`` takes back a
   ``RestoredState`` (or the ``SnapshotParts`` as stored, or a list of either after a rescale).
4. ``notify_complete(id)`` / ``notify_aborted(id)`` whenever the coordinator says so.
5. ``end_of_input()`` once every input ended; ``close()`` last, always.
6. ``on_watermark(event)`` when the task's watermark advances or changes status, in order with the
   batches: returns the records it emits (timers and windows that fired) and the watermark to pass
   on downstream (``None``: swallowed). Operators with ``wants_ticks`` get ``on_tick(wall)`` with
   the processing time between batches, and return the same. (``flowstate.operators.windows``,
   ``flowstate.operators.timers``.)

A user function that raises inside ``process_batch`` is reported as ``UserFunctionError`` naming the
operator and the record: the loops keep the record in a local that survives the exception, so
nothing is re-run to find it.

``process`` (of a ``ProcessFunction``) and the function of ``flat_map`` return the records to emit
as an iterable: a generator (``yield``), a list, or ``None`` for nothing. A ``str``, ``bytes``,
``dict`` or ``tuple`` is refused (``returned_one_record``): iterating it would emit its characters,
bytes, keys or fields as separate records, which is never what ``return (word, n)`` meant. The test
costs one set lookup per call, of the returned object's type among the types already accepted
(``accept``); nothing is checked per record emitted.

The keyed process and reduce operators ask their backend before each batch whether it wants the
batch's keys ahead (``wants_prefetch``, rule 8 of ``flowstate.state.backend``); if so they compute
every key first (``_Keyed.keys_of``), hand them to ``prefetch`` and run the records with them, and a
key selector that fails on a record still fails the batch there, after the records before it.

The batch loops of map, filter, flat_map, process and reduce look alike on purpose: each is the hot
loop of its operator, written out with its locals bound so that a record costs one call of the user
function and little else; a shared loop would add a call per record.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from flowstate import failpoints as fp_names
from flowstate.clock import Clock, SystemClock, wall_function
from flowstate.errors import UnwritableRecordError, UserFunctionError
from flowstate.failpoints import Failpoints
from flowstate.functions import ProcessFunction, RuntimeContext, copy_for_subtask
from flowstate.state.backend import BackendFactory, KeyedSnapshot, StateError, as_restored
from flowstate.state.keygroups import key_group_range
from flowstate.state.keys import check_key, returns_its_argument
from flowstate.state.memory import HeapKeyedStateBackend
from flowstate.state.ttl import ProcessingTtlClock, TtlStates


@dataclass(frozen=True, slots=True)
class Ready:
    """A snapshot part that is already a plain value."""

    value: Any

    def materialize(self) -> Any:
        return self.value


@dataclass(frozen=True, slots=True)
class OperatorEnv:
    subtask: int
    parallelism: int
    max_parallelism: int
    checkpoints: bool
    failpoints: Failpoints
    state_backend: BackendFactory = HeapKeyedStateBackend
    """Builds the keyed state backend of each keyed operator subtask (heap unless configured)."""
    clock: Clock | None = None
    """Processing time of timers and idleness (the system clock when not given)."""


class Operator:
    stateful = False
    wants_ticks = False

    def __init__(self, uid: str, name: str, env: OperatorEnv) -> None:
        self.uid = uid
        self.name = name
        self.env = env

    def open(self, resume_state: Any) -> None:
        pass

    def process_batch(self, batch: list[Any]) -> list[Any] | None:
        raise NotImplementedError

    def snapshot(self, checkpoint_id: int) -> Ready | KeyedSnapshot | None:
        return None

    def notify_complete(self, checkpoint_id: int) -> None:
        pass

    def notify_aborted(self, checkpoint_id: int) -> None:
        pass

    def end_of_input(self) -> None:
        pass

    def on_watermark(self, event: Any) -> tuple[list[Any], Any]:
        """Rule 6: most operators pass a watermark on unchanged."""
        return [], event

    def on_tick(self, wall: float) -> tuple[list[Any], Any]:
        """Rule 6 (called only when ``wants_ticks``)."""
        return [], None

    def close(self) -> None:
        pass


class MapOperator(Operator):
    def __init__(self, uid: str, name: str, env: OperatorEnv, fn: Callable[[Any], Any]) -> None:
        super().__init__(uid, name, env)
        self.fn = fn

    def process_batch(self, batch: list[Any]) -> list[Any]:
        fn = self.fn
        out: list[Any] = []
        append = out.append
        record = None
        try:
            for record in batch:
                append(fn(record))
        except Exception as exc:
            raise UserFunctionError(self.name, record, exc) from exc
        return out


class FilterOperator(MapOperator):
    def process_batch(self, batch: list[Any]) -> list[Any]:
        fn = self.fn
        out: list[Any] = []
        append = out.append
        record = None
        try:
            for record in batch:
                if fn(record):
                    append(record)
        except Exception as exc:
            raise UserFunctionError(self.name, record, exc) from exc
        return out


NOT_AN_ITERABLE_OF_RECORDS = (str, bytes, dict, tuple)
"""What ``process`` and a ``flat_map`` function must not return (see the module)."""


def accept(accepted: set[type], result: Any, what: str) -> None:
    """Add the type of ``result``, returned by ``what``, to the types ``accepted`` as iterables of
    records, or raise when it is one of ``NOT_AN_ITERABLE_OF_RECORDS`` (or a subclass: a
    namedtuple is one record too). The loops call this only for a type not accepted yet, so that a
    call costs one set lookup: a full ``isinstance`` on every generator would cost several times more."""
    if isinstance(result, NOT_AN_ITERABLE_OF_RECORDS):
        raise returned_one_record(what, result)
    accepted.add(result.__class__)


def returned_one_record(what: str, result: Any) -> TypeError:
    """The error for ``result``, one of ``NOT_AN_ITERABLE_OF_RECORDS`` returned by ``what``."""
    shown = repr(result)
    if len(shown) > 80:
        shown = shown[:80] + "…"
    kind = type(result).__name__
    return TypeError(
        f"{what} returned the {kind} {shown}, which would emit each of its elements as a separate record: "
        f"yield each output record (yield {shown}) or return a list of them (return [{shown}])"
    )


class FlatMapOperator(MapOperator):
    def __init__(self, uid: str, name: str, env: OperatorEnv, fn: Callable[[Any], Any]) -> None:
        super().__init__(uid, name, env, fn)
        self.accepted: set[type] = set()
        """Types ``fn`` returned that are iterables of records (``accept``)."""

    def process_batch(self, batch: list[Any]) -> list[Any]:
        fn = self.fn
        out: list[Any] = []
        extend = out.extend
        accepted = self.accepted
        record = None
        try:
            for record in batch:
                result = fn(record)
                if result.__class__ not in accepted:
                    accept(accepted, result, "the flat_map function")
                extend(result)
        except Exception as exc:
            raise UserFunctionError(self.name, record, exc) from exc
        return out


class UnionOperator(Operator):
    def process_batch(self, batch: list[Any]) -> list[Any]:
        return batch


class ProcessOperator(Operator):
    """Runs a ``ProcessFunction`` (non-keyed: no keyed state)."""

    def __init__(self, uid: str, name: str, env: OperatorEnv, fn: ProcessFunction) -> None:
        super().__init__(uid, name, env)
        self.fn = copy_for_subtask(fn, name)  # each subtask owns its copy (see flowstate.functions)
        self.ctx = RuntimeContext(name, env.subtask, env.parallelism, None)
        self.accepted: set[type] = set()
        """Types ``process`` returned that are iterables of records (``accept``)."""

    def open(self, resume_state: Any) -> None:
        try:
            self.fn.open(self.ctx)
        except Exception as exc:
            raise UserFunctionError(self.name, "<open>", exc) from exc

    def process_batch(self, batch: list[Any]) -> list[Any]:
        process = self.fn.process
        ctx = self.ctx
        out: list[Any] = []
        extend = out.extend
        accepted = self.accepted
        record = None
        try:
            for record in batch:
                result = process(record, ctx)
                if result is not None:
                    if result.__class__ not in accepted:
                        accept(accepted, result, "process")
                    extend(result)
        except Exception as exc:
            raise UserFunctionError(self.name, record, exc) from exc
        return out

    def close(self) -> None:
        self.fn.close()


class _OperatorSnapshot:
    """The keyed snapshot of one operator: its asynchronous part fails naming the operator (the
    backend's message names the state: a value that cannot be pickled, …)."""

    __slots__ = ("_inner", "_operator")

    def __init__(self, inner: KeyedSnapshot, operator: str) -> None:
        self._inner = inner
        self._operator = operator

    def materialize(self) -> Any:
        try:
            return self._inner.materialize()
        except Exception as exc:
            raise StateError(f"operator {self._operator!r}: {exc}") from exc

    def release(self) -> None:
        self._inner.release()


KEY_BY = "key_by"
"""How errors name the key selector: a key function that raises, or returns a key that is not
allowed (``flowstate.state.keygroups``), fails as the ``key_by`` operator, not as the keyed operator
after it (``flowstate.task.output`` names it so on a keyed exchange too; ``_Keyed.failure``)."""


class _Keyed(Operator):
    stateful = True

    def __init__(self, uid: str, name: str, env: OperatorEnv, key_fn: Callable[[Any], Any]) -> None:
        super().__init__(uid, name, env)
        self.key_fn = key_fn
        self.key_is_record = returns_its_argument(key_fn)
        """``key_by(lambda record: record)``: the record is its key, the selector is not called (rule 4
        of ``flowstate.state.keys``)."""
        self.backend = env.state_backend(
            env.max_parallelism, key_group_range(env.max_parallelism, env.parallelism, env.subtask)
        )
        self.ttl: TtlStates | None = None
        """The states with a time-to-live of a user function (``flowstate.state.ttl``), if it may have some."""

    def open(self, resume_state: Any) -> None:
        """``resume_state`` is the list of keyed snapshots whose key-group ranges overlap this
        subtask's (several after a rescale; see ``flowstate.task.assignment``), or one."""
        if resume_state is not None:
            self.backend.restore(as_restored(resume_state))

    def snapshot(self, checkpoint_id: int) -> KeyedSnapshot:
        if self.ttl:
            self.ttl.cleanup()  # no checkpoint holds an entry that had expired at its barrier
        return _OperatorSnapshot(self.backend.snapshot(), self.name)

    def ttl_counts(self) -> tuple[int, int] | None:
        """Live and expired-not-yet-removed entries of the ttl states (``None``: it has none)."""
        return self.ttl.counts() if self.ttl else None

    def keys_of(self, batch: list[Any]) -> tuple[list[Any], Exception | None]:
        """The keys of the batch's records, checked against the rules of keys, in order, handed to
        the backend's ``prefetch`` (rule 8 of ``flowstate.state.backend``); when the key selector raises on a record or returns a key
        that is not allowed, the keys of the records before it and that error (which the loop
        raises once it has processed those records, as if it had computed each key in turn)."""
        key_fn = self.key_fn
        itself = self.key_is_record
        keys: list[Any] = []
        append = keys.append
        error: Exception | None = None
        try:
            for record in batch:  # keys checked as in KeyedProcessOperator.process_batch
                key = record if itself else key_fn(record)
                if type(key) is not str:
                    check_key(key)
                append(key)
        except Exception as exc:  # noqa: BLE001 - raised by the loop at its record
            error = exc
        self.backend.prefetch(keys)
        return keys, error

    def failure(self, record: Any, error: Exception) -> UserFunctionError:
        """The error of a batch that failed on ``record``: the ``key_by`` operator's when the key
        selector raises on the record or returns a key that is not allowed, else this operator's.
        Only on this path is the key selector called again (a key must be a deterministic function
        of the record), so that the loops pay nothing per record to tell the two apart."""
        try:
            key = self.key_fn(record)
            if type(key) is not str:
                check_key(key)
        except Exception as key_error:  # noqa: BLE001 - whatever the key selector raises
            return UserFunctionError(KEY_BY, record, key_error)
        return UserFunctionError(self.name, record, error)

    def close(self) -> None:
        self.backend.close()


class KeyedProcessOperator(_Keyed):
    def __init__(self, uid: str, name: str, env: OperatorEnv, key_fn: Callable[[Any], Any], fn: ProcessFunction) -> None:
        super().__init__(uid, name, env, key_fn)
        self.fn = copy_for_subtask(fn, name)
        self.ttl = TtlStates(self.backend, name, ProcessingTtlClock(wall_function(env.clock or SystemClock())), None,
                             "its stream has no timestamps: call assign_timestamps(...) before key_by(...), "
                             "or give the state ttl_time='processing'")
        self.ctx = RuntimeContext(name, env.subtask, env.parallelism, self.backend, self.ttl)
        self.accepted: set[type] = set()
        """Types ``process`` returned that are iterables of records (``accept``)."""

    def open(self, resume_state: Any) -> None:
        super().open(resume_state)
        try:
            self.fn.open(self.ctx)
        except Exception as exc:
            raise UserFunctionError(self.name, "<open>", exc) from exc

    def process_batch(self, batch: list[Any]) -> list[Any]:
        self.backend.maybe_fold()
        if self.ttl:
            self.ttl.cleanup()
        if self.backend.wants_prefetch(len(batch)):
            return self._process_prefetched(batch)
        process = self.fn.process
        key_fn = self.key_fn
        itself = self.key_is_record
        keys = self.backend.keys
        ctx = self.ctx
        out: list[Any] = []
        extend = out.extend
        accepted = self.accepted
        record = None
        try:
            for record in batch:
                # The key is checked against the rules of keys here too, so that it is refused the
                # same way whether or not a keyed exchange hashed it on the way (at parallelism 1
                # nothing does); errors name key_by, as the exchange's do.
                try:
                    key = record if itself else key_fn(record)
                    if type(key) is not str:
                        check_key(key)
                except Exception as exc:
                    raise UserFunctionError("key_by", record, exc) from exc
                keys.current_key = key
                result = process(record, ctx)
                if result is not None:
                    if result.__class__ not in accepted:
                        accept(accepted, result, "process")
                    extend(result)
        except UserFunctionError:
            raise
        except Exception as exc:
            raise self.failure(record, exc) from exc
        return out

    def _process_prefetched(self, batch: list[Any]) -> list[Any]:
        """``process_batch`` with the batch's keys computed first and prefetched (``keys_of``)."""
        batch_keys, key_error = self.keys_of(batch)
        process = self.fn.process
        keys = self.backend.keys
        ctx = self.ctx
        out: list[Any] = []
        extend = out.extend
        accepted = self.accepted
        record = None
        try:
            for key, record in zip(batch_keys, batch):  # noqa: B905 - shorter after a key error
                keys.current_key = key
                result = process(record, ctx)
                if result is not None:
                    if result.__class__ not in accepted:
                        accept(accepted, result, "process")
                    extend(result)
        except UserFunctionError:
            raise
        except Exception as exc:
            raise self.failure(record, exc) from exc
        if key_error is not None:
            raise UserFunctionError(KEY_BY, batch[len(batch_keys)], key_error) from key_error
        return out

    def close(self) -> None:
        try:
            self.fn.close()
        finally:
            super().close()


class ReduceOperator(_Keyed):
    """A running reduce per key: emits the new reduced value for every record."""

    def __init__(self, uid: str, name: str, env: OperatorEnv, key_fn: Callable[[Any], Any], fn: Callable[[Any, Any], Any]) -> None:
        super().__init__(uid, name, env, key_fn)
        self.fn = fn

    def open(self, resume_state: Any) -> None:
        super().open(resume_state)
        self.state = self.backend.reducing_state("reduce", self.fn)

    def process_batch(self, batch: list[Any]) -> list[Any]:
        self.backend.maybe_fold()
        if self.backend.wants_prefetch(len(batch)):
            return self._process_prefetched(batch)
        key_fn = self.key_fn
        itself = self.key_is_record
        keys = self.backend.keys
        add_and_get = self.state.add_and_get
        out: list[Any] = []
        append = out.append
        record = None
        try:
            for record in batch:
                try:  # checked as in KeyedProcessOperator
                    key = record if itself else key_fn(record)
                    if type(key) is not str:
                        check_key(key)
                except Exception as exc:
                    raise UserFunctionError("key_by", record, exc) from exc
                keys.current_key = key
                append(add_and_get(record))
        except UserFunctionError:
            raise
        except Exception as exc:
            raise self.failure(record, exc) from exc
        return out

    def _process_prefetched(self, batch: list[Any]) -> list[Any]:
        """``process_batch`` with the batch's keys computed first and prefetched (``keys_of``)."""
        batch_keys, key_error = self.keys_of(batch)
        keys = self.backend.keys
        add_and_get = self.state.add_and_get
        out: list[Any] = []
        append = out.append
        record = None
        try:
            for key, record in zip(batch_keys, batch):  # noqa: B905 - shorter after a key error
                keys.current_key = key
                append(add_and_get(record))
        except UserFunctionError:
            raise
        except Exception as exc:
            raise self.failure(record, exc) from exc
        if key_error is not None:
            raise UserFunctionError(KEY_BY, batch[len(batch_keys)], key_error) from key_error
        return out


class SinkOperator(Operator):
    """Feeds a ``SinkWriter``; on a barrier pre-commits, on completion commits."""

    stateful = True

    def __init__(self, uid: str, name: str, env: OperatorEnv, sink: Any) -> None:
        super().__init__(uid, name, env)
        self.sink = sink
        self.writer: Any = None

    def open(self, resume_state: Any) -> None:
        self.writer = self.sink.build_writer(self.env.subtask, self.env.parallelism, resume_state)
        attach = getattr(self.writer, "attach_failpoints", None)
        if attach is not None and self.env.failpoints:
            attach(self.env.failpoints)

    def process_batch(self, batch: list[Any]) -> None:
        try:
            self.writer.write_batch(batch)
        except UnwritableRecordError as exc:
            raise UserFunctionError(self.name, exc.record, exc.cause) from exc
        return None

    def snapshot(self, checkpoint_id: int) -> Ready:
        self.writer.pre_commit(checkpoint_id)
        fp = self.env.failpoints
        if fp:
            fp.hit(fp_names.SINK_AFTER_PRE_COMMIT)
        return Ready(self.writer.snapshot())

    def notify_complete(self, checkpoint_id: int) -> None:
        fp = self.env.failpoints
        if fp:
            fp.hit(fp_names.SINK_BEFORE_COMMIT)
        self.writer.commit(checkpoint_id)
        if fp:
            fp.hit(fp_names.SINK_AFTER_COMMIT)

    def end_of_input(self) -> None:
        if not self.env.checkpoints:
            self.writer.finish()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
