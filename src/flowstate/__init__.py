"""flowstate: stateful stream processing with Flink-grade checkpoints, natively in Python.

    import flowstate as fs

    flow = fs.Dataflow("wordcount")
    (flow.source(fs.FileSource("data/*.txt"))
         .flat_map(str.split)
         .key_by(lambda w: w)
         .process(Count())
         .sink(fs.FileSink("out/")))
    fs.run(flow, checkpoints=fs.CheckpointOptions(checkpoint_dir="chk", mode="exactly_once", interval="1s"))
"""

from flowstate import aggregates
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
from flowstate.connectors.kafka import KafkaSink, KafkaSource
from flowstate.connectors.nats import NatsSink, NatsSource
from flowstate.connectors.pgoutput import Change
from flowstate.connectors.postgres import PostgresSink
from flowstate.connectors.postgres_cdc import PostgresCdcSource
from flowstate.connectors.print_sink import BatchCallbackSink, CallbackSink, DiscardSink, PrintSink
from flowstate.connectors.redis_streams import RedisStreamSink, RedisStreamSource
from flowstate.connectors.socket import SocketSource
from flowstate.control.endpoint import ControlError, JobControl
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
from flowstate.functions import KeyedProcessFunction, ProcessFunction, RuntimeContext, TimeDomain
from flowstate.options import (
    CheckpointOptions,
    EndpointOptions,
    ExecutionOptions,
    RecoveryOptions,
    StateOptions,
)
from flowstate.runner.result import JobResult
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
from flowstate.windowed import EarlyWindowResult, WindowResult

__version__ = "0.1.0"

__all__ = [
    "BatchCallbackSink", "CallbackSink", "Change", "CheckpointOptions", "EndpointOptions", "ExecutionOptions",
    "RecoveryOptions", "StateOptions", "ConfigError", "ControlError", "CountWindow",
    "CountWindows", "Dataflow", "DiscardSink", "EarlyWindowResult", "ExponentialBackoffRestart", "Failpoints", "FileSink", "FileSource",
    "FixedDelayRestart", "FlowstateError", "GeneratorSource", "GraphError", "HttpSource", "InjectedFailure",
    "JobControl", "JobFailedError", "JobResult", "KafkaSink", "KafkaSource", "KeyedProcessFunction",
    "KeyedStream", "Mode", "MqttSource", "NatsSink", "NatsSource", "NoRestart", "PostgresCdcSource",
    "PostgresSink", "PrintSink", "ProcessFunction", "RedisStreamSink", "RedisStreamSource", "RuntimeContext",
    "SessionWindows", "SlidingWindows", "SocketSource", "StateTtl", "Stream", "TimeDomain", "TimeWindow",
    "TtlTime", "TtlUpdate", "TumblingWindows", "UserFunctionError", "Watermark", "WindowResult", "aggregates", "run",
]
