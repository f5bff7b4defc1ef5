"""The checkpoint table (``flowstate.render.checkpoint_table``): what ``flowstate checkpoints list DIR``
prints, line by line."""

from __future__ import annotations

import time
from datetime import UTC, timedelta, timezone

import pytest

from flowstate.checkpoint.ids import CheckpointId, TaskId
from flowstate.render import checkpoint_table as format_checkpoint_table
from flowstate.storage.base import CheckpointInfo, CheckpointMetadata, TaskState
from flowstate.storage.listing import format_size_short
from flowstate.storage.local import NO_METADATA, LocalCheckpointStorage

# 2023-11-14T22:13:20Z
T0 = 1_700_000_000.0


def metadata(
    checkpoint_id: int, *, duration: float = 0.25, final: bool = False
) -> CheckpointMetadata:
    return CheckpointMetadata(
        checkpoint_id=CheckpointId(checkpoint_id),
        job="word-count",
        mode="exactly_once",
        final=final,
        trigger_time=T0 + checkpoint_id * 60 - duration,
        completion_time=T0 + checkpoint_id * 60,
        max_parallelism=128,
        parallelism={"count": 2},
        tasks=(),
    )


def completed(checkpoint_id: int, size: int = 2048, **kwargs: object) -> CheckpointInfo:
    return CheckpointInfo(
        CheckpointId(checkpoint_id), "completed", None, metadata(checkpoint_id, **kwargs), size
    )


def incomplete(checkpoint_id: int, size: int = 100) -> CheckpointInfo:
    return CheckpointInfo(CheckpointId(checkpoint_id), "incomplete", NO_METADATA, None, size)


def corrupt(checkpoint_id: int, reason: str, *, with_metadata: bool = False) -> CheckpointInfo:
    found = metadata(checkpoint_id) if with_metadata else None
    return CheckpointInfo(CheckpointId(checkpoint_id), "corrupt", reason, found, 4096)


def table(infos: list[CheckpointInfo]) -> list[str]:
    return format_checkpoint_table(infos, tz=UTC).split("\n")


def cells(line: str) -> list[str]:
    return line.split()


def test_one_line_per_checkpoint_in_the_order_given_between_a_header_and_a_summary():
    lines = table([completed(1), incomplete(2), completed(3)])

    assert cells(lines[0])[:2] == ["ID", "STATUS"]
    assert [cells(line)[:2] for line in lines[1:4]] == [
        ["1", "completed"],
        ["2", "incomplete"],
        ["3", "completed"],
    ]
    assert lines[4] == "2 completed (newest: 3), 1 incomplete"
    assert len(lines) == 5


def test_a_completed_checkpoint_shows_its_time_size_duration_and_finality():
    lines = table([completed(1, size=1536, duration=1.2345), completed(2, final=True)])

    assert cells(lines[0]) == ["ID", "STATUS", "COMPLETED", "AT", "SIZE", "DURATION", "FINAL"]
    assert cells(lines[1]) == [
        *["1", "completed", "2023-11-14T22:14:20+00:00"],
        *["1.5", "KiB", "1234", "ms"],
    ]
    assert cells(lines[2]) == [
        *["2", "completed", "2023-11-14T22:15:20+00:00"],
        *["2.0", "KiB", "250", "ms", "yes"],
    ]


def test_completion_times_are_in_the_zone_asked_for():
    east = timezone(timedelta(hours=5, minutes=30))

    text = format_checkpoint_table([completed(1)], tz=east)

    assert "2023-11-15T03:44:20+05:30" in text


@pytest.fixture
def local_zone_five_and_a_half_hours_east(monkeypatch):
    monkeypatch.setenv("TZ", "XST-5:30")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


@pytest.mark.skipif(not hasattr(time, "tzset"), reason="needs time.tzset to change the local zone")
def test_completion_times_default_to_the_local_zone(local_zone_five_and_a_half_hours_east):
    text = format_checkpoint_table([completed(1)])

    assert "2023-11-15T03:44:20+05:30" in text


@pytest.mark.parametrize(
    ("size", "shown"),
    [
        (0, "0 B"),
        (1023, "1023 B"),
        (1024, "1.0 KiB"),
        (1536, "1.5 KiB"),
        (1024 * 1024 - 1, "1.0 MiB"),
        (20 * 1024 * 1024, "20.0 MiB"),
        (int(3.25 * 1024**3), "3.2 GiB"),
        (2 * 1024**4, "2048.0 GiB"),
    ],
)
def test_sizes_are_shown_in_binary_units(size, shown):
    row = table([completed(1, size=size)])[1]

    number, unit = shown.split()
    assert cells(row)[3:5] == [number, unit]


