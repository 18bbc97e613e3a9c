"""The Python suite's workload: a known 3:1 CPU split that times itself.

    /usr/bin/python3 bench/python_workload.py ROUNDS

Prints `ready PID`, waits for a line on stdin (so a profiler can attach
first), then runs ROUNDS rounds of hot_a (3 units) and hot_b (1 unit) of
the same loop, and prints `done ITERATIONS WALL_S CPU_S`: the loop
iterations run and the wall and CPU seconds around the rounds only, not
the interpreter's start or the wait. Standard library only: it runs under
the host's /usr/bin/python3, not the venv.
"""

import os
import sys
import time

UNIT = 20000  # loop iterations of one unit (~1 ms on 3.11)


def hot_a(n):
    total = 0
    for i in range(n):
        total += i * i
    return total


def hot_b(n):
    total = 0
    for i in range(n):
        total += i * i
    return total


def run(rounds):
    for _ in range(rounds):
        hot_a(3 * UNIT)
        hot_b(UNIT)


def main():
    rounds = int(sys.argv[1])
    print("ready", os.getpid(), flush=True)
    sys.stdin.readline()
    wall, cpu = time.monotonic(), time.process_time()
    run(rounds)
    wall, cpu = time.monotonic() - wall, time.process_time() - cpu
    print("done", rounds * 4 * UNIT, f"{wall:.6f}", f"{cpu:.6f}", flush=True)


if __name__ == "__main__":
    main()
