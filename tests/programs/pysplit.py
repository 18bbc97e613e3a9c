"""Ground truth for Python frames in every profile type: a 3:1 split.

    python3.X pysplit.py cpu SECONDS     # hot_a burns 3 units of CPU for each of hot_b's
    python3.X pysplit.py alloc ROUNDS [DELAY]  # grow_a allocates 3 bytes for each of
                                         # grow_b's (after DELAY seconds; -1: after
                                         # a line on stdin)
    python3.X pysplit.py offcpu SECONDS  # nap_a sleeps 3 ms for each of nap_b's 1 ms
    python3.X pysplit.py lock SECONDS    # three threads in contend_a, one in contend_b
                                         # contend for the GIL

Each mode runs under `main -> run_<mode>`; the split lies in the two leaf
functions named `*_a` and `*_b`. Every callee is a builtin, so the two leaf
functions are the innermost Python frames of every sample. Standard library
only: the Debian roots this runs in carry the interpreter's minimal package.
"""

import sys
import threading
import time

UNIT = 20000  # loop iterations of one CPU unit (~1 ms)


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


def run_cpu(seconds):
    # each round's unit is drawn from [0.5, 1.5) x UNIT: rounds of one length
    # last one time, and a sampling period near a multiple of it keeps
    # hitting one phase of the round (hotsplit.c measured this)
    end = time.monotonic() + seconds
    state = 12345
    while time.monotonic() < end:
        state = (state * 1103515245 + 12345) % 2147483648
        n = UNIT // 2 + state % UNIT
        hot_a(3 * n)
        hot_b(n)


def grow_a(size):
    return bytearray(size)


def grow_b(size):
    return bytearray(size)


def run_alloc(rounds, delay=0.0):
    # distinct sizes keep each function's blocks apart; freed at once, so
    # alloc_space holds the split and the heap stays small
    if delay < 0:  # start when told: a profiler attaching by pid is ready
        sys.stdin.readline()
    else:
        time.sleep(delay)
    for _ in range(int(rounds)):
        grow_a(3 * 4096)
        grow_b(4096)


def nap_a():
    time.sleep(0.003)


def nap_b():
    time.sleep(0.001)


def run_offcpu(seconds):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        nap_a()
        nap_b()


def contend_a(end):
    while time.monotonic() < end:  # a builtin call: each one may hand the GIL over
        pass


def contend_b(end):
    while time.monotonic() < end:
        pass


def run_lock(seconds):
    # three threads in contend_a, one in contend_b, all wanting the GIL: its
    # mutex is contended from each thread about as often as the thread asks
    end = time.monotonic() + seconds
    threads = [threading.Thread(target=f, args=(end,)) for f in (contend_a,) * 3 + (contend_b,)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def main():
    mode, args = sys.argv[1], [float(a) for a in sys.argv[2:]]
    {"cpu": run_cpu, "alloc": run_alloc, "offcpu": run_offcpu, "lock": run_lock}[mode](*args)


if __name__ == "__main__":
    main()
