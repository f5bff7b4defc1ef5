"""The three kinds of Nexmark events, and what the queries derive from them.

Times are integer milliseconds since the epoch (``date_time``, ``expires``), as in the Nexmark
specification; ``event_time(event)`` gives a record's timestamp in seconds for
``assign_timestamps``. Prices are integer cents. Every class is a frozen, slotted dataclass defined
at module level, so that records pickle into checkpoints and across worker processes.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Person:
    """A new user of the auction site."""

    id: int
    name: str
    email_address: str
    credit_card: str
    city: str
    state: str
    date_time: int
    extra: str = ""


@dataclass(frozen=True, slots=True)
class Auction:
    """A new item for sale: open from ``date_time`` to ``expires`` (both included)."""

    id: int
    item_name: str
    description: str
    initial_bid: int
    reserve: int
    date_time: int
    expires: int
    seller: int
    category: int
    extra: str = ""


@dataclass(frozen=True, slots=True)
class Bid:
    """A bid of ``bidder`` on ``auction``."""

    auction: int
    bidder: int
    price: int
    channel: str
    url: str
    date_time: int
    extra: str = ""


Event = Person | Auction | Bid


@dataclass(frozen=True, slots=True)
class ClosedAuction:
    """An auction whose ``expires`` the watermark passed, with the highest price bid on it between
    ``date_time`` and ``expires`` (both included). Auctions without such a bid have none."""

    id: int
    seller: int
    category: int
    expires: int
    price: int


def event_time(event: Event) -> float:
    """The event's timestamp in seconds since the epoch."""
    return event.date_time / 1000


def is_bid(event: Event) -> bool:
    return type(event) is Bid


def is_person(event: Event) -> bool:
    return type(event) is Person


def is_auction(event: Event) -> bool:
    return type(event) is Auction
