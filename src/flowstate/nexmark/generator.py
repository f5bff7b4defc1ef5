"""The Nexmark event generator: event *i* is a pure function of *i* and the configuration.

Rules (the Nexmark specification, as its generator for Beam and Flink implements it):

1. Of every 50 consecutive events, one is a person, three are auctions and 46 are bids:
   ``i % 50 == 0`` is a person, ``1 <= i % 50 <= 3`` an auction, the rest bids.
2. Ids are dense and rise with the event number: the person of epoch ``i // 50`` has id
   ``1000 + i // 50``, its three auctions ids ``1000 + 3 * (i // 50) + k``.
3. An auction's seller is a "hot" seller (the last person id rounded down to a multiple of 100)
   with probability 3/4, else one of the ``active_people`` newest persons (or one of the next 10 not
   created yet). A bid's auction is a hot auction (rounded down to 100) with probability 1/2, else
   one of the ``in_flight_auctions`` newest auctions (or one of the next 10); its bidder is a hot
   bidder with probability 3/4.
4. Prices are ``round(10 ** (6 u) * 100)`` cents for a uniform ``u`` in [0, 1) (1 $ to 1 M$,
   log-uniform). Categories are 10..14. An auction lasts between 1 ms and twice the event time that
   ``in_flight_auctions`` auctions take to be created.
5. Event *i* happens at ``base_time + i * 1000 / rate`` ms (``rate`` events per second of event
   time, integer milliseconds rounded down): event times never decrease with *i*.
6. The random draws of event *i* come from a generator seeded with *i* (splitmix64), so any event can
   be produced alone, in any order, in any process: ``NexmarkSource`` reads split *k* of *n* as the
   events with ``i % n == k`` and stores the next index per split in checkpoints.

Not reproduced: the padding of ``extra`` to average event sizes (``extra`` is empty), rate shapes
other than a constant rate, and out-of-order delays of the original generator.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from flowstate.connectors.generator import GeneratorReader, GeneratorSource
from flowstate.nexmark.model import Auction, Bid, Event, Person

PERSON_PROPORTION = 1
AUCTION_PROPORTION = 3
BID_PROPORTION = 46
TOTAL_PROPORTION = PERSON_PROPORTION + AUCTION_PROPORTION + BID_PROPORTION
FIRST_PERSON_ID = 1000
FIRST_AUCTION_ID = 1000
FIRST_CATEGORY_ID = 10
NUM_CATEGORIES = 5
HOT_ROUNDING = 100
"""Hot auctions, sellers and bidders are the newest id rounded down to a multiple of this."""
PERSON_ID_LEAD = 10
AUCTION_ID_LEAD = 10
"""A random person or auction may be one of this many not created yet (so joins see early records)."""

FIRST_NAMES = ("Peter", "Paul", "Luke", "John", "Saul", "Vicky", "Kate", "Julie", "Sarah", "Deiter", "Walter")
LAST_NAMES = ("Shultz", "Abrams", "Spencer", "White", "Bartels", "Walton", "Smith", "Jones", "Noris")
US_STATES = ("AZ", "CA", "ID", "OR", "WA", "WY")
US_CITIES = ("Phoenix", "Los Angeles", "San Francisco", "Boise", "Portland", "Bend", "Redmond", "Seattle",
             "Kent", "Cheyenne")
HOT_CHANNELS = ("Google", "Facebook", "Baidu", "Apple")
_LETTERS = "abcdefghijklmnopqrstuvwxyz"
_MASK = (1 << 64) - 1
_GAMMA = 0x9E3779B97F4A7C15


@dataclass(frozen=True, slots=True)
class NexmarkConfig:
    """What the events depend on. ``rate``: events per second of event time."""

    rate: int = 10_000
    base_time: int = 1_700_000_000_000
    """Event time of event 0, in milliseconds since the epoch."""
    active_people: int = 1000
    in_flight_auctions: int = 100
    hot_auction_ratio: int = 2
    hot_seller_ratio: int = 4
    hot_bidder_ratio: int = 4
    hot_channel_ratio: int = 2
    channels: int = 10_000

    def __post_init__(self) -> None:
        for name in ("rate", "active_people", "in_flight_auctions", "hot_auction_ratio", "hot_seller_ratio",
                     "hot_bidder_ratio", "hot_channel_ratio", "channels"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"NexmarkConfig: {name} must be a positive int, got {value!r}")


class _Draws:
    """splitmix64 seeded with the event number: cheap to seed (rule 6), unlike ``random.Random``."""

    __slots__ = ("state",)

    def __init__(self, seed: int) -> None:
        self.state = (seed * 0xD1B54A32D192ED03 + 0x2545F4914F6CDD1D) & _MASK

    def next64(self) -> int:
        self.state = z = (self.state + _GAMMA) & _MASK
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
        return z ^ (z >> 31)

    def below(self, n: int) -> int:
        """A number in ``0 .. n - 1``."""
        return self.next64() % n

    def uniform(self) -> float:
        """A float in [0, 1)."""
        return (self.next64() >> 11) * (1.0 / (1 << 53))

    def string(self, max_length: int) -> str:
        n = 3 + self.below(max_length - 2)
        return "".join(_LETTERS[self.below(26)] for _ in range(n))


def last_person_id(i: int) -> int:
    """The 0-based id of the newest person at event ``i`` (its own, for a person)."""
    epoch, offset = divmod(i, TOTAL_PROPORTION)
    return epoch * PERSON_PROPORTION + min(offset, PERSON_PROPORTION - 1)


def last_auction_id(i: int) -> int:
    """The 0-based id of the newest auction at event ``i`` (its own, for an auction; -1 before any)."""
    epoch, offset = divmod(i, TOTAL_PROPORTION)
    if offset < PERSON_PROPORTION:
        epoch, offset = epoch - 1, AUCTION_PROPORTION - 1
    elif offset >= PERSON_PROPORTION + AUCTION_PROPORTION:
        offset = AUCTION_PROPORTION - 1
    else:
        offset -= PERSON_PROPORTION
    return epoch * AUCTION_PROPORTION + offset


class NexmarkGenerator:
    """``event(i)``: the *i*-th event (module rules). Picklable; holds nothing but its configuration."""

    __slots__ = ("config", "_auction_events")

    def __init__(self, config: NexmarkConfig | None = None) -> None:
        self.config = config or NexmarkConfig()
        self._auction_events = self.config.in_flight_auctions * TOTAL_PROPORTION // AUCTION_PROPORTION

    def __reduce__(self) -> tuple[Any, ...]:
        return (NexmarkGenerator, (self.config,))

    def timestamp(self, i: int) -> int:
        """Event time of event ``i`` in milliseconds (rule 5)."""
        return self.config.base_time + i * 1000 // self.config.rate

    def event(self, i: int) -> Event:
        offset = i % TOTAL_PROPORTION
        if offset < PERSON_PROPORTION:
            return self.person(i)
        if offset < PERSON_PROPORTION + AUCTION_PROPORTION:
            return self.auction(i)
        return self.bid(i)

    __call__ = event

    def events(self, start: int, stop: int) -> list[Event]:
        return [self.event(i) for i in range(start, stop)]

    def _random_person(self, i: int, draws: _Draws) -> int:
        people = last_person_id(i) + 1
        active = min(people, self.config.active_people)
        return people - active + draws.below(active + PERSON_ID_LEAD)

    def _random_auction(self, i: int, draws: _Draws) -> int:
        newest = last_auction_id(i)
        oldest = max(newest - self.config.in_flight_auctions, 0)
        return oldest + draws.below(newest - oldest + 1 + AUCTION_ID_LEAD)

    @staticmethod
    def _price(draws: _Draws) -> int:
        return round(10.0 ** (draws.uniform() * 6.0) * 100.0)

    def person(self, i: int) -> Person:
        draws = _Draws(i)
        name = f"{FIRST_NAMES[draws.below(len(FIRST_NAMES))]} {LAST_NAMES[draws.below(len(LAST_NAMES))]}"
        email = f"{draws.string(7)}@{draws.string(5)}.com"
        card = " ".join(f"{draws.below(10_000):04d}" for _ in range(4))
        city = US_CITIES[draws.below(len(US_CITIES))]
        state = US_STATES[draws.below(len(US_STATES))]
        return Person(FIRST_PERSON_ID + last_person_id(i), name, email, card, city, state, self.timestamp(i))

    def auction(self, i: int) -> Auction:
        draws = _Draws(i)
        config = self.config
        if draws.below(config.hot_seller_ratio) > 0:
            seller = (last_person_id(i) // HOT_ROUNDING) * HOT_ROUNDING
        else:
            seller = self._random_person(i, draws)
        category = FIRST_CATEGORY_ID + draws.below(NUM_CATEGORIES)
        initial = self._price(draws)
        now = self.timestamp(i)
        horizon = self.timestamp(i + self._auction_events) - now
        expires = now + 1 + draws.below(max(horizon * 2, 1))
        reserve = initial + self._price(draws)
        return Auction(FIRST_AUCTION_ID + last_auction_id(i), draws.string(20), draws.string(100), initial, reserve,
                       now, expires, FIRST_PERSON_ID + seller, category)

    def bid(self, i: int) -> Bid:
        draws = _Draws(i)
        config = self.config
        if draws.below(config.hot_auction_ratio) > 0:
            auction = (last_auction_id(i) // HOT_ROUNDING) * HOT_ROUNDING
        else:
            auction = self._random_auction(i, draws)
        if draws.below(config.hot_bidder_ratio) > 0:
            bidder = (last_person_id(i) // HOT_ROUNDING) * HOT_ROUNDING + 1
        else:
            bidder = self._random_person(i, draws)
        price = self._price(draws)
        if draws.below(config.hot_channel_ratio) > 0:
            channel = HOT_CHANNELS[draws.below(len(HOT_CHANNELS))]
            url = f"https://www.nexmark.com/{channel.lower()}/item.htm?query=1"
        else:
            n = draws.below(config.channels)
            channel = f"channel-{n}"
            url = f"https://www.nexmark.com/item.htm?query=1&channel_id={n}"
        return Bid(FIRST_AUCTION_ID + auction, FIRST_PERSON_ID + bidder, price, channel, url, self.timestamp(i))


class NexmarkSource:
    """The events ``0 .. count - 1`` of ``NexmarkGenerator(config)`` as a replayable source
    (``count=None``: unbounded). Split *k* of ``splits`` holds the events with ``i % splits == k``;
    its position is the index of the next event it will read, and a reader owning several splits
    reads them merged in index order, so event times never decrease within a reader
    (``flowstate.connectors.generator`` rules 1-5, which this source follows). ``throttle`` caps
    each reader at that many events per second of processing time (tests use it to take
    checkpoints while windows are open)."""

    __slots__ = ("generator", "count", "_inner")

    def __init__(self, config: NexmarkConfig | None = None, count: int | None = None, *, splits: int = 1,
                 throttle: float | None = None, name: str = "nexmark") -> None:
        self.generator = NexmarkGenerator(config)
        self.count = count
        self._inner = GeneratorSource(self.generator.event, count, splits=splits, name=name, rate=throttle)

    @property
    def name(self) -> str:
        return self._inner.name

    @property
    def replayable(self) -> bool:
        return True

    def splits(self) -> list[str]:
        return self._inner.splits()

    def build_reader(self, splits: Sequence[str], resume_state: dict[str, Any] | None) -> GeneratorReader:
        return self._inner.build_reader(splits, resume_state)
