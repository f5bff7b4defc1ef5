"""The Nexmark generator: proportions, ids, times and draws as the specification gives them; event
*i* a pure function of *i*; and the source's recovery symmetry (a reader rebuilt from a snapshot
reads exactly what followed it)."""

from __future__ import annotations

import pickle
from collections import Counter

import pytest

from flowstate.nexmark import Auction, Bid, NexmarkConfig, NexmarkGenerator, NexmarkSource, Person
from flowstate.nexmark.generator import last_auction_id, last_person_id

CONFIG = NexmarkConfig(rate=1000)


def test_every_50_events_hold_one_person_three_auctions_and_46_bids():
    events = NexmarkGenerator(CONFIG).events(0, 5000)
    kinds = Counter(type(e) for e in events)
    assert kinds == {Person: 100, Auction: 300, Bid: 4600}
    assert [type(e) for e in events[:5]] == [Person, Auction, Auction, Auction, Bid]


def test_person_and_auction_ids_are_dense_and_rise_from_1000():
    events = NexmarkGenerator(CONFIG).events(0, 5000)
    assert [e.id for e in events if isinstance(e, Person)] == list(range(1000, 1100))
    assert [e.id for e in events if isinstance(e, Auction)] == list(range(1000, 1300))
    assert last_person_id(0) == 0 and last_auction_id(0) == -1 and last_auction_id(3) == 2 and last_auction_id(50) == 2


def test_event_times_advance_at_the_configured_rate():
    gen = NexmarkGenerator(NexmarkConfig(rate=400, base_time=5_000))
    times = [e.date_time for e in gen.events(0, 2000)]
    assert times == sorted(times)
    assert times[0] == 5_000 and times[400] == 6_000 and times[1999] == 5_000 + 1999 * 1000 // 400


def test_references_prices_and_categories_stay_in_their_ranges():
    gen = NexmarkGenerator(CONFIG)
    events = gen.events(0, 20_000)
    for i, e in enumerate(events):
        if isinstance(e, Bid):
            assert 1000 <= e.auction <= 1000 + last_auction_id(i) + 10
            assert 1000 <= e.bidder <= 1000 + last_person_id(i) + 10
            assert 100 <= e.price <= 100_000_000
        elif isinstance(e, Auction):
            assert 10 <= e.category <= 14
            assert e.date_time < e.expires
            assert e.reserve > e.initial_bid >= 100
            assert 1000 <= e.seller <= 1000 + last_person_id(i) + 10
    bids = [e for e in events if isinstance(e, Bid)]
    hot = Counter(b.auction for b in bids if b.auction % 100 == 0)
    # Rule 3: about half of the bids go to a hot auction, three quarters of the auctions to a hot seller.
    assert 0.45 < sum(hot.values()) / len(bids) < 0.56
    sellers = [e.seller for e in events if isinstance(e, Auction)]
    assert 0.70 < sum(1 for s in sellers if s % 100 == 0) / len(sellers) < 0.82
    assert len({e.category for e in events if isinstance(e, Auction)}) == 5


def test_an_event_is_a_function_of_its_number_alone():
    a, b = NexmarkGenerator(CONFIG), NexmarkGenerator(CONFIG)
    forward = a.events(0, 300)
    assert [b.event(i) for i in reversed(range(300))] == forward[::-1]
    assert pickle.loads(pickle.dumps(a)).events(0, 300) == forward
    assert NexmarkGenerator(NexmarkConfig(rate=1000, base_time=0)).event(7) != forward[7]


def test_a_bad_configuration_is_refused():
    with pytest.raises(ValueError, match="rate must be a positive int"):
        NexmarkConfig(rate=0)


def read_all(reader, batch: int = 7) -> list:
    out = []
    while (records := reader.poll(batch)) is not None:
        out.extend(records)
    return out


def test_the_splits_of_the_source_hold_every_event_once_in_index_order_per_reader():
    source = NexmarkSource(CONFIG, 500, splits=3)
    events = NexmarkGenerator(CONFIG).events(0, 500)
    assert source.replayable and source.splits() == ["gen-0", "gen-1", "gen-2"]
    one = read_all(source.build_reader(["gen-0", "gen-2"], None))
    other = read_all(source.build_reader(["gen-1"], None))
    assert one == [e for i, e in enumerate(events) if i % 3 != 1]
    assert other == events[1::3]
    assert [e.date_time for e in one] == sorted(e.date_time for e in one)


def test_a_reader_rebuilt_from_a_snapshot_reads_exactly_what_followed_it():
    source = NexmarkSource(CONFIG, 400, splits=2)
    reader = source.build_reader(["gen-0", "gen-1"], None)
    first = reader.poll(25)
    snapshot = reader.snapshot()
    # The snapshot names the next event of each split, not the last one read.
    assert snapshot == {"gen-0": 26, "gen-1": 25}
    rest = read_all(reader)
    resumed = read_all(source.build_reader(["gen-0", "gen-1"], pickle.loads(pickle.dumps(snapshot))))
    assert resumed == rest
    assert first + rest == NexmarkGenerator(CONFIG).events(0, 400)
    # Rescaled: each split on a reader of its own, from the same positions.
    apart = read_all(source.build_reader(["gen-0"], snapshot)) + read_all(source.build_reader(["gen-1"], snapshot))
    assert sorted(apart, key=lambda e: (e.date_time, repr(e))) == sorted(rest, key=lambda e: (e.date_time, repr(e)))
