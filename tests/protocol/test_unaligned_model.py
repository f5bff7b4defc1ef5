"""Unaligned checkpoints (``flowstate.checkpoint.unaligned``) against a reference model of the channels.

The machine plays the upstream tasks and the runtime. Each input channel is a FIFO of record batches,
barriers and one end of input. An upstream puts batches and barriers into its channel: an aligned
barrier behind the data, an unaligned one at the head, overtaking the batches queued there (as
``InputGate.put_priority`` does). The runtime reads the next item of a channel that is not blocked
and executes what the handler answers, as ``StreamTask`` does: a batch read on a channel being
captured is recorded, and ``CaptureOvertaken`` records the batches that the barrier overtook.

The invariant is the Chandy-Lamport cut. For every checkpoint *n* that finished (``FinishCapture``,
or an aligned ``TakeSnapshot`` with nothing to capture), the records processed before its snapshot
together with its recorded channel state are exactly the records that preceded barrier *n* on each
channel: none is missing, none counts twice, and each channel's recorded records are in channel
order. A restore from *n* replays that channel state and then reads what followed each barrier, so
any other outcome loses or duplicates records.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from flowstate.checkpoint.barrier import CheckpointBarrier
from flowstate.checkpoint.failure import CheckpointFailureReason
from flowstate.checkpoint.handler import (
    AbortCheckpoint,
    AllInputsEnded,
    BlockChannel,
    CaptureOvertaken,
    DiscardCapture,
    FinishCapture,
    HandlerAction,
    ResumeChannels,
    StartCapture,
    StopCapture,
    TakeSnapshot,
)
from flowstate.checkpoint.ids import ChannelIndex, CheckpointId
from flowstate.checkpoint.unaligned import Aligning, Capturing, UnalignedBarrierHandler

FAST = settings(max_examples=150, stateful_step_count=80, deadline=None)
TIMEOUT = 2.0


# ---- the reference model: channels as FIFOs --------------------------------------------------------


@dataclass(frozen=True)
class Batch:
    records: tuple[int, ...]


@dataclass(frozen=True)
class Barrier:
    """A barrier in a channel; ``overtaken`` is what an unaligned barrier overtook (None: aligned)."""

    barrier: CheckpointBarrier
    overtaken: tuple[Batch, ...] | None


@dataclass(frozen=True)
class End:
    pass


Item = Batch | Barrier | End


@dataclass
class Channel:
    queue: deque[Item] = field(default_factory=deque)
    produced: list[int] = field(default_factory=list)  # every record put in, in channel order
    cut: dict[int, int] = field(default_factory=dict)  # checkpoint -> how many produced records precede its barrier
    last_barrier: int = 0  # the newest barrier its upstream put in
    delivered: set[int] = field(default_factory=set)  # barriers the task read
    ended: bool = False  # its upstream put the end of input
    closed: bool = False  # the task read the end of input


@dataclass
class Snapshot:
    """What the runtime holds for one snapshotted checkpoint until it is finished."""

    checkpoint_id: int
    processed: int  # how many records the operator had processed when the snapshot was taken
    recorded: dict[int, list[int]] = field(default_factory=dict)
    recording: set[int] = field(default_factory=set)


class UnalignedHandlerMachine(RuleBasedStateMachine):
    """``UnalignedBarrierHandler`` against the channels it reads and the runtime that obeys it."""

    def __init__(self, alignment_timeout: float | None) -> None:
        super().__init__()
        self.timeout = alignment_timeout

    @initialize(
        count=st.integers(1, 4),
        final_id=st.sampled_from([None, None, 3, 5]),
        ending=st.booleans(),
        overtaking=st.booleans(),
    )
    def start(self, count: int, final_id: int | None, ending: bool, overtaking: bool) -> None:
        self.handler = UnalignedBarrierHandler(count, self.timeout)
        self.channels = [Channel() for _ in range(count)]
        # Swarm testing: in half of the runs no upstream ends, so that they get through more
        # checkpoints; in half of them every barrier stays behind the data, so that the alignments
        # last until they complete or time out.
        self.ending = ending
        self.overtaking = overtaking
        self.final_id = final_id  # the id of the final checkpoint of a bounded job, if any
        self.now = 0.0
        self.started: dict[int, float] = {}  # checkpoint id -> when its first barrier was emitted
        self.next_record = 0
        self.processed: list[int] = []
        self.blocked: set[int] = set()
        self.aligning_since = 0.0
        self.aligning: int | None = None  # the checkpoint whose barriers blocked the channels
        self.capture: Snapshot | None = None
        self.snapshots: list[int] = []
        self.finished: list[int] = []
        self.declined: set[int] = set()
        self.aborted_by_coordinator = 0  # the newest id the coordinator aborted
        self.all_ended = False

    # ---- what the model allows -------------------------------------------------------------------

    def _producing(self) -> list[int]:
        return [c for c, ch in enumerate(self.channels) if not ch.ended]

    def _may_emit_barrier(self) -> list[int]:
        return [
            c for c, ch in enumerate(self.channels)
            if not ch.ended and (self.final_id is None or ch.last_barrier < self.final_id)
        ]

    def _readable(self) -> list[int]:
        return [c for c, ch in enumerate(self.channels) if ch.queue and not ch.closed and c not in self.blocked]

    # ---- upstreams -------------------------------------------------------------------------------

    @precondition(lambda self: [c for c in self._producing() if not self._after_final(c)])
    @rule(data=st.data(), size=st.integers(1, 3))
    def an_upstream_produces_a_batch(self, data: st.DataObject, size: int) -> None:
        c = data.draw(st.sampled_from([c for c in self._producing() if not self._after_final(c)]))
        records = tuple(range(self.next_record, self.next_record + size))
        self.next_record += size
        channel = self.channels[c]
        channel.queue.append(Batch(records))
        channel.produced.extend(records)

    @precondition(lambda self: self._may_emit_barrier())
    @rule(data=st.data(), unaligned=st.booleans(), skip=st.sampled_from([0, 0, 0, 0, 0, 1]))
    def an_upstream_emits_the_barrier_of_its_next_checkpoint(
        self, data: st.DataObject, unaligned: bool, skip: int
    ) -> None:
        # ``skip``: the upstream gave a checkpoint up and never sends its barrier.
        c = data.draw(st.sampled_from(self._may_emit_barrier()))
        self._emit_barrier(c, unaligned, skip)

    @precondition(lambda self: self._may_emit_barrier())
    @rule(data=st.data(), kind=st.sampled_from(["aligned", "unaligned", "mixed"]))
    def every_upstream_emits_the_barrier_of_its_next_checkpoint(self, data: st.DataObject, kind: str) -> None:
        for c in self._may_emit_barrier():
            unaligned = kind == "unaligned" or (kind == "mixed" and data.draw(st.booleans(), label=f"unaligned on {c}"))
            self._emit_barrier(c, unaligned, 0)

    def _emit_barrier(self, c: int, unaligned: bool, skip: int) -> None:
        channel = self.channels[c]
        n = channel.last_barrier + 1 + skip
        if self.final_id is not None:
            n = min(n, self.final_id)
        final = n == self.final_id
        unaligned = unaligned and self.overtaking and not final  # the final barrier always stays behind the data
        started = self.started.setdefault(n, self.now)  # the checkpoint starts with its first barrier
        barrier = CheckpointBarrier(CheckpointId(n), timestamp=started, final=final, unaligned=unaligned)
        channel.last_barrier = n
        channel.cut[n] = len(channel.produced)
        if unaligned:
            overtaken = tuple(item for item in channel.queue if isinstance(item, Batch))
            channel.queue.appendleft(Barrier(barrier, overtaken))
        else:
            channel.queue.append(Barrier(barrier, None))

    @precondition(lambda self: self.ending and self._producing())
    @rule(data=st.data())
    def an_upstream_ends(self, data: st.DataObject) -> None:
        c = data.draw(st.sampled_from(self._producing()))
        self.channels[c].ended = True
        self.channels[c].queue.append(End())

    def _after_final(self, c: int) -> bool:
        # Sources ended before the final checkpoint was triggered: nothing follows its barrier.
        return self.final_id is not None and self.channels[c].last_barrier >= self.final_id

    # ---- the runtime -----------------------------------------------------------------------------

    @precondition(lambda self: self._readable())
    @rule(data=st.data(), items=st.integers(1, 6))
    def the_task_reads_the_next_items(self, data: st.DataObject, items: int) -> None:
        for _ in range(items):
            if not self._readable():
                return
            self._read(data.draw(st.sampled_from(self._readable()), label="channel read"))
            # Processing takes time; like ``StreamTask``, the loop ticks after each item read.
            self.now += data.draw(st.sampled_from([0.0, 0.0, 0.5]), label="processing time")
            self._tick()

    def _read(self, c: int) -> None:
        assert c not in self.handler.blocked, f"read from channel {c}, which the handler blocked"
        channel = self.channels[c]
        item = channel.queue.popleft()
        match item:
            case Batch(records=records):
                if self.capture is not None and c in self.capture.recording:
                    self.capture.recorded.setdefault(c, []).extend(records)
                self.processed.extend(records)
            case Barrier(barrier=barrier, overtaken=overtaken):
                channel.delivered.add(barrier.checkpoint_id)
                actions = self.handler.on_barrier(ChannelIndex(c), barrier, self.now)
                self._execute(actions, channel=c, barrier=barrier, overtaken=overtaken)
            case End():
                channel.closed = True
                self._execute(self.handler.on_end_of_input(ChannelIndex(c)), channel=c, end=True)

    @rule(dt=st.sampled_from([0.5, 0.5, 1.0, 2.5]))
    def time_passes(self, dt: float) -> None:
        self.now += dt
        self._tick()

    def _tick(self) -> None:
        actions = self.handler.tick(self.now)
        switched = any(isinstance(a, TakeSnapshot) for a in actions)
        if self.timeout is None or not self.blocked:
            assert actions == [], f"tick({self.now}) acted with nothing to time out: {actions}"
        elif self.aligning == self.final_id:
            assert actions == [], "the final checkpoint switched to unaligned"
        elif self.now - self.aligning_since >= self.timeout:
            assert switched, f"aligning since {self.aligning_since}, still aligned at {self.now}"
        else:
            assert actions == [], f"switched at {self.now}, before the timeout (aligning since {self.aligning_since})"
        self._execute(actions)

    @precondition(lambda self: any(ch.last_barrier for ch in self.channels))
    @rule(data=st.data())
    def the_coordinator_aborts_a_checkpoint(self, data: st.DataObject) -> None:
        n = data.draw(st.integers(1, max(ch.last_barrier for ch in self.channels) + 1))
        self.aborted_by_coordinator = max(self.aborted_by_coordinator, n)
        pending = self._in_progress()
        actions = self.handler.on_abort(CheckpointId(n))
        declined = [a for a in actions if isinstance(a, AbortCheckpoint)]
        if pending is not None and n > pending:
            # Every barrier up to n is late now, so the pending checkpoint can never complete here.
            expected = [AbortCheckpoint(CheckpointId(pending), CheckpointFailureReason.CANCELLED_BY_COORDINATOR)]
            assert declined == expected, f"abort of {n} while {pending} is pending: {actions}"
        else:
            assert declined == [], f"abort of {n} declined {declined}: the coordinator already knows"
        self._execute(actions)

    def _in_progress(self) -> int | None:
        """The checkpoint the runtime is capturing or aligning, as far as the executed actions tell."""
        if self.capture is not None:
            return self.capture.checkpoint_id
        return self.aligning if self.blocked else None

    def _execute(
        self,
        actions: list[HandlerAction],
        *,
        channel: int | None = None,
        barrier: CheckpointBarrier | None = None,
        overtaken: tuple[Batch, ...] | None = None,
        end: bool = False,
    ) -> None:
        for i, action in enumerate(actions):
            match action:
                case BlockChannel(channel=c):
                    assert c == channel and barrier is not None, "only the channel that delivered a barrier is blocked"
                    assert not barrier.unaligned, "an unaligned barrier blocked its channel"
                    assert c not in self.blocked
                    if not self.blocked:
                        # Rule 6: the timeout counts from the start of the checkpoint, so a first
                        # barrier that arrives after it switches at once instead of blocking.
                        self.aligning_since = self.started[barrier.checkpoint_id]
                        assert barrier.final or self.timeout is None or self.now - self.aligning_since < self.timeout, (
                            f"checkpoint {barrier.checkpoint_id} started at {self.aligning_since} and began "
                            f"aligning at {self.now}, after its timeout"
                        )
                    self.blocked.add(c)
                    self.aligning = barrier.checkpoint_id
                case ResumeChannels(channels=cs):
                    assert cs and list(cs) == sorted(set(cs))
                    assert set(cs) <= self.blocked, f"resumed {cs} but blocked are {sorted(self.blocked)}"
                    self.blocked -= set(cs)
                case TakeSnapshot(barrier=b):
                    n = b.checkpoint_id
                    assert self.capture is None, f"snapshot {n} while {self.capture} is still captured"
                    assert not self.snapshots or n > self.snapshots[-1], "snapshot ids go backwards"
                    assert n > self.aborted_by_coordinator, f"snapshot {n} after the coordinator aborted it"
                    assert (b.timestamp, b.final) == (self.started[n], n == self.final_id)
                    if b.final:
                        assert not b.unaligned, "the final checkpoint was taken unaligned"
                    elif self.timeout is None:
                        assert b.unaligned, "an unaligned handler took an aligned snapshot"
                    elif b.unaligned:
                        # Rule 6: only the timeout or an upstream that switched makes an alignment unaligned.
                        assert channel is None or barrier is not None and (
                            barrier.unaligned or self.now - barrier.timestamp >= self.timeout
                        ), f"checkpoint {n} switched to unaligned on an aligned barrier before its timeout"
                    for c, ch in enumerate(self.channels):
                        if c != channel and n in ch.delivered and not ch.closed:
                            # The barrier is forwarded before anything queued behind it is read.
                            assert c in self.blocked, f"channel {c} resumed before snapshot {n}"
                    self.snapshots.append(n)
                    snapshot = Snapshot(n, len(self.processed))
                    if b.unaligned:
                        self.capture = snapshot
                    else:
                        self._finished(snapshot)
                case StartCapture(checkpoint_id=n, channels=cs):
                    assert self.capture is not None and self.capture.checkpoint_id == n
                    assert cs and list(cs) == sorted(set(cs))
                    awaited = [c for c, ch in enumerate(self.channels) if not ch.closed and n not in ch.delivered]
                    assert list(cs) == awaited, f"captured {cs} for {n}; open channels ahead of its barrier: {awaited}"
                    self.capture.recording |= set(cs)
                case CaptureOvertaken(channel=c):
                    assert c == channel and self.capture is not None
                    for batch in overtaken or ():
                        self.capture.recorded.setdefault(c, []).extend(batch.records)
                case StopCapture(channel=c):
                    assert c == channel and self.capture is not None
                    assert c in self.capture.recording, f"stopped capturing {c}, which was not captured"
                    self.capture.recording.discard(c)
                case FinishCapture(checkpoint_id=n):
                    assert self.capture is not None and self.capture.checkpoint_id == n
                    assert not self.capture.recording, f"finished {n} while capturing {self.capture.recording}"
                    self._finished(self.capture)
                    self.capture = None
                case DiscardCapture(checkpoint_id=n):
                    assert self.capture is not None and self.capture.checkpoint_id == n
                    self.capture = None
                case AbortCheckpoint(checkpoint_id=n, reason=reason):
                    assert n not in self.finished and n == self._in_progress(), f"declined {n}, which was not pending"
                    if barrier is not None:
                        assert reason is CheckpointFailureReason.SUBSUMED_BY_NEWER_BARRIER
                        assert barrier.checkpoint_id > n, f"barrier {barrier.checkpoint_id} gave up {n}"
                    self.declined.add(n)
                case AllInputsEnded():
                    assert end and i == len(actions) - 1, "AllInputsEnded comes last"
                    assert all(ch.closed for ch in self.channels) and not self.all_ended
                    self.all_ended = True
        if end and all(ch.closed for ch in self.channels):
            assert self.all_ended, "the last end of input did not report AllInputsEnded"

    def _finished(self, snapshot: Snapshot) -> None:
        """The cut: what the snapshot processed plus the channel state is what preceded the barriers."""
        n = snapshot.checkpoint_id
        assert n > self.aborted_by_coordinator and n not in self.declined
        before = self.processed[: snapshot.processed]
        in_snapshot = set(before)
        in_cut: set[int] = set()
        for c, channel in enumerate(self.channels):
            if n in channel.cut:
                assert n in channel.delivered or channel.closed, f"{n} finished before channel {c} delivered it"
                preceding = channel.produced[: channel.cut[n]]
            else:
                assert channel.closed, f"checkpoint {n} finished without a barrier or an end on channel {c}"
                preceding = channel.produced
            in_cut |= set(preceding)
            expected = [r for r in preceding if r not in in_snapshot]
            recorded = snapshot.recorded.get(c, [])
            assert recorded == expected, (
                f"checkpoint {n}, channel {c}: recorded {recorded}, but {expected} preceded the barrier "
                "and were not processed before the snapshot"
            )
        after = sorted(in_snapshot - in_cut)
        assert not after, f"checkpoint {n} snapshotted {after}, which followed its barrier"
        self.finished.append(n)

    # ---- invariants ------------------------------------------------------------------------------

    @invariant()
    def the_handler_blocks_and_captures_what_the_runtime_does(self) -> None:
        assert self.handler.blocked == self.blocked
        assert self.handler.open_channels == {c for c, ch in enumerate(self.channels) if not ch.closed}
        assert self.handler.capturing == (self.capture.recording if self.capture is not None else set())

    @invariant()
    def a_checkpoint_in_progress_still_awaits_some_open_channel(self) -> None:
        state = self.handler.state
        if isinstance(state, Aligning | Capturing):
            n = state.barrier.checkpoint_id
            assert n > self.aborted_by_coordinator and n not in self.declined
            assert any(n not in ch.delivered for ch in self.channels if not ch.closed), (
                f"every open channel delivered {n}, yet it is still in progress"
            )
            # And the task is never blocked on all of its inputs.
            assert any(c not in self.blocked for c, ch in enumerate(self.channels) if not ch.closed)

    @invariant()
    def finished_checkpoint_ids_strictly_increase(self) -> None:
        assert all(a < b for a, b in zip(self.finished, self.finished[1:]))


@pytest.mark.parametrize("alignment_timeout", [None, TIMEOUT], ids=["unaligned", "aligned-with-timeout"])
def test_every_finished_checkpoint_is_a_consistent_cut_of_the_channels(alignment_timeout: float | None) -> None:
    run_state_machine_as_test(lambda: UnalignedHandlerMachine(alignment_timeout), settings=FAST)
