"""The off-CPU, lock and allocation programs, loaded for real and checked
against programs that know their own ground truth (tests/programs)."""

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
from agent.layout import AllocEvent, AllocFreeEvent, LockKey, SampleKey, WaitValue
from agent.model import RawSample
from agent.sampling import expected_error
from agent.sources.alloc import AllocSource, alloc_cflags
from agent.sources.bcc_loader import compile_program
from agent.sources.lock import LockSource, classify
from agent.sources.offcpu import OffCpuSource
from agent.sources.waits import WaitSource
from symbolizer import Symbolizer
from tests.conftest import PROGRAMS, compile_c

pytestmark = pytest.mark.bpf

FP = ("-O1", "-g", "-fno-omit-frame-pointer")


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    out = tmp_path_factory.mktemp("profile-programs")

    def build(name: str) -> Path:
        exe = out / name
        if not exe.exists():
            compile_c(PROGRAMS / f"{name}.c", exe, *FP, "-pthread")
        return exe

    return build


def assert_same_layout(bcc_type: type, mirror: type[ctypes.Structure]) -> None:
    assert ctypes.sizeof(bcc_type) == ctypes.sizeof(mirror)
    for name, *_ in mirror._fields_:
        assert getattr(bcc_type, name).offset == getattr(mirror, name).offset, name


def test_python_mirrors_match_what_bcc_compiled() -> None:
    offcpu = OffCpuSource(SourceOptions())
    lock = LockSource(SourceOptions())
    for source, key in ((offcpu, SampleKey), (lock, LockKey)):
        program = compile_program(source.PROGRAM, source.cflags())
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
    compile_program("alloc.bpf.c", alloc_cflags(SourceOptions())).cleanup()


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
    names = []
    for i, addr in enumerate(sample.key.stack.user):
        f = sym.resolve_user(sample.key.pid, addr - 1 if i else addr).function
        names.append(f or "?")
    return names


def test_offcpu_time_of_a_known_sleep(built: Callable[[str], Path]) -> None:
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
    in_sleepy = sum(s.values[0] for s in samples if "sleepy" in functions(sym, s))
    assert slept * 0.97 <= total <= slept * 1.05, (total, slept)
    # Nearly all of it through sleepy(): a frame-pointer walk can lose the
    # odd stack in libc, never more than one nap's worth here.
    assert in_sleepy >= 0.9 * total, (in_sleepy, total)
    assert seen == [run.proc.pid] and counters["map_full"] == 0


def test_offcpu_threshold_drops_short_blocks(built: Callable[[str], Path]) -> None:
    run = Run([str(built("sleeper")), "10", "2"])
    source = OffCpuSource(SourceOptions(filter_pids=True, min_block_us=50_000))
    try:
        source.add_targets([run.proc.pid])
        source.start()
        run.send()
        run.line(source, [])
        samples = source.drain() + source.drain()
    finally:
        source.close()
        run.close()
    assert not [s for s in samples if s.values[0] < 50_000_000]


def test_lock_delay_of_four_threads_on_one_mutex(built: Callable[[str], Path]) -> None:
    run = Run([str(built("lockstorm")), "1500", "4", "20000"])
    source = LockSource(SourceOptions(filter_pids=True))
    sym = Symbolizer()
    seen: list[int] = []
    try:
        source.add_targets([run.proc.pid])
        source.start()
        sym.observe(run.proc.pid)
        run.send()
        waited = int(run.line(source, seen).split()[1])
        samples = source.drain() + source.drain()
    finally:
        source.close()
        run.close()
    # libc has no frame pointers: the stack goes from the futex call in libc
    # straight to contend() (take_lock's frame pointer leads there).
    through = [s for s in samples if "contend" in functions(sym, s)]
    delay = sum(s.values[1] for s in through if s.key.tag == "mutex")
    assert {classify(s.key.tag, functions(sym, s)) for s in through} <= {"mutex", "kernel"}
    assert sum(s.values[0] for s in through) > 0
    # The program's figure also holds the time from futex return to its
    # clock read and lost races that end in another wait, so it is the larger.
    assert 0.85 * waited <= delay <= 1.02 * waited, (delay, waited)


def test_allocations_split_three_to_one_and_the_hoard_stays_live(
    built: Callable[[str], Path],
) -> None:
    units, block, rate = 16384, 4096, 64 * 1024
    run = Run([str(built("allocsplit")), str(units), str(block)])
    source = AllocSource(SourceOptions(filter_pids=True, alloc_rate=rate))
    sym = Symbolizer()
    try:
        source.add_targets([run.proc.pid])
        source.start()
        sym.observe(run.proc.pid)
        run.send()
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


def test_allocation_only_mode_attributes_from_the_entry(built: Callable[[str], Path]) -> None:
    """--no-inuse sends samples from the entry probe; the caller's frame is
    recovered from the return address on top of the stack."""
    units, block, rate = 8192, 4096, 64 * 1024
    run = Run([str(built("allocsplit")), str(units), str(block)])
    source = AllocSource(SourceOptions(filter_pids=True, alloc_rate=rate, alloc_inuse=False))
    sym = Symbolizer()
    try:
        source.add_targets([run.proc.pid])
        source.start()
        sym.observe(run.proc.pid)
        run.send()
        done = run.line(source, []).split()
        allocs = source.drain()
        assert source.live_heap() == []
    finally:
        source.close()
        run.close()
    leaves = {}
    for s in allocs:
        leaf = functions(sym, s)[:1]
        name = leaf[0] if leaf else "?"
        leaves[name] = leaves.get(name, 0) + s.values[1]
    sd = expected_error([(block, 3 * units)], rate)
    assert abs(leaves.get("churn", 0) - int(done[1])) < 4 * sd, leaves
    assert abs(leaves.get("hoard", 0) - int(done[2])) < 4 * expected_error([(block, units)], rate)


def test_all_processes_probes_the_system_libc(built: Callable[[str], Path]) -> None:
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
