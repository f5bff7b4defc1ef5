"""The checkpoint protocol: pure state machines for barriers, coordination, restore and 2PC.

Nothing in this package performs I/O, reads a clock or starts a thread; the runtime (``flowstate.runner``, ``flowstate.task``, …)
executes what these modules decide.
"""
