"""Checkpoint storage: where checkpoint state files and metadata are made durable."""
