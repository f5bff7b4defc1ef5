"""A keyed word count from a NATS JetStream stream to a Redis stream, exactly-once end to end.

Lines are read from the subjects ``{STREAM}.0`` and ``{STREAM}.1`` of the JetStream stream ``STREAM``
(two splits; their stream sequences go into each checkpoint), split into words, counted per word,
and every ``(word, n)`` is appended to the Redis stream ``OUT`` (field ``data``, JSON) when the
checkpoint that covers it completes, with a commit marker written by the same Lua script.

    python examples/nats_to_redis_demo.py        # publishes the input, kills the job, checks the output

or by hand, after publishing lines to the stream:

    DEMO_STREAM=words DEMO_OUT=counts flowstate run examples/nats_to_redis.py --checkpoint-dir chk

Configuration (environment): ``DEMO_STREAM`` (default ``demo_words``), ``DEMO_OUT`` (``demo_counts``),
``DEMO_NATS`` (``nats://127.0.0.1:4222``), ``DEMO_REDIS`` (``redis://127.0.0.1:6379``),
``DEMO_DELIVERY`` (``exactly_once`` or ``at_least_once``), ``DEMO_PARALLELISM`` (2), and
``DEMO_READS``: a file that grows by one byte per line read (how a test tells how much an attempt read),
``DEMO_DELAY_MS``: milliseconds of sleep per line read (so that several checkpoints complete before
the end of the input, however fast the machine), ``FLOWSTATE_CHAOS_JOB``: set by the chaos runner
to a name unique to each of its jobs, appended to the output stream's name (``OUT:JOB``) so that every
job writes to a stream of its own, ``DEMO_RATE``: at most that many lines per second
per reader (the source's ``rate``: it also keeps each poll, between which the source takes its
snapshots, below a tenth of a second of input), and ``DEMO_HOLD_AFTER``: once a run has read that
many lines (the size of ``DEMO_READS``), every further line waits until the run is killed (so that a
test's kill always lands before the end of the input).
"""

import os
import time

import flowstate as fs

STREAM = os.environ.get("DEMO_STREAM", "demo_words")
OUT = os.environ.get("DEMO_OUT", "demo_counts")
if os.environ.get("FLOWSTATE_CHAOS_JOB"):
    OUT = f"{OUT}:{os.environ['FLOWSTATE_CHAOS_JOB']}"
NATS = os.environ.get("DEMO_NATS", "nats://127.0.0.1:4222")
REDIS = os.environ.get("DEMO_REDIS", "redis://127.0.0.1:6379")
DELIVERY = os.environ.get("DEMO_DELIVERY", "exactly_once")
READS = os.environ.get("DEMO_READS")
DELAY = float(os.environ.get("DEMO_DELAY_MS", "0")) / 1000
HOLD_AFTER = int(os.environ.get("DEMO_HOLD_AFTER", "0"))
RATE = float(os.environ["DEMO_RATE"]) if os.environ.get("DEMO_RATE") else None


class Count(fs.KeyedProcessFunction):
    def open(self, ctx):
        self.count = ctx.value_state("count", default=0)

    def process(self, word, ctx):
        n = self.count.value() + 1
        self.count.update(n)
        yield (word, n)


def decode(payload: bytes) -> str:
    if READS:
        with open(READS, "ab", buffering=0) as f:
            f.write(b".")
            read = f.tell()  # lines read by this run, over every worker process
        while HOLD_AFTER and read > HOLD_AFTER:
            time.sleep(1)  # held here until the run is killed
    if DELAY:
        time.sleep(DELAY)
    return payload.decode()


flow = fs.Dataflow("nats-to-redis", parallelism=int(os.environ.get("DEMO_PARALLELISM", "2")))
(flow.source(fs.NatsSource(stream=STREAM, subjects=[f"{STREAM}.0", f"{STREAM}.1"], servers=NATS, bounded=True,
                           rate=RATE, decoder=decode), uid="lines")
     .flat_map(str.split, uid="words")
     .key_by(lambda word: word)
     .process(Count(), uid="count")
     .sink(fs.RedisStreamSink(stream=OUT, url=REDIS, delivery=DELIVERY), uid="counts"))
