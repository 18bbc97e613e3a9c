"""Ground truth for Python frames in each profile type's source.

    python3.X pyprofiled.py MODE SECONDS [PROGRAM ARGS...]

    cpu     burn() spins on the CPU
    offcpu  nap() sleeps 5 ms at a time
    lock    three threads run contend(), taking turns on one threading.Lock
            that each holds for 2 ms
    alloc   churn() allocates and drops 200 kB bytearrays
    exec    burn() spins until SIGUSR1 (or SECONDS), then the process execs
            PROGRAM ARGS

Prints one JSON line first: each function's code object address (id()),
then works under `<module> -> main -> LEAF` until SECONDS have passed.
Standard library only: the Debian roots this runs in carry the
interpreter's minimal package.
"""

import json
import os
import signal
import sys
import threading
import time

END = time.monotonic() + float(sys.argv[2])
stop = []  # SIGUSR1 ends burn() early


def burn():
    n = 0
    while time.monotonic() < END and not stop:  # builtins only: burn stays the innermost frame
        n += 1
    return n


def nap():
    while time.monotonic() < END:
        time.sleep(0.005)


def contend(lock):
    while time.monotonic() < END:
        with lock:
            time.sleep(0.002)


def churn():
    kept = []
    while time.monotonic() < END:
        kept.append(bytearray(200_000))
        if len(kept) > 8:
            kept.clear()


def main(mode):
    if mode in ("cpu", "exec"):
        burn()
    elif mode == "offcpu":
        nap()
    elif mode == "alloc":
        churn()
    else:
        lock = threading.Lock()
        threads = [threading.Thread(target=contend, args=(lock,)) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    if mode == "exec":
        os.execv(sys.argv[3], sys.argv[3:])


signal.signal(signal.SIGUSR1, lambda *_: stop.append(1))
codes = {f.__name__: f.__code__ for f in (burn, nap, contend, churn, main)}
codes["<module>"] = sys._getframe().f_code
print(json.dumps({"codes": {name: id(code) for name, code in codes.items()}}), flush=True)
main(sys.argv[1])
