"""The Python suite's workload: a known 3:1 CPU split that times itself.

    /usr/bin/python3 bench/python_workload.py ROUNDS

Prints `ready PID`, waits for a line on stdin (so a profiler can attach
first), then runs ROUNDS rounds of hot_a (3 units) and hot_b (1 unit) of
the same loop, and prints `done ITERATIONS WALL_S CPU_S WINDOW BEST_S`: the
loop iterations run and the wall and CPU seconds around the rounds only,
not the interpreter's start or the wait; and the wall seconds of the
fastest WINDOW consecutive rounds (about 0.2 s), in which a shared host was
most likely quiet. Standard library only: it runs under the host's
/usr/bin/python3, not the venv. hot_a and hot_b are those of
tests/programs/pysplit.py, copied so that this file stands alone.
"""

import os
import sys
import time

UNIT = 20000  # loop iterations of one unit (~1 ms on 3.11)
WINDOW = 60  # rounds of the best window: ~0.2 s, ~20 samples at 99 Hz


def hot_a(n: int) -> int:
    total = 0
    for i in range(n):
        total += i * i
    return total


def hot_b(n: int) -> int:
    total = 0
    for i in range(n):
        total += i * i
    return total


def run(rounds: int) -> list[int]:
    """The monotonic time (ns) after each round, the start first."""
    ends = [time.monotonic_ns()]
    for _ in range(rounds):
        hot_a(3 * UNIT)
        hot_b(UNIT)
        ends.append(time.monotonic_ns())
    return ends


def fastest(ends: list[int], window: int) -> float:
    """Seconds of the fastest `window` consecutive rounds."""
    return min(ends[i + window] - ends[i] for i in range(len(ends) - window)) / 1e9


def main() -> None:
    rounds = int(sys.argv[1])
    print("ready", os.getpid(), flush=True)
    sys.stdin.readline()
    cpu = time.process_time()
    ends = run(rounds)
    cpu = time.process_time() - cpu
    wall = (ends[-1] - ends[0]) / 1e9
    window = min(WINDOW, rounds)
    best = fastest(ends, window)
    print("done", rounds * 4 * UNIT, f"{wall:.6f}", f"{cpu:.6f}", window * 4 * UNIT, best)


if __name__ == "__main__":
    main()
