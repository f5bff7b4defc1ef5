# examples/webhook_journal.py: lines POSTed to http://127.0.0.1:8080/events, upper-cased, into out/,
# exactly-once: each POST is answered 200 only once its lines are in the journal (see
# docs/ingress-journal.md). Try: flowstate run examples/webhook_journal.py --checkpoint-dir chk
#   curl -d 'hello' http://127.0.0.1:8080/events
# WEBHOOK_PORT, WEBHOOK_JOURNAL (a directory or s3://bucket/prefix) and WEBHOOK_OUT override the defaults.
import os

import flowstate as fs

flow = fs.Dataflow("webhook-journal")
(flow.source(fs.HttpSource(int(os.environ.get("WEBHOOK_PORT", "8080")), path="/events",
                           journal=os.environ.get("WEBHOOK_JOURNAL", "journal/events")), uid="webhook")
     .map(str.upper, uid="upper")
     .sink(fs.FileSink(os.environ.get("WEBHOOK_OUT", "out/")), uid="out"))
