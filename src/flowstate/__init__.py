"""flowstate: stateful stream processing with Flink-grade checkpoints, natively in Python.

    import flowstate as fs

    flow = fs.Dataflow("wordcount")
    (flow.source(fs.FileSource("data/*.txt"))
         .flat_map(str.split)
         .key_by(lambda w: w)
         .process(Count())
         .sink(fs.FileSink("out/")))
    fs.run(flow, checkpoint_dir="chk", mode="exactly_once", interval="1s")
"""

from flowstate.config import (
    ExponentialBackoffRestart,
    FixedDelayRestart,
    Mode,
    NoRestart,
)
from flowstate.connectors.file_sink import FileSink
from flowstate.connectors.files import FileSource
from flowstate.connectors.generator import GeneratorSource
from flowstate.connectors.ingress import HttpSource, MqttSource
from flowstate.connectors.postgres import PostgresSink
from flowstate.connectors.postgres_cdc import Change, PostgresCdcSource
from flowstate.connectors.kafka import KafkaSink, KafkaSource
from flowstate.connectors.nats import NatsSink, NatsSource
from flowstate.connectors.print_sink import BatchCallbackSink, CallbackSink, PrintSink
from flowstate.connectors.redis_streams import RedisStreamSink, RedisStreamSource
from flowstate.connectors.socket import SocketSource
from flowstate.dataflow import Dataflow, KeyedStream, Stream
from flowstate.errors import (
    ConfigError,
    FlowstateError,
    GraphError,
    JobFailedError,
    UserFunctionError,
)
from flowstate.execution import run
from flowstate.failpoints import Failpoints, InjectedFailure
from flowstate import aggregates
from flowstate.functions import KeyedProcessFunction, ProcessFunction, RuntimeContext, TimeDomain
from flowstate.control.endpoint import ControlError, JobControl
from flowstate.runner.result import JobResult
from flowstate.operators.window_functions import EarlyWindowResult, WindowResult
from flowstate.state.ttl import StateTtl, TtlTime, TtlUpdate
from flowstate.time.watermarks import Watermark
from flowstate.time.windows import (
    CountWindow,
    CountWindows,
    SessionWindows,
    SlidingWindows,
    TimeWindow,
    TumblingWindows,
)

__version__ = "0.1.0"

__all__ = [
    "BatchCallbackSink", "CallbackSink", "Change", "ConfigError", "ControlError", "CountWindow",
    "CountWindows", "Dataflow", "EarlyWindowResult", "ExponentialBackoffRestart", "Failpoints", "FileSink", "FileSource",
    "FixedDelayRestart", "FlowstateError", "GeneratorSource", "GraphError", "HttpSource", "InjectedFailure",
    "JobControl", "JobFailedError", "JobResult", "KafkaSink", "KafkaSource", "KeyedProcessFunction",
    "KeyedStream", "Mode", "MqttSource", "NatsSink", "NatsSource", "NoRestart", "PostgresCdcSource",
    "PostgresSink", "PrintSink", "ProcessFunction", "RedisStreamSink", "RedisStreamSource", "RuntimeContext",
    "SessionWindows", "SlidingWindows", "SocketSource", "StateTtl", "Stream", "TimeDomain", "TimeWindow",
    "TtlTime", "TtlUpdate", "TumblingWindows", "UserFunctionError", "Watermark", "WindowResult", "aggregates", "run",
]
