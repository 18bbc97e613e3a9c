"""Ground truth for Python frames in each profile type's source.

    python3.X pyprofiled.py MODE SECONDS [PROGRAM ARGS...]

    cpu     burn() spins on the CPU
    offcpu  nap() sleeps 5 ms at a time
    lock    three threads run contend(), taking turns on one threading.Lock
            that each holds for 2 ms
    alloc   churn() allocates and drops 200 kB bytearrays
    exec    burn() spins until SIGUSR1 (or SECONDS), then the process execs
            PROGRAM ARGS
    reuse   first() spins for a third of SECONDS and its code object is
            freed; second(), from another file, gets a code object at the
            same address (prints a second JSON line: {"reused": ADDRESS}
            or {"reused": 0} if no address came back) and spins for the rest

Prints one JSON line first: each function's code object address (id()),
then works under `<module> -> main -> LEAF` until SECONDS have passed.
Standard library only: the Debian roots this runs in carry the
interpreter's minimal package.
"""

import gc
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


SPIN = "def {0}(end):\n    while time.monotonic() < end:\n        pass\n"


def made(name):
    """A new function `name` whose code object is its own, from file <name>."""
    scope = {"time": time}
    exec(compile(SPIN.format(name), f"<{name}>", "exec"), scope)
    return scope[name]


def reuse():
    first = made("first")
    address = id(first.__code__)
    first(time.monotonic() + (END - time.monotonic()) / 3)
    del first
    gc.collect()  # the function and its globals hold each other
    held = []  # functions whose code objects took other addresses stay alive
    for _ in range(1000):
        second = made("second")
        if id(second.__code__) == address:
            break
        held.append(second)
    else:
        address = 0
    print(json.dumps({"reused": address}), flush=True)
    second(END)


def main(mode):
    if mode in ("cpu", "exec"):
        burn()
    elif mode == "reuse":
        reuse()
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
