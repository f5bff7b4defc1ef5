"""The ``flowstate`` command line: ``run``, ``checkpoints list | verify | doctor``, ``chaos``, ``ui``,
``postgres-slots``, ``demo``, and the control of a running job: ``status``, ``checkpoint``,
``savepoint``, ``stop`` (each given the job's checkpoint directory, where ``run`` writes the address
and token of its control endpoint).

Exit status: 0 when a bounded job finished (it read all its input) with its output committed, or a
control request succeeded; 3 when ``run`` ended on a stop (``flowstate stop``, or SIGTERM) after a
final checkpoint that committed the output up to it; 1 when the job failed (its restart strategy gave
up), when no job is running with the checkpoint directory, or when the requested checkpoint failed;
2 for a mistake in the command, the job file or the configuration, and when the control endpoint
refuses the token; 143 when ``run`` was stopped at once (a second SIGTERM, or no stop within
``--stop-timeout``) and 130 on Ctrl-C, both without a final checkpoint: the same command resumes.
``checkpoints verify`` exits 0 when everything verifies, 1 on any problem (each one listed) or when
the storage cannot be read, 2 for a mistake in the command. ``chaos`` exits 0 when every run
matched the run without failures, 1 on any difference.

The options of ``run`` are the fields of ``flowstate.options`` (``cli/options.py`` makes them);
what commands print is rendered in ``flowstate.render``; the commands are in ``cli/commands.py``."""

from __future__ import annotations

import sys

from flowstate.config import parse_restart
from flowstate.errors import ConfigError, FlowstateError, GraphError, JobFailedError
from flowstate.exits import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_STOPPED,
    EXIT_TERMINATED,
    EXIT_USAGE,
    Interrupted,
)
from flowstate.jobfile import load_dataflow

__all__ = ["EXIT_FAILED", "EXIT_INTERRUPTED", "EXIT_OK", "EXIT_STOPPED", "EXIT_TERMINATED", "EXIT_USAGE",
           "load_dataflow", "main", "parse_restart"]


def main(argv: list[str] | None = None) -> int:
    """Run the command in ``argv`` (default: this process's arguments) and return its exit status.
    Every mistake in the command, the job or the configuration is one line on stderr and exit 2."""
    import typer

    from flowstate.cli.commands import app  # here, so that importing flowstate.render stays light
    from flowstate.control.endpoint import Terminated, TokenRefused

    command = typer.main.get_command(app)
    try:
        code = command.main(args=sys.argv[1:] if argv is None else list(argv), prog_name="flowstate",
                            standalone_mode=False)
        return code if isinstance(code, int) else EXIT_OK
    except typer.TyperException as exc:  # a mistake in the command line: an unknown option, a missing argument
        message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
        print(f"flowstate: error: {' '.join(message.split())}", file=sys.stderr)
        return EXIT_USAGE
    except (ConfigError, GraphError, TokenRefused) as exc:
        print(f"flowstate: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except JobFailedError as exc:
        print(f"flowstate: job failed: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except FlowstateError as exc:
        print(f"flowstate: error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except Terminated as exc:
        print(f"flowstate: stopped at once ({exc.why}), without a final checkpoint; run the same command again "
              "to resume from the latest checkpoint", file=sys.stderr)
        return EXIT_TERMINATED
    except (Interrupted, KeyboardInterrupt, typer.Abort):
        print("flowstate: interrupted; run the same command again to resume from the latest checkpoint", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
