"""The operators a task chains: stateless and keyed ones (``base``), keyed process functions with
timers (``timers``), timestamps and windows (``windows``), joins (``joins``), and the one place that
builds an operator for each kind of dataflow node (``build``)."""
