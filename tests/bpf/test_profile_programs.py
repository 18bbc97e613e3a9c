"""The off-CPU, lock and allocation programs, loaded for real and checked
against programs that know their own ground truth (tests/programs).

The programs are built without frame pointers, as Debian's libc is, and
walked with CFI (the default): stacks must reach the known functions above
libc's frames (nanosleep, pthread_mutex_lock, pthread_cond_wait) and on to
main or the thread entry. The frame-pointer build of each BPF program is
exercised too (`--unwind fp`), with a control showing what it loses."""

from __future__ import annotations

import ctypes
import queue
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from agent.config import BpfLimits, SourceOptions
from agent.kernel.bcc_loader import compile_program
from agent.kernel.layout import AllocEvent, AllocFreeEvent, LockKey, SampleKey, WaitValue
from agent.model import RawSample
from agent.sources.alloc import AllocSource, alloc_cflags
from agent.sources.lock import LockSource, classify, is_contention, plain_name
from agent.sources.offcpu import OffCpuSource
from agent.sources.waits import WaitSource
from symbolizer import Symbolizer
from tests.allocstats import expected_error
from tests.conftest import PROGRAMS, compile_c

pytestmark = pytest.mark.bpf

FP = ("-O1", "-g", "-fno-omit-frame-pointer")
NO_FP = ("-O2", "-g", "-fomit-frame-pointer")  # the default unwind tables stay
SLEEPS = {"nanosleep", "clock_nanosleep"}
MUTEX_WAITS = {"pthread_mutex_lock", "__pthread_mutex_lock", "__lll_lock_wait"}


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    out = tmp_path_factory.mktemp("profile-programs")

    def build(name: str, flags: tuple[str, ...] = NO_FP) -> Path:
        exe = out / f"{name}{'-fp' if flags == FP else ''}"
        if not exe.exists():
            compile_c(PROGRAMS / f"{name}.c", exe, *flags, "-pthread")
        return exe

    return build


def assert_same_layout(bcc_type: type, mirror: type[ctypes.Structure]) -> None:
    assert ctypes.sizeof(bcc_type) == ctypes.sizeof(mirror)
    for name, *_ in mirror._fields_:
        assert getattr(bcc_type, name).offset == getattr(mirror, name).offset, name


@pytest.mark.parametrize("unwind", [True, False])
def test_python_mirrors_match_what_bcc_compiled(unwind: bool) -> None:
    """Both builds of each program load: the walker's and the frame-pointer one."""
    offcpu = OffCpuSource(SourceOptions())
    lock = LockSource(SourceOptions())
    for source, key in ((offcpu, SampleKey), (lock, LockKey)):
        program = compile_program(source.PROGRAM, source.cflags(unwind))
        try:
            assert_same_layout(program["counts0"].Key, key)
            assert_same_layout(program["counts0"].Leaf, WaitValue)
        finally:
            program.cleanup()
    # the alloc records travel through a ring buffer; compare the sizes the
    # program reserves with a table keyed by the same structs
    text = (
        '#include "common.h"\n'
        "BPF_ARRAY(a, struct alloc_event, 1);\nBPF_ARRAY(f, struct alloc_free_event, 1);\n"
    )
    program = _compile_text(text)
    try:
        assert_same_layout(program["a"].Leaf, AllocEvent)
        assert_same_layout(program["f"].Leaf, AllocFreeEvent)
    finally:
        program.cleanup()
    for inuse in (True, False):
        options = SourceOptions(alloc_inuse=inuse)
        compile_program("alloc.bpf.c", alloc_cflags(options, unwind)).cleanup()


def _compile_text(text: str) -> object:
    import bcc

    import bpf

    return bcc.BPF(text=text, cflags=[f"-I{bpf.include_dir()}"])


