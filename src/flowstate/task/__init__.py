"""Tasks: one subtask of a chain of operators, its input gate, its output, its snapshots.

- ``task``: ``StreamTask`` and ``SourceTask``, the loop that reads input, runs the chain, handles
  barriers through the protocol package's handlers and writes snapshots.
- ``output``: routing a chain's output to the downstream tasks (keyed, forward, broadcast).
- ``messages``: the mail a task receives and the reports it sends.
- ``plan``: the attempt plan, the one picklable value every executor builds tasks from.
- ``factory``: builds the tasks of a plan that run in this process, restored from their state.
- ``assignment``: which task state (key groups, source splits) each subtask of a new attempt loads,
  also when the parallelism changed.
"""
