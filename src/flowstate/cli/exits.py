"""Exit statuses of ``flowstate`` commands (what each means: ``flowstate.cli``)."""

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_STOPPED = 0, 1, 2, 3
EXIT_TERMINATED = 128 + 15  # as a shell reports a process ended by SIGTERM
EXIT_INTERRUPTED = 128 + 2