def test_incomplete_and_corrupt_checkpoints_show_their_reason_and_no_invented_values():
    reason = "chk-000003/_metadata: checksum mismatch (recorded 00…, computed ff…)"

    lines = table([completed(1), incomplete(2), corrupt(3, reason)])

    assert cells(lines[0])[-1] == "REASON"
    assert cells(lines[1])[-1] == "ms"  # no reason for a completed checkpoint
    assert lines[2].endswith("  " + NO_METADATA)
    assert cells(lines[2])[:5] == ["2", "incomplete", "-", "100", "B"]
    assert cells(lines[2])[5] == "-"
    assert lines[3].endswith("  " + reason)
    assert cells(lines[3])[:5] == ["3", "corrupt", "-", "4.0", "KiB"]
    assert lines[4] == "1 completed (newest: 1), 1 incomplete, 1 corrupt"


def test_a_corrupt_checkpoint_with_intact_metadata_still_shows_when_it_completed():
    lines = table([corrupt(4, "chk-000004/count#0.state is missing", with_metadata=True)])

    assert cells(lines[1])[:3] == ["4", "corrupt", "2023-11-14T22:17:20+00:00"]
    assert lines[2] == "0 completed, 1 corrupt"


def test_a_reason_spanning_lines_is_kept_on_its_row():
    lines = table([corrupt(1, "first line\nsecond line")])

    assert lines[1].endswith("first line second line")
    assert len(lines) == 3


def test_columns_are_aligned_text_left_and_numbers_right():
    infos = [
        completed(7, size=5),
        incomplete(12, size=123_456_789),
        corrupt(1234, "bad"),
    ]
    lines = table(infos)[:-1]
    header = lines[0]

    def start(line: str, text: str) -> int:
        return line.index(text)

    for row, status in zip(lines[1:], ["completed", "incomplete", "corrupt"], strict=True):
        assert start(row, status) == start(header, "STATUS")
    for row, reason in zip(lines[2:], [NO_METADATA, "bad"], strict=True):
        assert start(row, reason) == start(header, "REASON")
    id_ends = {line.index(cells(line)[0]) + len(cells(line)[0]) for line in lines}
    size_ends = {
        start(line, f" {unit} ") + 1 + len(unit)
        for line, unit in zip(lines[1:], ["B", "MiB", "KiB"], strict=True)
    }
    assert id_ends == {len("1234")}
    assert len(size_ends) == 1
    assert size_ends == {start(header, "SIZE") + len("SIZE")}
    assert all(line == line.rstrip() for line in lines)


def test_an_empty_directory_lists_no_checkpoints():
    assert format_checkpoint_table([]) == "no checkpoints"


def test_a_real_checkpoint_directory_lists_as_its_files_say(tmp_path):
    storage = LocalCheckpointStorage(tmp_path)
    handle = storage.write_state(CheckpointId(1), "count#0.state", b"x" * 3000)
    tasks = (TaskState(TaskId("count#0"), "count", 0, handle),)
    storage.write_metadata(
        CheckpointMetadata(CheckpointId(1), "job", "exactly_once", True, T0, T0 + 0.5, 1, {}, tasks)
    )
    storage.write_state(CheckpointId(2), "count#0.state", b"y" * 10)

    lines = format_checkpoint_table(storage.list_checkpoints(), tz=UTC).split("\n")

    metadata_size = (tmp_path / "chk-000001" / "_metadata").stat().st_size
    assert cells(lines[1]) == [
        *["1", "completed", "2023-11-14T22:13:20+00:00"],
        *[f"{(3000 + metadata_size) / 1024:.1f}", "KiB", "500", "ms", "yes"],
    ]
    assert cells(lines[2])[:5] == ["2", "incomplete", "-", "10", "B"]
    assert lines[2].endswith(NO_METADATA)
    assert lines[3] == "1 completed (newest: 1), 1 incomplete"


