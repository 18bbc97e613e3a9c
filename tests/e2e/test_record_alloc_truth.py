"""`bpfprof record -t alloc` against allocations a test program knows it
made: what leaked at exit (inuse_*), what a command's children allocate
from their first instruction, and allocators loaded with dlopen. Each
estimate is checked within its own sampling error (tests/allocstats.py),
and heaptrack, where installed, confirms what the programs claim."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from agent.exporters.pprof import decode
from agent.model import Profile
from tests.allocstats import expected_error
from tests.conftest import compile_c

pytestmark = [pytest.mark.bpf, pytest.mark.e2e]

RATE = 65536
NO_FP = ("-O2", "-g", "-fomit-frame-pointer")

LEAK_C = r"""
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
static void *volatile sink;
__attribute__((noinline)) static void leak_a(int n, size_t size)
{
    for (int i = 0; i < n; i++) { sink = malloc(size); memset(sink, 1, 16); }
}
__attribute__((noinline)) static void leak_b(int n, size_t size)
{
    for (int i = 0; i < n; i++) { sink = malloc(size); memset(sink, 2, 16); }
}
__attribute__((noinline)) static void churn(int n, size_t size)
{
    for (int i = 0; i < n; i++) { void *p = malloc(size); sink = p; free(p); }
}
int main(int argc, char **argv)
{
    int n = atoi(argv[1]);
    size_t size = strtoul(argv[2], 0, 0);
    churn(4 * n, size);
    leak_a(3 * n, size);
    leak_b(n, size);
    printf("leaked %zu %zu\n", 3 * n * size, n * size);
    return 0;
}
"""


def build(tmp_path: Path, name: str, source: str, *flags: str) -> Path:
    src = tmp_path / f"{name}.c"
    src.write_text(source)
    return compile_c(src, tmp_path / name, *NO_FP, *flags)


def record(bpfprof_cmd: list[str], out: Path, *args: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [*bpfprof_cmd, "record", "-t", "alloc", "--alloc-rate", str(RATE), "-o", str(out), *args],
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0, proc.stderr
    return proc


def by_function(profile: Profile, index: int, names: set[str]) -> dict[str, int]:
    """The value `index` of the samples whose stack holds one of `names`
    (the innermost one counts)."""
    out = dict.fromkeys(names, 0)
    for s in profile.samples:
        for loc in s.locations:
            hit = next((f.function for f in loc.frames if f.function in names), None)
            if hit:
                out[hit] += s.values[index]
                break
    return out


def heaptrack_leaked(tmp_path: Path, cmd: list[str]) -> float | None:
    """heaptrack's `total memory leaked` for a run of `cmd`, in bytes."""
    if shutil.which("heaptrack") is None:
        return None
    subprocess.run(["heaptrack", "-o", str(tmp_path / "ht"), *cmd], capture_output=True, check=True)
    text = subprocess.run(
        ["heaptrack_print", str(tmp_path / "ht.zst")], capture_output=True, text=True, check=True
    ).stdout
    line = next(ln for ln in text.splitlines() if ln.startswith("total memory leaked:"))
    value = line.split(":")[1].strip()
    scale = {"K": 1e3, "M": 1e6, "G": 1e9}.get(value[-1], 1)
    return float(value.rstrip("KMGB")) * scale


