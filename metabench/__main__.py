"""`python -m metabench ...`: the `metabench` command (`benchmarks.__main__.console`)."""
import sys

from benchmarks.__main__ import console

sys.exit(console("python -m metabench"))
