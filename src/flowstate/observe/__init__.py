"""Observability of a job: the checkpoint history it records, its Prometheus metrics, the checkpoint
doctor and the dashboard.

Layout:

- ``counters.py``: what each task counts (records in and out, back-pressure, state entries).
- ``history.py``: the events of a run (checkpoints completed and failed, restores, restarts) as
  values, and the ``_history.jsonl`` file of the checkpoint directory that keeps them.
- ``doctor.py``: pure diagnosis of a history: findings with numbers and suggestions.
- ``metrics.py``: the Prometheus registry of one job (aggregated in the coordinator).
- ``observer.py``: the coordinator's hooks, feeding the history, the metrics and the dashboard.
- ``dashboard.py``: the pages, rendered server-side (inline SVG); ``server.py``: their HTTP server.
- ``logs.py``: ``--log-level`` and ``--log-format json``.
"""