def test_what_leaked_at_exit_is_the_profiles_inuse(bpfprof_cmd: list[str], tmp_path: Path) -> None:
    """A command that leaks 3:1 from two functions and exits: inuse_space
    holds the leaks (it was 0: the heap went with the process), split and
    total within sampling error; the freed churn is in alloc_* only."""
    exe = build(tmp_path, "leak", LEAK_C)
    n, size = 3000, 4096
    out = tmp_path / "leak.pb.gz"
    proc = record(bpfprof_cmd, out, "--", str(exe), str(n), str(size))
    assert "leaked" in proc.stdout
    truth = {"leak_a": 3 * n * size, "leak_b": n * size}
    leaked = heaptrack_leaked(tmp_path, [str(exe), str(n), str(size)])
    if leaked is not None:  # heaptrack: the leaks plus stdio's buffer
        assert sum(truth.values()) <= leaked <= sum(truth.values()) * 1.01, leaked
    profile = decode(out.read_bytes())
    assert [t.type for t in profile.sample_types][3] == "inuse_space"
    inuse = by_function(profile, 3, {"leak_a", "leak_b", "churn"})
    assert inuse["churn"] == 0, inuse
    for name, bytes_ in truth.items():
        sigma = expected_error([(size, bytes_ // size)], RATE)
        assert abs(inuse[name] - bytes_) <= 4 * sigma, (name, inuse, truth, sigma)
    whole = sum(s.values[3] for s in profile.samples)
    sigma = expected_error([(size, 4 * n)], RATE)
    assert abs(whole - sum(truth.values())) <= 4 * sigma + 64 * 1024, (whole, truth)
    assert 2.4 < inuse["leak_a"] / inuse["leak_b"] < 3.75, inuse


TREE_C = r"""
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/wait.h>
static void *volatile sink;
#define WORK(name) \
    __attribute__((noinline)) static void name(int n, size_t size) \
    { for (int i = 0; i < n; i++) { void *p = malloc(size); sink = p; free(p); } }
WORK(in_root)
WORK(in_child)
WORK(after_exec)
int main(int argc, char **argv)
{
    int n = atoi(argv[2]);
    size_t size = strtoul(argv[3], 0, 0);
    if (strcmp(argv[1], "exec") == 0) { /* from its first instruction */
        after_exec(n, size);
        return 0;
    }
    in_root(n, size);
    pid_t pid = fork();
    if (pid == 0) { /* the child allocates at once, then is gone */
        in_child(n, size);
        _exit(0);
    }
    waitpid(pid, 0, 0);
    /* the new image runs on another libc file (another inode): argv[4] */
    setenv("LD_LIBRARY_PATH", argv[4], 1);
    char *args[] = {argv[0], "exec", argv[2], argv[3], 0};
    execv(argv[0], args);
    return 1;
}
"""


def test_a_commands_children_are_seen_from_their_first_allocation(
    bpfprof_cmd: list[str], tmp_path: Path
) -> None:
    """A forked child that allocates at once and exits, and an exec into a
    program on another libc file (a copy: another inode, as a chroot's),
    allocating from its first instruction: each function's alloc_space
    within 4 sigma of what it allocated. Before, the fork's child lost what
    it allocated before its per-process probes (~all of it here) and the
    exec'd program's libc was looked up on the host (none of it seen)."""
    exe = build(tmp_path, "tree", TREE_C, "-fno-ipa-icf")  # three functions, not one
    libdir = tmp_path / "lib"
    libdir.mkdir()
    shutil.copy("/lib/x86_64-linux-gnu/libc.so.6", libdir / "libc.so.6")
    n, size = 2000, 64 * 1024
    out = tmp_path / "tree.pb.gz"
    record(bpfprof_cmd, out, "--", str(exe), "root", str(n), str(size), str(libdir))
    profile = decode(out.read_bytes())
    got = by_function(profile, 1, {"in_root", "in_child", "after_exec"})
    sigma = expected_error([(size, n)], RATE)
    for name, bytes_ in got.items():
        assert abs(bytes_ - n * size) <= 4 * sigma, (name, got, n * size, sigma)
    pids = {s.num_labels["pid"] for s in profile.samples if "in_child" in str(s.locations)}
    assert len(pids) == 1


DLOPEN_LIB_C = r"""
#include <stddef.h>
/* an allocator of its own, named as tcmalloc's API: a bump arena */
static char arena[64 << 20];
static size_t used;
__attribute__((noinline)) void *tc_malloc(size_t size)
{
    if (used + size > sizeof(arena))
        used = 0;
    void *p = arena + used;
    used += (size + 15) & ~(size_t)15;
    __asm__ volatile("" ::: "memory");
    return p;
}
__attribute__((noinline)) void tc_free(void *p) { __asm__ volatile("" :: "r"(p) : "memory"); }
"""

DLOPEN_C = r"""
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
static void *volatile sink;
typedef void *(*alloc_fn)(size_t);
typedef void (*free_fn)(void *);
__attribute__((noinline)) static void use_dlopened(alloc_fn a, free_fn f, int n, size_t size)
{
    for (int i = 0; i < n; i++) { void *p = a(size); sink = p; f(p); }
}
int main(int argc, char **argv)
{
    void *lib = dlopen(argv[1], RTLD_NOW);
    if (!lib) { fprintf(stderr, "%s\n", dlerror()); return 1; }
    alloc_fn a = (alloc_fn)dlsym(lib, "tc_malloc");
    free_fn f = (free_fn)dlsym(lib, "tc_free");
    use_dlopened(a, f, atoi(argv[2]), strtoul(argv[3], 0, 0));
    puts("done");
    return 0;
}
"""


def test_an_allocator_loaded_with_dlopen_is_followed(
    bpfprof_cmd: list[str], tmp_path: Path
) -> None:
    """A library dlopen'd at run time that exports an allocator's names is
    probed before its first call (the program stops at ld.so's hook until
    it is): its allocations, from right after dlopen, within 4 sigma."""
    lib = build(tmp_path, "libtc.so", DLOPEN_LIB_C, "-shared", "-fPIC")
    exe = build(tmp_path, "dlopener", DLOPEN_C, "-ldl")
    n, size = 2000, 64 * 1024
    out = tmp_path / "dlopen.pb.gz"
    proc = record(bpfprof_cmd, out, "--", str(exe), str(lib), str(n), str(size))
    assert "done" in proc.stdout
    profile = decode(out.read_bytes())
    got = by_function(profile, 1, {"use_dlopened"})["use_dlopened"]
    sigma = expected_error([(size, n)], RATE)
    assert abs(got - n * size) <= 4 * sigma, (got, n * size, sigma)
