# Sessions per user and clicks per page and minute, in event time.
#   python examples/make_clicks.py clicks
#   flowstate run examples/clickstream_sessions.py --checkpoint-dir chk --interval 1s
import flowstate as fs
from clicks import parse  # line -> Click(ts: float, user: str, url: str)

flow = fs.Dataflow("clickstream")
clicks = (flow.source(fs.FileSource("clicks/*.csv"))
              .map(parse)
              .assign_timestamps(lambda c: c.ts,             # seconds since the epoch, or an aware datetime
                                 max_out_of_orderness="5s",  # watermarks trail the newest click by 5 s
                                 idle_timeout="30s"))        # a quiet source stops holding them back

sessions = (clicks.key_by(lambda c: c.user)
                  .window(fs.SessionWindows(gap="30m"))
                  .process(lambda user, window, clicks: [(user, window.start, window.end, len(clicks))]))
sessions.sink(fs.FileSink("out/sessions"))

per_minute = clicks.key_by(lambda c: c.url).window(fs.TumblingWindows("1m")).aggregate(fs.aggregates.count())
per_minute.map(lambda r: (r.key, r.window.start, r.value)).sink(fs.FileSink("out/per_minute"))
