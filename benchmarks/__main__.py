import signal
import sys


def _while_starting(signum, frame):  # until the CLI installs its own handlers (imports take seconds)
    print(f"interrupted by {signal.Signals(signum).name} while starting; nothing was written", file=sys.stderr)
    sys.exit(128 + signum)


for _signal in (signal.SIGINT, signal.SIGTERM):
    signal.signal(_signal, _while_starting)

from benchmarks.cli import main  # noqa: E402

sys.exit(main())
