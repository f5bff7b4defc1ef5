"""Nexmark queries q0-q8 on flowstate's public API.

Every query takes the stream of events with event time (``events(flow, source)``) and returns a
stream of plain tuples (rows), so that a ``FileSink`` writes them as JSON arrays:

- q0 pass-through: every bid, ``(auction, bidder, price, date_time)``.
- q1 currency conversion: every bid with its price in euros, ``(auction, bidder, 0.908 * price, date_time)``.
- q2 selection: ``(auction, price)`` of the bids on auctions whose id is a multiple of 123.
- q3 local item suggestion: ``(name, city, state, auction)`` for each auction of category 10 whose
  seller lives in OR, ID or CA: an incremental join of persons and auctions on ``seller = id``,
  a ``KeyedProcessFunction`` keyed by person id (the person in value state, auctions that came
  before their seller in list state). Persons are kept for the whole run, as in the SQL query.
- q4 average price per category: closed auctions (``closed_auctions``), then per category, in the
  order the auctions close (expiry time, then id), the running average of their final prices,
  ``(category, expires, auction, average)``.
- q5 hot items: bids per auction in sliding windows (10 s every 2 s), then per window the auctions
  with the most bids, ``(window start, window end, auction, bids)``.
- q6 average selling price by seller: closed auctions, then per seller in closing order the average
  of its last 10 final prices, ``(seller, expires, auction, average)``.
- q7 highest bid: per tumbling window of 10 s, the bids with the highest price,
  ``(window start, window end, auction, bidder, price, date_time)``; the highest bid of each auction
  first (a window aggregate keyed by auction), then the highest of those per window.
- q8 new users: persons who created an auction in the 10 s tumbling window in which they registered,
  ``(id, name, window start)``: a window join, written as one tumbling-window aggregate over persons
  and auctions keyed by person id (``id`` / ``seller``).

What flowstate lacks and how it is made here: **closing an auction** (the join of an auction with its
bids between its start and expiry, the highest price once it expired) is a keyed process function with
an event-time timer at the expiry (``ClosedAuctions``); **a step after a window** (the maximum over
all keys of a window, q5 and q7) is a keyed process function keyed by the window, with an event-time
timer at its end (``WindowMaximum``): results of a window reach it before the watermark that passes
the window's end, so its timer fires once they are all there; **the order of updates** of q4 and q6
(which SQL leaves to arrival) is made deterministic by buffering closed auctions until the watermark
passes their expiry and folding them in (expiry, id) order (``InClosingOrder``). Window joins (q8)
are windows over the keyed union of both sides.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import flowstate as fs
from flowstate.nexmark.model import Auction, Bid, ClosedAuction, Person, event_time

EURO_RATE = 0.908
Q2_MODULUS = 123
Q3_STATES = ("OR", "ID", "CA")
Q3_CATEGORY = 10
Q6_LAST = 10
WINDOW = "10s"
Q5_SLIDE = "2s"


def just_after(ms: int) -> float:
    """The first timestamp (seconds) after the event time ``ms``: a timer there fires once no record at
    or before ``ms`` can come any more."""
    return math.nextafter(ms / 1000, math.inf)


def events(flow: fs.Dataflow, source: Any, *, parallelism: int | None = None) -> fs.Stream:
    """The source's events with their event time; each source reader reads in event-time order, so
    watermarks trail the newest event by nothing."""
    return (flow.source(source, uid="nexmark-events", parallelism=parallelism)
                .assign_timestamps(event_time, uid="nexmark-time", parallelism=parallelism))


# ---- q0, q1, q2: stateless -----------------------------------------------------------------------


def _bid_row(bid: Bid) -> tuple[int, int, int, int]:
    return (bid.auction, bid.bidder, bid.price, bid.date_time)


def _bid_in_euros(bid: Bid) -> tuple[int, int, float, int]:
    return (bid.auction, bid.bidder, EURO_RATE * bid.price, bid.date_time)


def _is_bid(event: Any) -> bool:
    return type(event) is Bid


def _q2_selected(event: Any) -> bool:
    return type(event) is Bid and event.auction % Q2_MODULUS == 0


def _auction_and_price(bid: Bid) -> tuple[int, int]:
    return (bid.auction, bid.price)


def q0(stream: fs.Stream) -> fs.Stream:
    return stream.filter(_is_bid, name="q0 bids").map(_bid_row, name="q0 row")


def q1(stream: fs.Stream) -> fs.Stream:
    return stream.filter(_is_bid, name="q1 bids").map(_bid_in_euros, name="q1 euros")


def q2(stream: fs.Stream) -> fs.Stream:
    return stream.filter(_q2_selected, name="q2 selection").map(_auction_and_price, name="q2 row")


# ---- q3: incremental join ------------------------------------------------------------------------


def _q3_input(event: Any) -> bool:
    kind = type(event)
    if kind is Person:
        return event.state in Q3_STATES
    return kind is Auction and event.category == Q3_CATEGORY


def _person_or_seller(event: Any) -> int:
    return event.id if type(event) is Person else event.seller


class LocalItems(fs.KeyedProcessFunction):
    """q3, keyed by person id: each auction of the key meets its seller once, whichever came first."""

    def open(self, ctx: fs.RuntimeContext) -> None:
        self.person = ctx.value_state("person")
        self.waiting = ctx.list_state("auctions")

    def process(self, event: Any, ctx: fs.RuntimeContext) -> Iterable[Any]:
        if type(event) is Person:
            self.person.update(event)
            early = self.waiting.get()
            if early:
                self.waiting.clear()
                return [(event.name, event.city, event.state, a) for a in early]
            return ()
        person = self.person.value()
        if person is None:
            self.waiting.add(event.id)
            return ()
        return [(person.name, person.city, person.state, event.id)]


def q3(stream: fs.Stream) -> fs.Stream:
    return (stream.filter(_q3_input, name="q3 inputs")
                  .key_by(_person_or_seller)
                  .process(LocalItems(), name="q3 join", uid="q3-join"))


# ---- closed auctions (q4, q6) --------------------------------------------------------------------


def _auction_or_bid(event: Any) -> bool:
    return type(event) is not Person


def _auction_id(event: Any) -> int:
    return event.id if type(event) is Auction else event.auction


class ClosedAuctions(fs.KeyedProcessFunction):
    """Keyed by auction id. The auction waits in value state with the highest price bid on it in its
    time range so far; a timer just after its expiry emits ``ClosedAuction`` and clears the key.

    Bids that arrive before their auction (another source split may be behind) wait in list state; a
    timer just after the bid's time drops them if the auction has not come by then: an auction that
    comes later starts after the bid, so the bid cannot count for it. A bid after the auction closed
    has a later time than its expiry (the watermark passed it), so it only waits for that timer."""

    def open(self, ctx: fs.RuntimeContext) -> None:
        self.auction = ctx.value_state("auction")
        self.highest = ctx.value_state("highest")
        self.early = ctx.list_state("early bids")

    def process(self, event: Any, ctx: Any) -> None:
        if type(event) is Auction:
            self.auction.update(event)
            early = self.early.get()
            if early:
                self.early.clear()
                for bid in early:
                    self._bid(event, bid)
            ctx.timers.register_event_time(just_after(event.expires))
            return None
        auction = self.auction.value()
        if auction is None:
            self.early.add(event)
            ctx.timers.register_event_time(just_after(event.date_time))
        else:
            self._bid(auction, event)
        return None

    def _bid(self, auction: Auction, bid: Bid) -> None:
        if auction.date_time <= bid.date_time <= auction.expires:
            highest = self.highest.value()
            if highest is None or bid.price > highest:
                self.highest.update(bid.price)

    def on_timer(self, timestamp: float, ctx: Any) -> Iterable[Any]:
        auction = self.auction.value()
        if auction is not None:
            if timestamp < just_after(auction.expires):
                return ()  # a timer of a bid that came before its auction: that bid was used then
            highest = self.highest.value()
            self.auction.clear()
            self.highest.clear()
            if highest is None:
                return ()
            return [ClosedAuction(auction.id, auction.seller, auction.category, auction.expires, highest)]
        early = [b for b in self.early.get() if just_after(b.date_time) > timestamp]
        if early:
            self.early.update(early)
        else:
            self.early.clear()
        return ()


def closed_auctions(stream: fs.Stream, *, uid: str) -> fs.Stream:
    return (stream.filter(_auction_or_bid, name="auctions and bids")
                  .key_by(_auction_id)
                  .process(ClosedAuctions(), name="closed auctions", uid=uid))


class InClosingOrder(fs.KeyedProcessFunction):
    """Folds the closed auctions of a key in the order they closed (expiry, then id), whatever order
    they arrive in: each waits in list state until the watermark passes its expiry.
    ``fold(state, closed) -> (state, row)``; the fold's state is value state."""

    def __init__(self, fold: Callable[[Any, Any, ClosedAuction], tuple[Any, Any]]) -> None:
        self.fold = fold

    def open(self, ctx: fs.RuntimeContext) -> None:
        self.waiting = ctx.list_state("waiting")
        self.folded = ctx.value_state("folded")

    def process(self, closed: ClosedAuction, ctx: Any) -> None:
        self.waiting.add(closed)
        ctx.timers.register_event_time(just_after(closed.expires))

    def on_timer(self, timestamp: float, ctx: Any) -> Iterable[Any]:
        due: list[Any] = []
        rest: list[Any] = []
        for closed in self.waiting.get():
            (due if just_after(closed.expires) <= timestamp else rest).append(closed)
        if rest:
            self.waiting.update(rest)
        else:
            self.waiting.clear()
        state = self.folded.value()
        rows = []
        for closed in sorted(due, key=lambda c: (c.expires, c.id)):
            state, row = self.fold(ctx.key, state, closed)
            rows.append(row)
        self.folded.update(state)
        return rows


