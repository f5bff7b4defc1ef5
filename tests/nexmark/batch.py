"""The plain batch computation of every Nexmark query over a list of events, written without the
engine or the query module: the oracle of the end-to-end tests. Window bounds are computed in integer
milliseconds and given in seconds, as the engine's windows are."""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from flowstate.nexmark.model import Auction, Bid, Person

WINDOW_MS = 10_000
SLIDE_MS = 2_000


def _bids(events: list[Any]) -> list[Bid]:
    return [e for e in events if isinstance(e, Bid)]


def q0(events: list[Any]) -> Counter:
    return Counter((b.auction, b.bidder, b.price, b.date_time) for b in _bids(events))


def q1(events: list[Any]) -> Counter:
    return Counter((b.auction, b.bidder, 0.908 * b.price, b.date_time) for b in _bids(events))


def q2(events: list[Any]) -> Counter:
    return Counter((b.auction, b.price) for b in _bids(events) if b.auction % 123 == 0)


def q3(events: list[Any]) -> Counter:
    people = {e.id: e for e in events if isinstance(e, Person) and e.state in ("OR", "ID", "CA")}
    out: Counter = Counter()
    for a in events:
        if isinstance(a, Auction) and a.category == 10 and a.seller in people:
            p = people[a.seller]
            out[(p.name, p.city, p.state, a.id)] += 1
    return out


def closed(events: list[Any]) -> list[tuple[int, int, int, int, int]]:
    """(expires, id, seller, category, final price) of every auction with a bid in its time range."""
    best: dict[int, int] = {}
    auctions = {e.id: e for e in events if isinstance(e, Auction)}
    for b in _bids(events):
        a = auctions.get(b.auction)
        if a is not None and a.date_time <= b.date_time <= a.expires:
            best[a.id] = max(best.get(a.id, -1), b.price)
    return sorted((a.expires, a.id, a.seller, a.category, best[a.id]) for a in auctions.values() if a.id in best)


def q4(events: list[Any]) -> Counter:
    sums: dict[int, list[int]] = defaultdict(lambda: [0, 0])
    out: Counter = Counter()
    for expires, aid, _, category, price in closed(events):
        s = sums[category]
        s[0] += price
        s[1] += 1
        out[(category, expires, aid, s[0] / s[1])] += 1
    return out


def q6(events: list[Any]) -> Counter:
    last: dict[int, list[int]] = defaultdict(list)
    out: Counter = Counter()
    for expires, aid, seller, _, price in closed(events):
        prices = last[seller]
        prices.append(price)
        del prices[:-10]
        out[(seller, expires, aid, sum(prices) / len(prices))] += 1
    return out


def q5(events: list[Any]) -> Counter:
    counts: dict[int, Counter] = defaultdict(Counter)
    for b in _bids(events):
        start = b.date_time - b.date_time % SLIDE_MS
        while start > b.date_time - WINDOW_MS:
            counts[start][b.auction] += 1
            start -= SLIDE_MS
    out: Counter = Counter()
    for start, per_auction in counts.items():
        top = max(per_auction.values())
        for auction, n in per_auction.items():
            if n == top:
                out[(start / 1000, (start + WINDOW_MS) / 1000, auction, n)] += 1
    return out


def q7(events: list[Any]) -> Counter:
    windows: dict[int, list[Bid]] = defaultdict(list)
    for b in _bids(events):
        windows[b.date_time - b.date_time % WINDOW_MS].append(b)
    out: Counter = Counter()
    for start, bids in windows.items():
        top = max(b.price for b in bids)
        for b in bids:
            if b.price == top:
                out[(start / 1000, (start + WINDOW_MS) / 1000, b.auction, b.bidder, b.price, b.date_time)] += 1
    return out


def q8(events: list[Any]) -> Counter:
    sold = {(e.seller, e.date_time - e.date_time % WINDOW_MS) for e in events if isinstance(e, Auction)}
    out: Counter = Counter()
    for p in events:
        if isinstance(p, Person):
            start = p.date_time - p.date_time % WINDOW_MS
            if (p.id, start) in sold:
                out[(p.id, p.name, start / 1000)] += 1
    return out


BATCH = {"q0": q0, "q1": q1, "q2": q2, "q3": q3, "q4": q4, "q5": q5, "q6": q6, "q7": q7, "q8": q8}


def committed(directory: Path) -> Counter:
    """The rows of every committed file of a ``FileSink`` directory, as tuples."""
    rows: Counter = Counter()
    if not directory.exists():
        return rows
    for path in sorted(directory.iterdir()):
        if not path.name.startswith("."):
            with open(path, encoding="utf-8") as file:
                rows.update(tuple(json.loads(line)) for line in file)
    return rows
