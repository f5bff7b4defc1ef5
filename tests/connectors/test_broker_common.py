"""The pure parts shared by the broker sinks: the publishing committer's order of publishing, its
snapshots, rescaling of its states, and the errors for records that cannot be encoded."""

from __future__ import annotations

import pytest

from flowstate.connectors.broker_common import (
    PublishingCommitter,
    UnencodableRecordError,
    encode_all,
    json_bytes,
    message_id,
    redistribute_publishing_states,
)


class Broker:
    """Remembers every publish; idempotent per (identity, checkpoint) like the real adapters."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int, tuple[bytes, ...]]] = []
        self.committed: dict[tuple[str, int], tuple[bytes, ...]] = {}

    def publish(self, identity: str, checkpoint_id: int, payloads: tuple[bytes, ...]) -> None:
        self.calls.append((identity, checkpoint_id, payloads))
        self.committed.setdefault((identity, checkpoint_id), payloads)


def test_nothing_is_published_before_its_checkpoint_completes_and_then_in_checkpoint_order() -> None:
    broker = Broker()
    writer = PublishingCommitter("S", "sink", 0, json_bytes, broker.publish, None)
    writer.write_batch([1, 2])
    writer.pre_commit(1)
    writer.write_batch([3])
    writer.pre_commit(2)
    writer.pre_commit(3)  # nothing written since 2: no batch
    assert broker.calls == []
    writer.commit(3)
    identity = writer.identity
    assert broker.calls == [(identity, 1, (b"1", b"2")), (identity, 2, (b"3",))]
    assert writer.snapshot()["pending"] == []


def test_a_restored_writer_publishes_again_what_its_snapshot_names_and_keeps_its_identity() -> None:
    broker = Broker()
    first = PublishingCommitter("S", "sink", 3, json_bytes, broker.publish, None)
    first.write_batch(["a"])
    first.pre_commit(7)
    state = first.snapshot()
    second = PublishingCommitter("S", "sink", 3, json_bytes, broker.publish, state)
    assert second.identity == first.identity
    assert broker.calls == [(first.identity, 7, (b'"a"',))]


def test_fresh_writers_never_share_an_identity() -> None:
    ids = {PublishingCommitter("S", "sink", 0, json_bytes, Broker().publish, None).identity for _ in range(50)}
    assert len(ids) == 50


def test_a_failed_publish_leaves_the_batch_pending() -> None:
    def failing(*_: object) -> None:
        raise ConnectionError("down")

    writer = PublishingCommitter("S", "sink", 0, json_bytes, failing, None)
    writer.write_batch([1])
    writer.pre_commit(1)
    with pytest.raises(ConnectionError):
        writer.commit(1)
    assert [cid for cid, _ in writer.snapshot()["pending"]] == [1]


def test_rescaling_gives_each_pending_batch_to_exactly_one_writer_with_its_identity() -> None:
    states = [{"run": f"r{j}", "pending": [(5, (f"r{j}/sink/{j}", (b"x",)))]} for j in range(3)]
    two = redistribute_publishing_states(states, 2, "S")
    assert [s["run"] for s in two] == ["r0", "r1"]
    assert [[b[0] for _, b in s["pending"]] for s in two] == [["r0/sink/0", "r2/sink/2"], ["r1/sink/1"]]
    four = redistribute_publishing_states(states, 4, "S")
    assert four[3]["pending"] == [] and four[3]["run"] == "r0"


def test_an_unencodable_record_is_named_with_the_sink_in_one_line() -> None:
    with pytest.raises(UnencodableRecordError, match=r"^S: cannot encode record \{1, 2\}: .*not JSON serializable$"):
        encode_all(json_bytes, [1, {1, 2}], "S")
    with pytest.raises(UnencodableRecordError, match="the encoder returned str, not bytes"):
        encode_all(str, [1], "S")


def test_message_ids_name_the_writer_the_checkpoint_and_the_index() -> None:
    assert message_id("abc/sink/1", 12, 3) == "abc/sink/1/12/3"


def test_a_missing_client_library_is_reported_when_the_connector_is_declared() -> None:
    from flowstate.connectors.broker_common import ConnectorError, require

    with pytest.raises(ConnectorError, match=r"^NatsSink needs the no-such-client package: pip install 'flowstate\[brokers\]'$"):
        require("no_such_client_module", "no-such-client", "NatsSink")


# ---- SplitTracker: the events of poll_splits ------------------------------------------------------


def test_the_splits_a_reader_reads_are_announced_once_before_their_records():
    from flowstate.connectors.broker_common import SplitTracker

    tracker = SplitTracker()
    assert tracker.events([], ["t:0", "t:1"]) == [("t:0", [], False), ("t:1", [], False)]
    assert tracker.events([("t:1", [7, 8]), ("t:0", [])], ["t:0", "t:1"]) == [("t:1", [7, 8], False)]
    assert tracker.events([("t:2", [1])], ["t:0", "t:1", "t:2"]) == [("t:2", [], False), ("t:2", [1], False)]


def test_a_split_read_to_its_end_is_finished_after_its_last_records():
    from flowstate.connectors.broker_common import SplitTracker

    tracker = SplitTracker()
    tracker.events([], ["a", "b"])
    assert tracker.events([("a", [1, 2]), ("b", [3])], ["b"]) == [("a", [1, 2], False), ("b", [3], False),
                                                                   ("a", [], True)]
    assert tracker.events([], []) == [("b", [], True)]
    assert tracker.events([], []) == []


def test_a_split_read_whole_in_one_read_is_finished_without_an_announcement():
    from flowstate.connectors.broker_common import SplitTracker

    assert SplitTracker().events([("a", [1])], []) == [("a", [1], False), ("a", [], True)]
