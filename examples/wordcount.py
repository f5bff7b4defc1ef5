# examples/wordcount.py: (word, n) for the n-th time each word occurs in data/*.txt, into out/
import flowstate as fs


class Count(fs.KeyedProcessFunction):
    def open(self, ctx):
        self.count = ctx.value_state("count", default=0)   # one int per word (the key)

    def process(self, word, ctx):
        n = self.count.value() + 1
        self.count.update(n)
        yield (word, n)                                    # yield each output record


flow = fs.Dataflow("wordcount")
(flow.source(fs.FileSource("data/*.txt"), uid="lines")    # replayable: offsets go into checkpoints
     .flat_map(str.split, uid="words")
     .key_by(lambda word: word)
     .process(Count(), uid="count")
     .sink(fs.FileSink("out/"), uid="counts"))             # two-phase commit: exactly-once files
