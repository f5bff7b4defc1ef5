"""flowstate: stateful stream processing with Flink-grade checkpoints, natively in Python."""
