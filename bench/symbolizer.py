"""Symbolizer speed against llvm-symbolizer, on the same addresses in one run.

    .venv/bin/python -m bench.symbolizer [--count N] [--elf PATH]

Default: N random addresses in libc's .text, with Debian's libc6-dbg
debug file found by build ID. Prints, for each tool, the time from a fresh
process/state to all answers, and per-address times once loaded;
for bpfprof also with a warm on-disk cache (a restarted agent).
"""

from __future__ import annotations

import argparse
import gc
import random
import subprocess
import tempfile
import time

from elftools.elf.elffile import ELFFile

from symbolizer import Symbolizer

LIBC = "/lib/x86_64-linux-gnu/libc.so.6"


def text_addresses(path: str, count: int, seed: int = 1) -> list[int]:
    with open(path, "rb") as f:
        text = ELFFile(f).get_section_by_name(".text")
        lo, hi = text["sh_addr"], text["sh_addr"] + text["sh_size"]
    rng = random.Random(seed)
    return [rng.randrange(lo, hi) for _ in range(count)]


def llvm(path: str, addresses: list[int]) -> tuple[float, float]:
    """(seconds for all from a fresh process, µs per address in a second pass)."""
    stdin = "\n".join(map(hex, addresses)) + "\n"
    began = time.perf_counter()
    subprocess.run(["llvm-symbolizer", f"--obj={path}"], input=stdin, text=True,
                   capture_output=True, check=True)  # fmt: skip
    once = time.perf_counter() - began
    began = time.perf_counter()
    subprocess.run(["llvm-symbolizer", f"--obj={path}"], input=stdin * 2, text=True,
                   capture_output=True, check=True)  # fmt: skip
    twice = time.perf_counter() - began
    return once, (twice - once) / len(addresses) * 1e6


def ours(path: str, addresses: list[int], cache_dir: str | None) -> tuple[float, float, int]:
    # a restarted agent starts without the previous symbolizer's objects:
    # collect them, or the cyclic GC walks them all through this pass
    gc.collect()
    began = time.perf_counter()
    sym = Symbolizer(cache_dir=cache_dir)
    resolved = sum(bool(sym.resolve_elf(path, a).lines) for a in addresses)
    cold = time.perf_counter() - began
    sym.save_cache()
    began = time.perf_counter()
    for a in addresses:
        sym.resolve_elf(path, a)
    warm = (time.perf_counter() - began) / len(addresses) * 1e6
    return cold, warm, resolved


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=10_000)
    parser.add_argument("--elf", default=LIBC)
    args = parser.parse_args(argv)
    addresses = text_addresses(args.elf, args.count)
    l_all, l_per = llvm(args.elf, addresses)
    with tempfile.TemporaryDirectory() as cache:
        cold, warm, resolved = ours(args.elf, addresses, cache)
        disk, _, _ = ours(args.elf, addresses, cache)
    print(f"{args.count} random .text addresses in {args.elf}")
    print(f"llvm-symbolizer  fresh process: {l_all:6.2f} s   loaded: {l_per:6.1f} µs/address")
    print(f"bpfprof          cold:          {cold:6.2f} s   warm:   {warm:6.1f} µs/address"
          f"   ({resolved} resolved)")  # fmt: skip
    print(f"bpfprof          disk cache:    {disk:6.2f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
