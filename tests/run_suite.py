"""`make test`'s test run: the parallel modules and the rest side by side, each on what it needs.

The tests marked `parallel` (conftest.py: CPU-bound, deterministic, no wall-clock bound)
run in processes of their own (pytest-xdist, a module a process, the longest first) at
the lowest CPU priority (nice 19). The rest run one test at a time, at normal priority,
at the same time: their servers, wall-clock bounds and store timeouts get a core whenever
they want one, and the parallel modules take what they leave. Run one after the other,
the second half of the run left a core idle (the one-at-a-time tests use about one core):
side by side the suite takes about the CPU it needs divided by the cores.

The one-at-a-time run writes to the terminal as it goes; the parallel run's output, kept
in a file meanwhile (`.pytest-parallel.log`), is printed when both have ended. The exit
status is the first non-zero one of the two. Arguments are passed to both runs.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PARALLEL_LOG = ROOT / ".pytest-parallel.log"
PYTEST = [sys.executable, "-m", "pytest"]
PARALLEL = ["-m", "parallel", "-n", "auto", "--maxprocesses", "4", "--dist", "loadfile"]
PARALLEL += ["--no-loadscope-reorder"]  # conftest.LONGEST_FIRST's order
ONE_AT_A_TIME = ["-m", "not parallel"]


def _lowest_priority() -> None:
    os.nice(19)  # inherited by the xdist workers


def main(args: list[str]) -> int:
    started = time.monotonic()
    with PARALLEL_LOG.open("wb") as log:
        parallel = subprocess.Popen(
            [*PYTEST, *PARALLEL, *args],
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            preexec_fn=_lowest_priority,  # this process runs no thread
            start_new_session=True,  # a group of its own: stopped as one, workers included
        )
        try:
            serial = subprocess.call([*PYTEST, *ONE_AT_A_TIME, *args], cwd=ROOT)
            serial_seconds = time.monotonic() - started
            parallel_status = parallel.wait()
        except BaseException:  # Ctrl-C: the parallel run stops too
            os.killpg(parallel.pid, signal.SIGTERM)
            parallel.wait()
            raise
    total = time.monotonic() - started
    print(f"\n==== the parallel modules (nice 19, beside the run above; {PARALLEL_LOG.name}) ====")
    sys.stdout.write(PARALLEL_LOG.read_text(errors="replace"))
    print(
        f"\n==== one at a time: exit {serial} after {serial_seconds:.0f} s; "
        f"parallel: exit {parallel_status}; both: {total:.0f} s ===="
    )
    return serial or parallel_status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
