"""The CFI walker, loaded for real, stops at a return address no code can be
at and marks the stack truncated, instead of emitting it as a frame.

The program built here spins in `spin_bogus`, an assembly function without
CFI whose frame pointer points at a frame it forged on its own stack:
[rbp] = 0 (the end of the chain), [rbp+8] = the bogus return address given
on the command line. The walker has no row for it, so it takes the frame
pointer, as it does for any code without CFI, and reads the bogus address
as the caller's PC: what a corrupted stack or a foreign frame gives it."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from agent.config import SourceOptions
from agent.pipeline.resolve import StackResolver
from symbolizer import Symbolizer
from tests.conftest import compile_c
from tests.cpurun import sample_until_exit

pytestmark = pytest.mark.bpf

SECONDS = 1.5
HZ = 199
MIN_SAMPLES = 50
TRUNCATED = "[user stack truncated]"

SOURCE = r"""
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* spin_bogus(ret, iterations): no CFI, a forged frame {0, ret} under rbp */
__asm__(
    ".text\n"
    ".globl spin_bogus\n"
    ".type spin_bogus, @function\n"
    "spin_bogus:\n"
    "    push %rbp\n"
    "    push %rdi\n"          /* [rbp+8]: the bogus return address */
    "    push $0\n"            /* [rbp]: no caller frame */
    "    mov %rsp, %rbp\n"
    "1:  dec %rsi\n"
    "    jnz 1b\n"
    "    add $16, %rsp\n"
    "    pop %rbp\n"
    "    ret\n"
    ".size spin_bogus, .-spin_bogus\n");
void spin_bogus(unsigned long ret, long iterations);

int main(int argc, char **argv) {
    unsigned long ret = strtoull(argv[1], NULL, 0);
    double seconds = atof(argv[2]);
    char line[16];
    printf("ready\n");
    fflush(stdout);
    if (!fgets(line, sizeof line, stdin))
        return 1;
    struct timespec t0, t;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    do {
        spin_bogus(ret, 1000000);
        clock_gettime(CLOCK_MONOTONIC, &t);
    } while (t.tv_sec - t0.tv_sec + (t.tv_nsec - t0.tv_nsec) / 1e9 < seconds);
    return 0;
}
"""

BOGUS = {
    "one": 0x1,
    "below the first page": 0xFFF,
    "all ones but the sign": 0x7FFFFFFFFFFFFFFF,
    "non-canonical": 0x0000800000001000,
    "kernel": 0xFFFFFFFF81000000,
}


@pytest.fixture(scope="module")
def program(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("garbage")
    src = out / "garbage.c"
    src.write_text(SOURCE)
    return compile_c(src, out / "garbage", "-O1")


def record(program: Path, bogus: int, tmp_path: Path) -> tuple[list[list[str]], dict[str, int]]:
    """Stacks (user frames leaf first, one per sample) and the source's counters."""
    proc = subprocess.Popen(
        [str(program), hex(bogus), str(SECONDS)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stdin is not None
        assert proc.stdout.readline().startswith("ready")
        symbolizer = Symbolizer()
        symbolizer.observe(proc.pid)
        options = SourceOptions(frequency=HZ, filter_pids=True, unwind="dwarf")
        got = sample_until_exit(proc, options, tmp_path, symbolizer, SECONDS + 10)
        samples, counters = got.samples, got.counters
    finally:
        proc.kill()
        proc.wait()
    resolver = StackResolver(symbolizer)
    stacks = []
    for s in samples:
        names = [loc.display_name() for loc in resolver.locations(s.key) if loc.kind != "kernel"]
        stacks += [names] * s.values[0]
    return stacks, counters


@pytest.mark.skipif(os.uname().machine != "x86_64", reason="the program is x86_64 assembly")
@pytest.mark.parametrize("bogus", BOGUS.values(), ids=BOGUS.keys())
def test_an_impossible_return_address_ends_the_stack_as_truncated(
    program: Path, bogus: int, tmp_path: Path
) -> None:
    stacks, counters = record(program, bogus, tmp_path)
    spinning = [s for s in stacks if s and s[0] == "spin_bogus"]
    assert len(spinning) >= MIN_SAMPLES, stacks[:5]
    # THEN the bogus address is never a frame, and the stack says its root is missing
    assert all(s == ["spin_bogus", TRUNCATED] for s in spinning), [
        s for s in spinning if s != ["spin_bogus", TRUNCATED]
    ][:5]
    assert counters["unwind_truncated"] >= len(spinning)


@pytest.mark.skipif(os.uname().machine != "x86_64", reason="the program is x86_64 assembly")
def test_a_possible_return_address_is_still_a_frame(program: Path, tmp_path: Path) -> None:
    """The control: the same forged frame with an address in user space
    is kept, unsymbolized."""
    stacks, _ = record(program, 0x10000, tmp_path)
    spinning = [s for s in stacks if s and s[0] == "spin_bogus"]
    assert len(spinning) >= MIN_SAMPLES
    assert all(s == ["spin_bogus", "0x10000"] for s in spinning), spinning[:5]
