"""Ground truth for the BPF Python walker: known chains of Python frames.

    python3.X pychain.py chain SECONDS   # <module> -> outer -> middle -> inner, and
                                         # a thread running alpha -> beta
    python3.X pychain.py deep SECONDS N  # <module> -> deep(N) -> ... -> deep(1)
    python3.X pychain.py native SECONDS LIB  # the chain, and LIB's C threads (spinthread.c)

Prints one JSON line first: each function's code object address (id()),
its length in code units, and the thread idents (pthread_self()) of the
threads that run a chain; then burns CPU in the innermost frames until
SECONDS have passed, calling no Python function meanwhile.
"""

import json
import sys
import threading
import time

END = time.monotonic() + float(sys.argv[2])
ready = threading.Event()


def inner():
    ready.wait()
    n = 0
    while time.monotonic() < END:  # a builtin: no Python frame above this one
        n += 1
    return n


def middle():
    return inner()


def outer():
    return middle()


def beta():
    ready.wait()
    n = 0
    while time.monotonic() < END:
        n += 1
    return n


def alpha():
    return beta()


def deep(n):
    if n <= 1:
        ready.wait()
        while time.monotonic() < END:
            n += 1
        return n
    return deep(n - 1)


def describe(functions, idents):
    codes = {f.__name__: f.__code__ for f in functions}
    codes["<module>"] = sys._getframe(1).f_code
    thread = threading.Thread
    for name in ("run", "_bootstrap_inner", "_bootstrap"):
        codes[name] = getattr(thread, name).__code__
    out = {
        "codes": {name: id(code) for name, code in codes.items()},
        "units": {name: len(code.co_code) // 2 for name, code in codes.items()},
        "threads": idents,
    }
    print(json.dumps(out), flush=True)


if sys.argv[1] == "chain":
    second = threading.Thread(target=alpha)
    second.start()
    idents = {"main": threading.get_ident(), "second": second.ident}
    describe((inner, middle, outer, alpha, beta), idents)
    ready.set()
    outer()
    second.join()
elif sys.argv[1] == "native":
    import ctypes

    lib = ctypes.CDLL(sys.argv[3])
    lib.start_spinner.restype = ctypes.c_ulong
    left = ctypes.c_double(END - time.monotonic())
    idents = {"main": threading.get_ident()}
    idents["native"] = lib.start_spinner(left, 0)
    idents["native_state"] = lib.start_spinner(left, 1)
    describe((inner, middle, outer), idents)
    ready.set()
    outer()
else:
    describe((deep,), {"main": threading.get_ident()})
    ready.set()
    deep(int(sys.argv[3]))
