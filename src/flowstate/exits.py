"""Exit statuses of ``flowstate`` commands (what each means: ``flowstate.cli``)."""

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_STOPPED = 0, 1, 2, 3
EXIT_TERMINATED = 128 + 15  # as a shell reports a process ended by SIGTERM
EXIT_INTERRUPTED = 128 + 2


class Interrupted(Exception):
    """Ctrl-C while a command ran, carried past the command-line library (which would end the
    process with 130 and no word) to ``flowstate.cli.main``, which says how to resume."""
