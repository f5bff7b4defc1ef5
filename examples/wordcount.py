"""A running word count, exactly-once into JSON Lines files.

    mkdir -p data && printf 'to be or not to be\nthat is the question\n' > data/hamlet.txt
    flowstate run examples/wordcount.py --checkpoint-dir chk --mode exactly_once --interval 1s --parallelism 2

Kill it at any moment (kill -9 included) and run the same command again: it resumes from the latest
completed checkpoint, and ``out/`` ends up with every (word, n) exactly once.
"""

import flowstate as fs


class Count(fs.KeyedProcessFunction):
    def open(self, ctx):
        self.count = ctx.value_state("count", default=0)

    def process(self, word, ctx):
        n = self.count.value() + 1
        self.count.update(n)
        yield (word, n)


flow = fs.Dataflow("wordcount")
(flow.source(fs.FileSource("data/*.txt"), uid="lines")      # replayable: offsets go into checkpoints
     .flat_map(str.split, uid="words")
     .key_by(lambda w: w)
     .process(Count(), uid="count")
     .sink(fs.FileSink("out/"), uid="out"))                  # two-phase commit: exactly-once files