def _category_average(category: int, state: Any, closed: ClosedAuction) -> tuple[Any, Any]:
    total, count = state or (0, 0)
    total, count = total + closed.price, count + 1
    return (total, count), (category, closed.expires, closed.id, total / count)


def _seller_last_ten(seller: int, state: Any, closed: ClosedAuction) -> tuple[Any, Any]:
    prices = ((state or ()) + (closed.price,))[-Q6_LAST:]
    return prices, (seller, closed.expires, closed.id, sum(prices) / len(prices))


def _category(closed: ClosedAuction) -> int:
    return closed.category


def _seller(closed: ClosedAuction) -> int:
    return closed.seller


def q4(stream: fs.Stream) -> fs.Stream:
    return (closed_auctions(stream, uid="q4-closed")
            .key_by(_category)
            .process(InClosingOrder(_category_average), name="q4 average", uid="q4-average"))


def q6(stream: fs.Stream) -> fs.Stream:
    return (closed_auctions(stream, uid="q6-closed")
            .key_by(_seller)
            .process(InClosingOrder(_seller_last_ten), name="q6 average", uid="q6-average"))


# ---- q5, q7: windows, then the maximum per window -----------------------------------------------


def _bid_auction(bid: Bid) -> int:
    return bid.auction


def _result_window(result: fs.WindowResult) -> tuple[float, float]:
    return (result.window.start, result.window.end)


