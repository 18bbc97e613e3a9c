"""Entry point of `make bench`: `.venv/bin/python bench/run.py [SUITE [ARGS...]]`.

With no arguments every suite runs with its defaults; `bench/run.py cpu
--help` shows one suite's options.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

SUITES = {  # name -> module with main(argv) -> int
    "cpu": "bench.cpu",
    "unwind": "bench.unwind",
    "profiles": "bench.profiles",
    "agent": "bench.agent",
    "symbolizer": "bench.symbolizer",
    "flamegraph": "bench.flamegraph",
    "python": "bench.python",
    "realworld": "bench.realworld",
}


def main(argv: list[str]) -> int:
    # Run as a script, Python puts bench/ on the path; the modules import
    # each other as the `bench` package, which lives in the repository root.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    if argv and argv[0] in ("-h", "--help"):
        print(__doc__.strip() + "\n\nsuites: " + ", ".join(SUITES))
        return 0
    if argv and argv[0] not in SUITES:
        print(
            f"bench: error: unknown suite {argv[0]!r} (known: {', '.join(SUITES)})", file=sys.stderr
        )
        return 2
    chosen = [(argv[0], argv[1:])] if argv else [(name, []) for name in SUITES]
    status = 0
    for name, args in chosen:
        status = importlib.import_module(SUITES[name]).main(args) or status
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