def with_metrics(checkpoint_id: int, *, alignment: float, in_flight: int) -> CheckpointInfo:
    tasks = (
        TaskState(TaskId("count#0"), "count", 0, None, alignment_seconds=alignment / 2, channel_state_bytes=in_flight // 2),
        TaskState(TaskId("count#1"), "count", 1, None, alignment_seconds=alignment, channel_state_bytes=in_flight - in_flight // 2),
    )
    base = metadata(checkpoint_id)
    found = CheckpointMetadata(**{**{f: getattr(base, f) for f in base.__dataclass_fields__}, "tasks": tasks})
    return CheckpointInfo(CheckpointId(checkpoint_id), "completed", None, found, 2048)


def test_alignment_and_in_flight_bytes_are_shown_when_a_checkpoint_has_them():
    lines = table([completed(1), with_metrics(2, alignment=0.0125, in_flight=3 * 1024 * 1024), incomplete(3)])

    assert cells(lines[0]) == [
        "ID", "STATUS", "COMPLETED", "AT", "SIZE", "DURATION", "ALIGNMENT", "IN-FLIGHT", "FINAL", "REASON",
    ]
    assert cells(lines[2])[7:11] == ["12.5", "ms", "3.0", "MiB"]  # the longest alignment, the bytes summed
    assert cells(lines[1])[7:9] == ["-", "-"]
    assert cells(lines[3])[5:8] == ["-", "-", "-"]


def test_without_alignment_or_in_flight_data_the_table_has_no_such_columns():
    assert "ALIGNMENT" not in table([completed(1), completed(2)])[0]


def incremental(checkpoint_id: int, *, sync: float, slowest_async: float, written: int, full: int) -> CheckpointInfo:
    tasks = tuple(
        TaskState(
            TaskId(f"count#{i}"), "count", i, None, sync_seconds=sync * (i + 1) / 2,
            async_seconds=slowest_async * (i + 1) / 2, bytes_written=written // 2, full_size=full // 2,
        )
        for i in range(2)
    )
    base = metadata(checkpoint_id)
    found = CheckpointMetadata(**{**{f: getattr(base, f) for f in base.__dataclass_fields__}, "tasks": tasks})
    return CheckpointInfo(CheckpointId(checkpoint_id), "completed", None, found, 3 * 1024 * 1024)


def test_incremental_checkpoints_show_the_longest_snapshot_parts_and_the_bytes_written_and_full():
    lines = table([
        incremental(1, sync=0.0042, slowest_async=0.125, written=20 * 1024**2, full=20 * 1024**2),
        incremental(2, sync=0.0125, slowest_async=1.5, written=1024**2, full=21 * 1024**2),
        incremental(3, sync=0.0, slowest_async=0.0, written=0, full=0),
    ])

    assert cells(lines[0]) == ["ID", "STATUS", "COMPLETED", "AT", "SIZE", "DURATION", "SYNC/ASYNC", "WRITTEN", "FULL", "FINAL"]
    assert cells(lines[1])[7:13] == ["4.2/125", "ms", "20.0", "MiB", "20.0", "MiB"]
    assert cells(lines[2])[7:13] == ["12/1500", "ms", "1.0", "MiB", "21.0", "MiB"]
    assert cells(lines[3])[7:10] == ["-", "-", "-"]  # nothing reported: not known, not zero


def test_a_table_of_incremental_checkpoints_fits_in_100_columns():
    infos = [
        incremental(n, sync=0.0123, slowest_async=2.5, written=123 * 1024**2, full=1023 * 1024**2)
        for n in (99_998, 99_999)
    ]

    lines = format_checkpoint_table(infos, tz=timezone(timedelta(hours=-9, minutes=-30))).split("\n")

    assert max(len(line) for line in lines) <= 100, "\n".join(lines)
    assert "WRITTEN" in lines[0]


def test_all_optional_columns_appear_in_order_after_the_duration():
    with_all = incremental(1, sync=0.001, slowest_async=0.002, written=10, full=20)
    tasks = tuple(
        TaskState(**{**{f: getattr(t, f) for f in t.__dataclass_fields__}, "alignment_seconds": 0.5, "channel_state_bytes": 7})
        for t in with_all.metadata.tasks
    )
    found = CheckpointMetadata(**{**{f: getattr(with_all.metadata, f) for f in with_all.metadata.__dataclass_fields__}, "tasks": tasks})

    header = table([CheckpointInfo(CheckpointId(1), "completed", None, found, 100)])[0]

    assert cells(header)[4:] == ["SIZE", "DURATION", "SYNC/ASYNC", "ALIGNMENT", "IN-FLIGHT", "WRITTEN", "FULL", "FINAL"]


@pytest.mark.parametrize(
    ("size", "shown"),
    [(512, "512 B"), (int(99.94 * 1024), "99.9 KiB"), (123 * 1024**2, "123 MiB"), (1023 * 1024**2, "1023 MiB"), (5 * 1024**3, "5.0 GiB")],
)
def test_incremental_sizes_are_shown_to_three_significant_digits_from_100_on(size, shown):
    assert format_size_short(size) == shown