class WindowMaximum(fs.KeyedProcessFunction):
    """Keyed by window ``(start, end)``: keeps the rows with the largest ``score(result)`` among the
    window results of its key, and emits them (``row(result)``) once the watermark reaches the
    window's end, when every result of the window has arrived."""

    def __init__(self, score: Callable[[Any], Any], rows: Callable[[Any], Iterable[Any]]) -> None:
        self.score = score
        self.rows = rows

    def open(self, ctx: fs.RuntimeContext) -> None:
        self.best = ctx.value_state("best")

    def process(self, result: fs.WindowResult, ctx: Any) -> None:
        score = self.score(result)
        best = self.best.value()
        if best is None or score > best[0]:
            self.best.update((score, [result]))
            ctx.timers.register_event_time(result.window.end)
        elif score == best[0]:
            self.best.update((score, best[1] + [result]))

    def on_timer(self, timestamp: float, ctx: Any) -> Iterable[Any]:
        best = self.best.value()
        self.best.clear()
        return [row for result in (best[1] if best else ()) for row in self.rows(result)]


def _bids_counted(result: fs.WindowResult) -> int:
    return result.value


def _hot_item_row(result: fs.WindowResult) -> list[tuple[Any, ...]]:
    return [(result.window.start, result.window.end, result.key, result.value)]


