"""A source whose broker connection drops mid-run: every connection through a TCP proxy to Redis is
cut while the job reads, and the job still writes every count exactly once (the client reconnects,
or the task fails and the job restores from its latest checkpoint)."""

from __future__ import annotations

import json
import socket
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import flowstate as fs


class CuttingProxy:
    """Forwards 127.0.0.1:<port> to Redis; ``cut()`` closes every connection open at that moment."""

    def __init__(self, target: tuple[str, int]) -> None:
        self._target = target
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._open: list[socket.socket] = []
        self._lock = threading.Lock()
        self.cuts = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self._target)
            with self._lock:
                self._open += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def cut(self) -> None:
        with self._lock:
            victims, self._open = self._open, []
        for s in victims:
            try:
                s.shutdown(socket.SHUT_RDWR)
                s.close()
            except OSError:
                pass
        self.cuts += 1

    def close(self) -> None:
        self._listener.close()
        self.cut()


class Count(fs.KeyedProcessFunction):
    def open(self, ctx: Any) -> None:
        self.count = ctx.value_state("count", default=0)

    def process(self, word: str, ctx: Any):  # type: ignore[no-untyped-def]
        n = self.count.value() + 1
        self.count.update(n)
        yield [word, n]


def test_a_redis_source_whose_connections_are_cut_mid_run_loses_and_repeats_nothing(
    redis_url: str, unique: str, tmp_path: Path,
) -> None:
    import redis

    client = redis.Redis.from_url(redis_url)
    words = [f"w{(i * 31) % 97}" for i in range(6000)]
    with client.pipeline(transaction=False) as pipe:
        for w in words:
            pipe.xadd(f"{unique}:in", {"data": json.dumps(w)})
        pipe.execute()
    port = int(redis_url.rsplit(":", 1)[1].split("/")[0])
    proxy = CuttingProxy(("127.0.0.1", port))
    seen = [0]

    def cut_twice(word: str) -> str:
        seen[0] += 1
        if seen[0] in (1500, 4000):
            proxy.cut()  # the reader's connection dies between two polls
        return word

    flow = fs.Dataflow("cut", parallelism=1)
    (flow.source(fs.RedisStreamSource(streams=[f"{unique}:in"], url=f"redis://127.0.0.1:{proxy.port}", bounded=True),
                 uid="in")
         .map(cut_twice, uid="cut")
         .key_by(lambda w: w)
         .process(Count(), uid="count")
         .sink(fs.RedisStreamSink(stream=f"{unique}:out", url=redis_url), uid="out"))
    try:
        fs.run(
            flow,
            checkpoints=fs.CheckpointOptions(checkpoint_dir=tmp_path / "chk", interval="50ms"),
            execution=fs.ExecutionOptions(executor="threads", batch_size=100),
        )
    finally:
        proxy.close()
    try:
        output = Counter(tuple(json.loads(f[b"data"])) for _, f in client.xrange(f"{unique}:out"))
        counts = Counter(words)
        assert output == Counter((w, k) for w, c in counts.items() for k in range(1, c + 1))
        assert proxy.cuts >= 2, "the connections were never cut"
    finally:
        for key in client.scan_iter(f"{unique}*"):
            client.delete(key)
        client.close()


def test_a_nats_source_whose_connections_are_cut_mid_run_loses_and_repeats_nothing(
    nats_url: str, redis_url: str, unique: str, tmp_path: Path,
) -> None:
    import redis

    from .test_nats import create_stream, delete_stream, publish

    create_stream(nats_url, unique, [f"{unique}.in"])
    words = [f"w{(i * 31) % 97}" for i in range(6000)]
    publish(nats_url, [(f"{unique}.in", json.dumps(w).encode()) for w in words])
    proxy = CuttingProxy(("127.0.0.1", int(nats_url.rsplit(":", 1)[1])))
    seen = [0]

    def cut_twice(word: str) -> str:
        seen[0] += 1
        if seen[0] in (1500, 4000):
            proxy.cut()
        return word

    flow = fs.Dataflow("cut-nats", parallelism=1)
    (flow.source(fs.NatsSource(stream=unique, subjects=[f"{unique}.in"], servers=f"nats://127.0.0.1:{proxy.port}",
                               bounded=True), uid="in")
         .map(cut_twice, uid="cut")
         .key_by(lambda w: w)
         .process(Count(), uid="count")
         .sink(fs.RedisStreamSink(stream=f"{unique}:out", url=redis_url), uid="out"))
    client = redis.Redis.from_url(redis_url)
    try:
        fs.run(
            flow,
            checkpoints=fs.CheckpointOptions(checkpoint_dir=tmp_path / "chk", interval="50ms"),
            execution=fs.ExecutionOptions(executor="threads", batch_size=100),
        )
        output = Counter(tuple(json.loads(f[b"data"])) for _, f in client.xrange(f"{unique}:out"))
        counts = Counter(words)
        assert output == Counter((w, k) for w, c in counts.items() for k in range(1, c + 1))
        assert proxy.cuts >= 2, "the connections were never cut"
    finally:
        proxy.close()
        delete_stream(nats_url, unique)
        for key in client.scan_iter(f"{unique}*"):
            client.delete(key)
        client.close()