class Run:
    """A ground-truth program started before the source, released after."""

    def __init__(self, argv: list[str]) -> None:
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        self.lines: queue.Queue[str] = queue.Queue()
        first = self.proc.stdout.readline()
        assert first.startswith("ready"), first
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)

    def send(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()

    def release(self, source: WaitSource | AllocSource, sym: Symbolizer) -> None:
        """Start `source` on the program, snapshot it for `sym`, let it run."""
        source.add_targets([self.proc.pid])
        source.start()
        sym.observe(self.proc.pid)
        self.send()

    def line(self, source: WaitSource | AllocSource, seen: list[int]) -> str:
        """Poll the source until the program prints its next line."""
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            source.poll(50, seen.append)
            try:
                return self.lines.get_nowait()
            except queue.Empty:
                continue
        raise AssertionError("the program did not finish")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


def functions(sym: Symbolizer, sample: RawSample) -> list[str]:
    """The user stack's function names, leaf first, libc's without their
    alias prefix and symbol version (`pthread_mutex_lock@@GLIBC_2.2.5`)."""
    names = []
    for i, addr in enumerate(sample.key.stack.user):
        f = sym.resolve_user(sample.key.pid, addr - 1 if i else addr).function
        names.append(plain_name(f) if f else "?")
    return names


def above(names: list[str], caller: str, callees: set[str]) -> bool:
    """Whether `caller` is in the stack (leaf first) above one of `callees`."""
    inner = [i for i, n in enumerate(names) if n in callees]
    return bool(inner) and caller in names[min(inner) + 1 :]


def test_offcpu_time_of_a_known_sleep(built: Callable[..., Path]) -> None:
    run = Run([str(built("sleeper")), "20", "25"])
    source = OffCpuSource(SourceOptions(filter_pids=True))
    sym = Symbolizer()
    seen: list[int] = []
    try:
        source.add_targets([run.proc.pid])
        source.start()
        sym.observe(run.proc.pid)
        run.send()
        slept = int(run.line(source, seen).split()[1])
        samples = source.drain() + source.drain()
        counters = source.counters()
    finally:
        source.close()
        run.close()
    # The thread's off-CPU time is the sleep the program measured around
    # each nanosleep, less the few microseconds on either side of the switch
    # (plus any preemption, which on a busy host can only add).
    total = sum(s.values[0] for s in samples)
    assert slept * 0.97 <= total <= slept * 1.05, (total, slept)
    # Nearly all of it in whole stacks: libc's sleep frames, then nap() and
    # sleepy() above them, on to main.
    whole = [
        s
        for s in samples
        if (n := functions(sym, s))
        and above(n, "nap", SLEEPS)
        and above(n, "sleepy", {"nap"})
        and above(n, "main", {"sleepy"})
    ]
    assert sum(s.values[0] for s in whole) >= 0.9 * total, [functions(sym, s) for s in samples]
    assert source.unwinding and seen == [run.proc.pid] and counters["map_full"] == 0
    assert counters["unwind_stacks"] > 0 and counters["unwind_unsupported"] == 0


def sleeper_offcpu(
    exe: Path, args: list[str], *options: SourceOptions
) -> tuple[list[list[RawSample]], int, list[dict[str, int]], list[int]]:
    """sleeper ARGS's off-CPU samples and counters under each of `options`,
    each a source of its own, all tracing the same run; the sleep the
    program measured, and each nap's own length if ARGS asked for the list."""
    run = Run([str(exe), *args])
    sources = [OffCpuSource(o) for o in options]
    try:
        for source in sources:
            source.add_targets([run.proc.pid])
            source.start()
        run.send()
        slept = int(run.line(sources[0], []).split()[1])
        listed = args[2:] == ["list"]
        naps = [int(n) for n in run.line(sources[0], []).split()[1:]] if listed else []
        samples = [source.drain() + source.drain() for source in sources]
        counters = [source.counters() for source in sources]
        for source, o in zip(sources, options, strict=True):
            assert source.unwinding == (o.unwind == "dwarf")
    finally:
        for source in sources:
            source.close()
        run.close()
    return samples, slept, counters, naps


def sampling_sd(naps: list[int], max_weight: int, sample_ns: int = 1_000_000) -> float:
    """The standard deviation of the weighted total of blocks `naps` long,
    each sampled as bpf/waits.h wait_weight does from the block before it
    (weight w = SAMPLE_NS // previous, 1 to max_weight, kept 1 in w times):
    each block adds (w - 1) * ns^2 to the variance."""
    variance = 0.0
    for previous, ns in zip([sample_ns, *naps], naps, strict=False):
        w = 1 if previous >= sample_ns else min(max_weight, max(1, sample_ns // previous))
        variance += (w - 1) * ns * ns
    return float(variance**0.5)


def test_sampled_short_blocks_are_unbiased(built: Callable[..., Path]) -> None:
    """16,000 naps of 50 us (about 110 us off the CPU each on an idle host),
    traced at once by a source that samples short blocks and one that takes
    every block. The sampling one takes stacks for about 1 in 9 naps (the
    probability is the thread's last block over 1 ms), each counted 9 times:
    far fewer stacks than blocks, and a total within the sampling error of
    the exact one. That error is computed from the lengths the naps really
    had: about 2.6 % of the total on an idle host, more on a busy one, where
    a nap stretched to milliseconds is counted up to 16 times from one
    sample. The bound is 4 of those: a weight one too small (9 -> 8) is
    an 11 % bias, and fails it."""
    exact = SourceOptions(filter_pids=True, wait_sampling=1)
    sampled = SourceOptions(filter_pids=True, wait_sampling=16)
    exe = built("sleeper")
    naps_asked = 16_000
    args = [str(naps_asked), "0.05", "list"]
    samples, slept, counters, naps = sleeper_offcpu(exe, args, exact, sampled)
    assert len(naps) == naps_asked and sum(naps) == slept
    truth, total = (sum(s.values[0] for s in got) for got in samples)
    # the program's clock reads and syscall edges are in its naps, not in
    # the blocks: 85-90 % of a 125 us nap is off the CPU
    assert 0.75 * slept <= truth <= 1.05 * slept, (truth, slept)
    # (a nap whose timer fires before the thread leaves the CPU is no block)
    assert counters[0]["samples"] >= 0.97 * naps_asked and counters[0]["map_full"] == 0, counters[0]
    sd = sampling_sd(naps, 16)
    assert abs(total - truth) <= 4 * sd, (total, truth, sd)
    assert 0 < counters[1]["samples"] <= naps_asked // 3, counters[1]


def test_a_preemption_does_not_make_the_next_block_look_short(built: Callable[..., Path]) -> None:
    """sleeper yields its CPU to a thread that yields it straight back
    before each of its 25 ms naps: a few microseconds on the run queue,
    then the nap. Sampling judges a block from the thread's last one, but a
    preemption is no block the thread chose: judged from the yield, each
    nap was sampled 1 in 16 times and counted 16 times, so the naps' total
    came out anywhere from none of them to several times their length.
    Judged from the nap before, every nap is sampled, and the total is the
    sleep."""
    options = SourceOptions(filter_pids=True, wait_sampling=16)
    got, slept, counters, _ = sleeper_offcpu(built("sleeper"), ["20", "25", "yield"], options)
    assert counters[0]["map_full"] == 0, counters[0]
    # the sleeping thread's own off-CPU time (the yielding thread's, on
    # the run queue while the other runs, is not the naps')
    main = [s for s in got[0] if s.key.tid == s.key.pid]
    total = sum(s.values[0] for s in main)
    assert slept * 0.97 <= total <= slept * 1.05, (total, slept, [s.values for s in main])


def test_offcpu_stacks_past_the_stack_map_are_kept_by_generations(
    built: Callable[..., Path],
) -> None:
    """stackchurn naps 4 ms at 100 depths, in nap_a and then nap_b, 8 times
    over (200 distinct user stacks, about 24 new ones per drain) while its
    second thread sleeps through it all, under maps of 128 buckets (the
    least --stack-storage-size allows), drained every 100 ms as `record`
    does. One map for the program's life lost 310 of 804 stacks (every one
    past the 128th, and more to crowding) and named 123 of the 200; with a
    generation per 128 // 4 ids, next to none are lost, and the long sleep,
    whose stack was taken in the first generation, keeps it through all the
    later ones."""
    exe = built("stackchurn", ("-O0", "-g"))
    options = SourceOptions(filter_pids=True, wait_sampling=1, limits=BpfLimits(stack_entries=128))
    run = Run([str(exe), "100", "8", "4000"])
    source = OffCpuSource(options)
    sym = Symbolizer()
    samples: list[RawSample] = []
    try:
        run.release(source, sym)
        deadline = time.monotonic() + 60
        while run.lines.empty():
            assert time.monotonic() < deadline, "stackchurn did not finish"
            source.poll(100, lambda pid: None)
            samples += source.drain()
        words = run.lines.get().split()  # long_ns N naps N
        samples += source.drain() + source.drain()
        counters = source.counters()
    finally:
        source.close()
        run.close()
    long_ns, naps = int(words[1]), int(words[3])
    assert naps == 800
    assert counters["stack_generations"] >= 16 and counters["stacks_expired"] == 0, counters
    assert counters["user_collision"] + counters["kernel_collision"] <= 0.01 * naps, counters
    named = [(s, functions(sym, s)) for s in samples]
    long = sum(s.values[0] for s, n in named if "long_nap" in n)
    assert 0.97 * long_ns <= long <= 1.03 * long_ns, (long, long_ns)
    shapes = {
        (n[n.index("descend") - 1], n.count("descend"))
        for _, n in named
        if "descend" in n and n[n.index("descend") - 1] in ("nap_a", "nap_b")
    }
    assert len(shapes) >= 0.98 * 200, sorted(shapes)


def test_offcpu_threshold_drops_short_blocks(built: Callable[..., Path]) -> None:
    """Naps of 60 ms pass a 50 ms threshold, the program's short blocks do
    not. With the frame-pointer build of the program (--unwind fp)."""
    options = SourceOptions(filter_pids=True, min_block_us=50_000, unwind="fp")
    got, slept, _, _ = sleeper_offcpu(built("sleeper", FP), ["4", "60"], options)
    samples = got[0]
    assert not [s for s in samples if s.values[0] < 50_000_000]
    assert 0.97 * slept <= sum(s.values[0] for s in samples) <= 1.05 * slept


def lock_profile(
    exe: Path,
    unwind: str = "dwarf",
    sampling: int = 1,
    counters: dict[str, int] | None = None,
    args: tuple[str, ...] = ("1500", "4", "20000"),
) -> tuple[list[tuple[RawSample, list[str]]], dict[str, int]]:
    """lockstorm's waits with their function names, and what it measured.
    Every wait takes stacks unless `sampling` says otherwise."""
    run = Run([str(exe), *args])
    options = SourceOptions(filter_pids=True, unwind=unwind, wait_sampling=sampling)
    source = LockSource(options)
    sym = Symbolizer()
    try:
        run.release(source, sym)
        words = run.line(source, []).split()  # waited_ns N locks N idle_ns N
        samples = source.drain() + source.drain()
        if counters is not None:
            counters.update(source.counters())
    finally:
        source.close()
        run.close()
    truth = {"waited": int(words[1]), "idle": int(words[5])}
    return [(s, functions(sym, s)) for s in samples], truth


def test_lock_delay_of_four_threads_on_one_mutex(built: Callable[..., Path]) -> None:
    named, truth = lock_profile(built("lockstorm"))
    # Whole stacks through libc: contend() and take_lock() above
    # pthread_mutex_lock/__lll_lock_wait in nearly all of the mutex delay.
    mutex = [(s, n) for s, n in named if s.key.tag == "mutex"]
    delay = sum(s.values[1] for s, _ in mutex)
    through = [
        (s, n)
        for s, n in mutex
        if above(n, "take_lock", MUTEX_WAITS) and above(n, "contend", {"take_lock"})
    ]
    in_contend = sum(s.values[1] for s, _ in through)
    assert in_contend >= 0.9 * delay, [(n, s.values) for s, n in mutex]
    assert {classify(s.key.tag, n) for s, n in through} == {"mutex"}
    assert all("start_thread" in n for _, n in through)  # on to the thread entry
    # The program's figure also holds the time from futex return to its
    # clock read and lost races that end in another wait, so it is the larger.
    waited = truth["waited"]
    assert 0.85 * waited <= in_contend <= 1.02 * waited, (in_contend, waited)


def test_sampled_lock_waits_are_unbiased(built: Callable[..., Path]) -> None:
    """Two threads trading a mutex held 3 us at a time: tens of thousands
    of waits of a few microseconds, each taking stacks with probability
    1/16 and counted 16 times. So far fewer stacks than waits, and a total
    delay that still matches the program's: with n waits kept with p = 1/16
    the estimate's relative standard deviation is about sqrt(15/n), under
    3% for n >= 20,000; the bound is 4 of those beside the exact test's."""
    counters: dict[str, int] = {}
    args = ("100000", "2", "3000")
    named, truth = lock_profile(built("lockstorm"), sampling=16, counters=counters, args=args)
    mutex = [s for s, n in named if s.key.tag == "mutex" and "contend" in n]
    estimated = sum(s.values[0] for s in mutex)  # weighted contentions
    delay = sum(s.values[1] for s in mutex)
    assert counters["samples"] * 8 <= estimated, (counters["samples"], estimated)
    waited = truth["waited"]
    assert 0.75 * waited <= delay <= 1.15 * waited, (delay, waited)


def test_condition_waits_are_told_by_pthread_cond_wait_in_the_stack(
    built: Callable[..., Path],
) -> None:
    """idle_wait() sleeps on a condition variable for the whole run: the
    futex operation (FUTEX_WAIT_BITSET) cannot tell that from an rwlock or
    pthread_join; pthread_cond_wait in the walked stack does, and keeps it
    out of the contention profile."""
    named, truth = lock_profile(built("lockstorm"))
    waits = [(s, n) for s, n in named if s.key.tag == "wait" and "idle_wait" in n]
    assert waits, [n for _, n in named]
    for s, n in waits:
        assert above(n, "idle_wait", {"pthread_cond_wait"}), n
        assert classify(s.key.tag, n) == "condvar" and not is_contention("condvar")
    waited = sum(s.values[1] for s, _ in waits)
    assert 0.9 * truth["idle"] <= waited <= 1.02 * truth["idle"], (waited, truth)
    # pthread_join waits the same way, and is not claimed as contention
    joins = [n for s, n in named if s.key.tag == "wait" and "idle_wait" not in n]
    assert all(not is_contention(classify("wait", n)) for n in joins)


def test_lock_stacks_with_frame_pointers_only_lose_the_callers(
    built: Callable[..., Path],
) -> None:
    """The control: --unwind fp on the same program (no frame pointers)
    stops in libc, so contend() is above the mutex wait in little of it."""
    named, _ = lock_profile(built("lockstorm"), unwind="fp")
    mutex = [(s, n) for s, n in named if s.key.tag == "mutex"]
    delay = sum(s.values[1] for s, _ in mutex)
    in_contend = sum(s.values[1] for s, n in mutex if above(n, "contend", MUTEX_WAITS))
    assert delay > 0 and in_contend < 0.5 * delay


def test_allocations_split_three_to_one_and_the_hoard_stays_live(
    built: Callable[..., Path],
) -> None:
    units, block, rate = 16384, 4096, 64 * 1024
    run = Run([str(built("allocsplit")), str(units), str(block)])
    source = AllocSource(SourceOptions(filter_pids=True, alloc_rate=rate))
    sym = Symbolizer()
    try:
        run.release(source, sym)
        done = run.line(source, []).split()
        allocs = source.drain()
        live = source.live_heap()
        run.send()  # let it free the hoard and exit
        run.proc.wait()
        source.poll(100, lambda pid: None)
        after_exit = source.live_heap()
        counters = source.counters()
    finally:
        source.close()
        run.close()
    churn_true, hoard_true = int(done[1]), int(done[2])

    def by(name: str, samples: list[RawSample], index: int) -> int:
        return sum(s.values[index] for s in samples if functions(sym, s)[:1] == [name])

    churn, hoard = by("churn", allocs, 1), by("hoard", allocs, 1)
    sd_churn = expected_error([(block, 3 * units)], rate)
    sd_hoard = expected_error([(block, units)], rate)
    assert counters["sample_lost"] == 0 and counters["live_full"] == 0
    assert abs(churn - churn_true) < 4 * sd_churn, (churn, churn_true, sd_churn)
    assert abs(hoard - hoard_true) < 4 * sd_hoard, (hoard, hoard_true, sd_hoard)
    assert 2.4 < churn / hoard < 3.75
    inuse = sum(s.values[3] for s in live)
    assert by("hoard", live, 3) >= 0.95 * inuse  # churn's blocks were all freed
    assert abs(inuse - hoard_true) < 4 * sd_hoard
    assert after_exit == []  # the exit dropped the live entries
    # built without frame pointers: each call site is followed by its callers
    assert whole_share(sym, allocs) >= 0.9 and whole_share(sym, live, 3) >= 0.9


def whole_share(sym: Symbolizer, samples: list[RawSample], index: int = 1) -> float:
    """The share of a value whose stack is a call site of malloc in
    allocsplit with its callers above it: churn/hoard, run, main."""
    total = sum(s.values[index] for s in samples)
    whole = sum(
        s.values[index]
        for s in samples
        if (n := functions(sym, s))[:1] in (["churn"], ["hoard"]) and n[1:3] == ["run", "main"]
    )
    return whole / total if total else 0.0


def allocations(
    exe: Path, unwind: str, inuse: bool
) -> tuple[list[RawSample], Symbolizer, list[str]]:
    """allocsplit's sampled allocations, and what it printed when done."""
    units, block, rate = 8192, 4096, 64 * 1024
    run = Run([str(exe), str(units), str(block)])
    options = SourceOptions(filter_pids=True, alloc_rate=rate, alloc_inuse=inuse, unwind=unwind)
    source = AllocSource(options)
    sym = Symbolizer()
    try:
        source.add_targets([run.proc.pid])
        source.start()
        assert source.unwinding is (unwind == "dwarf")
        sym.observe(run.proc.pid)
        run.send()
        done = run.line(source, []).split()
        allocs = source.drain()
        if not inuse:
            assert source.live_heap() == []
    finally:
        source.close()
        run.close()
    return allocs, sym, done


def test_alloc_needs_an_allocator_to_probe(tmp_path: Path) -> None:
    from agent.errors import TargetError

    src = tmp_path / "noalloc.c"
    src.write_text("int main(void) { for (;;) ; }\n")
    exe = compile_c(src, tmp_path / "noalloc", "-static", "-nostdlib", "-e", "main")
    proc = subprocess.Popen([str(exe)])
    source = AllocSource(SourceOptions(filter_pids=True, limits=BpfLimits()))
    try:
        source.add_targets([proc.pid])
        with pytest.raises(TargetError, match="no allocator"):
            source.start()
    finally:
        source.close()
        proc.kill()
        proc.wait()


@pytest.mark.parametrize("unwind", ["dwarf", "fp"])
def test_allocation_only_mode_attributes_from_the_entry(
    built: Callable[..., Path], unwind: str
) -> None:
    """--no-inuse sends samples from the entry probe. The walker finds the
    allocator's caller from CFI (the allocator's own frame is left out, as
    in a return probe's stack); with frame pointers the caller's frame is
    recovered from the return address on top of the stack."""
    exe = built("allocsplit", NO_FP if unwind == "dwarf" else FP)
    allocs, sym, done = allocations(exe, unwind, inuse=False)
    units, block, rate = 8192, 4096, 64 * 1024
    leaves = {}
    for s in allocs:
        leaf = functions(sym, s)[:1]
        name = leaf[0] if leaf else "?"
        leaves[name] = leaves.get(name, 0) + s.values[1]
    sd = expected_error([(block, 3 * units)], rate)
    assert abs(leaves.get("churn", 0) - int(done[1])) < 4 * sd, leaves
    assert abs(leaves.get("hoard", 0) - int(done[2])) < 4 * expected_error([(block, units)], rate)
    if unwind == "dwarf":
        assert whole_share(sym, allocs) >= 0.9


def test_allocation_stacks_with_frame_pointers_only_lose_the_callers(
    built: Callable[..., Path],
) -> None:
    """The control: --unwind fp on the program built without frame pointers
    still names the call site (the return address), but not its callers."""
    allocs, sym, _ = allocations(built("allocsplit"), "fp", inuse=True)
    assert allocs and whole_share(sym, allocs) < 0.5


def test_all_processes_probes_the_system_libc(built: Callable[..., Path]) -> None:
    run = Run([str(built("allocsplit")), "4096", "4096"])
    source = AllocSource(SourceOptions(all_processes=True, alloc_rate=64 * 1024))
    try:
        source.start()
        assert {pid for pid, _ in source.probes} == {-1}
        run.send()
        run.line(source, [])
        pids = {s.key.pid for s in source.drain()}
    finally:
        source.close()
        run.close()
    assert run.proc.pid in pids


ROLE_FUNCTIONS = ("by_malloc", "by_calloc", "by_realloc", "by_memalign", "by_posix_memalign")


@pytest.mark.parametrize("with_sessions", [True, False], ids=["sessions", "uretprobes"])
def test_every_allocator_entry_point_is_counted_once_and_live(
    built: Callable[..., Path], monkeypatch: pytest.MonkeyPatch, with_sessions: bool
) -> None:
    """malloc, calloc, realloc, memalign and posix_memalign, each from its
    own function: its bytes within sampling error, its blocks live, both with
    the one session program (the role from its link's cookie) and with
    entry probes and uretprobes (kernels before 6.13)."""
    from agent.kernel import sessions

    if with_sessions and not sessions.supported():
        pytest.skip("this kernel has no uprobe sessions")
    if not with_sessions:
        monkeypatch.setenv("BPFPROF_UPROBE_SESSIONS", "0")
    units, block, rate = 4096, 4096, 64 * 1024
    run = Run([str(built("allocroles")), str(units), str(block)])
    source = AllocSource(SourceOptions(filter_pids=True, alloc_rate=rate))
    assert source.sessions is with_sessions
    sym = Symbolizer()
    try:
        run.release(source, sym)
        assert run.line(source, []).strip() == "done"
        allocs = source.drain()
        live = source.live_heap()
        counters = source.counters()
    finally:
        source.close()
        run.close()
    assert counters["sample_lost"] == 0 and counters["live_full"] == 0

    def by(samples: list[RawSample], index: int) -> dict[str, int]:
        out = dict.fromkeys(ROLE_FUNCTIONS, 0)
        for s in samples:
            leaf = functions(sym, s)[:1]
            if leaf and leaf[0] in out:
                out[leaf[0]] += s.values[index]
        return out

    allocated, inuse = by(allocs, 1), by(live, 3)
    sd = expected_error([(block, units)], rate)
    for name in ROLE_FUNCTIONS:
        truth = units * (block + (16 if name == "by_realloc" else 0))
        assert abs(allocated[name] - truth) < 4 * sd, (name, allocated, truth, sd)
        assert abs(inuse[name] - units * block) < 4 * sd, (name, inuse, units * block, sd)