def q5(stream: fs.Stream) -> fs.Stream:
    return (stream.filter(_is_bid, name="q5 bids")
                  .key_by(_bid_auction)
                  .window(fs.SlidingWindows(WINDOW, Q5_SLIDE))
                  .aggregate(fs.aggregates.count(), name="q5 bids per auction", uid="q5-count")
                  .key_by(_result_window)
                  .process(WindowMaximum(_bids_counted, _hot_item_row), name="q5 hottest", uid="q5-hottest"))


class HighestBids:
    """Aggregate: the highest price and every bid with it."""

    def create(self) -> tuple[int, tuple[Bid, ...]]:
        return (-1, ())

    def add(self, acc: tuple[int, tuple[Bid, ...]], bid: Bid) -> tuple[int, tuple[Bid, ...]]:
        if bid.price > acc[0]:
            return (bid.price, (bid,))
        if bid.price == acc[0]:
            return (acc[0], acc[1] + (bid,))
        return acc

    def merge(self, a: tuple[int, tuple[Bid, ...]], b: tuple[int, tuple[Bid, ...]]) -> tuple[int, tuple[Bid, ...]]:
        if a[0] != b[0]:
            return a if a[0] > b[0] else b
        return (a[0], a[1] + b[1])

    def result(self, acc: tuple[int, tuple[Bid, ...]]) -> tuple[int, tuple[Bid, ...]]:
        return acc


def _highest_price(result: fs.WindowResult) -> int:
    return result.value[0]


def _highest_bid_rows(result: fs.WindowResult) -> list[tuple[Any, ...]]:
    w = result.window
    return [(w.start, w.end, b.auction, b.bidder, b.price, b.date_time) for b in result.value[1]]


def q7(stream: fs.Stream) -> fs.Stream:
    return (stream.filter(_is_bid, name="q7 bids")
                  .key_by(_bid_auction)
                  .window(fs.TumblingWindows(WINDOW))
                  .aggregate(HighestBids(), name="q7 highest per auction", uid="q7-highest")
                  .key_by(_result_window)
                  .process(WindowMaximum(_highest_price, _highest_bid_rows), name="q7 highest", uid="q7-max"))


# ---- q8: window join -----------------------------------------------------------------------------


def _person_or_auction(event: Any) -> bool:
    return type(event) is not Bid


class NewUser:
    """Aggregate of one person id in one window: (the person's name if it registered, whether it
    created an auction)."""

    def create(self) -> tuple[str | None, bool]:
        return (None, False)

    def add(self, acc: tuple[str | None, bool], event: Any) -> tuple[str | None, bool]:
        if type(event) is Person:
            return (event.name, acc[1])
        return (acc[0], True)

    def merge(self, a: tuple[str | None, bool], b: tuple[str | None, bool]) -> tuple[str | None, bool]:
        return (a[0] if a[0] is not None else b[0], a[1] or b[1])

    def result(self, acc: tuple[str | None, bool]) -> tuple[str | None, bool]:
        return acc


def _joined(result: fs.WindowResult) -> bool:
    return result.value[0] is not None and result.value[1]


def _new_user_row(result: fs.WindowResult) -> tuple[int, str, float]:
    return (result.key, result.value[0], result.window.start)


def q8(stream: fs.Stream) -> fs.Stream:
    return (stream.filter(_person_or_auction, name="q8 persons and auctions")
                  .key_by(_person_or_seller)
                  .window(fs.TumblingWindows(WINDOW))
                  .aggregate(NewUser(), name="q8 window join", uid="q8-join")
                  .filter(_joined, name="q8 joined")
                  .map(_new_user_row, name="q8 row"))


QUERIES: dict[str, Callable[[fs.Stream], fs.Stream]] = {
    "q0": q0, "q1": q1, "q2": q2, "q3": q3, "q4": q4, "q5": q5, "q6": q6, "q7": q7, "q8": q8,
}


def build(query: str, source: Any, sink: Any, *, parallelism: int = 1, name: str | None = None) -> fs.Dataflow:
    """A job that runs ``query`` over ``source`` (usually a ``NexmarkSource``) into ``sink``."""
    if query not in QUERIES:
        raise ValueError(f"unknown Nexmark query {query!r}; known: {', '.join(QUERIES)}")
    flow = fs.Dataflow(name or f"nexmark-{query}", parallelism=parallelism)
    QUERIES[query](events(flow, source)).sink(sink, uid="nexmark-out")
    return flow
