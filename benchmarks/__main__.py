"""`python -m benchmarks ...`, and `console`, the installed `metabench` command (pyproject.toml).

Importing the command line takes seconds (torch); until it installs its own handlers, SIGINT and
SIGTERM end the process with one line and the usual exit status instead of a traceback. This
module imports nothing heavy itself, so that holds from the first instruction of either entry.
"""
import os
import signal
import sys


def _while_starting(signum, frame):
    print(f"interrupted by {signal.Signals(signum).name} while starting; nothing was written", file=sys.stderr)
    sys.exit(128 + signum)


def console(prog: str | None = None) -> int:
    """The `metabench` command: the same as `python -m benchmarks`, named after how it was called."""
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _while_starting)
    from benchmarks.cli import main

    return main(prog=prog or os.path.basename(sys.argv[0]) or "metabench")


if __name__ == "__main__":
    sys.exit(console("python -m benchmarks"))
