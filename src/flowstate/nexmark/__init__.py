"""Nexmark on flowstate: the event generator (``generator``), its events (``model``) and the queries
q0-q8 (``queries``).

    from flowstate.nexmark import NexmarkConfig, NexmarkSource, build
    flow = build("q5", NexmarkSource(NexmarkConfig(rate=1000), count=100_000), fs.FileSink("out/"))
"""

from flowstate.nexmark.generator import NexmarkConfig, NexmarkGenerator, NexmarkSource
from flowstate.nexmark.model import Auction, Bid, ClosedAuction, Event, Person, event_time
from flowstate.nexmark.queries import QUERIES, build

__all__ = ["QUERIES", "Auction", "Bid", "ClosedAuction", "Event", "NexmarkConfig", "NexmarkGenerator",
           "NexmarkSource", "Person", "build", "event_time"]
