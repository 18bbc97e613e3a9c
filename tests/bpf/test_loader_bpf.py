"""A program loaded by the loader child, used for real without BCC in this
process: its maps, a uprobe and uretprobe, a perf event, the tracepoint and
raw tracepoint BCC attached in the child (still attached after it exited),
the ring buffer, and a clean-up that leaves no fd behind."""

from __future__ import annotations

import ctypes
import os
import subprocess
import time
from pathlib import Path

import pytest

import bpf
from agent.kernel import bpfsys
from agent.kernel.bcc_loader import compile_program
from agent.kernel.loaded import LoadedProgram
from tests.conftest import compile_c

pytestmark = pytest.mark.bpf

TEXT = r"""
#include <uapi/linux/ptrace.h>
struct key_t { u32 pid; char comm[16]; };
BPF_HASH(hits, struct key_t, u64, 64);
BPF_ARRAY(forks, u32, 4);
BPF_PERCPU_ARRAY(counts, u64, 2);
BPF_RINGBUF_OUTPUT(events, 1);

int on_target(struct pt_regs *ctx)
{
    struct key_t k = {};
    k.pid = bpf_get_current_pid_tgid() >> 32;
    bpf_get_current_comm(&k.comm, sizeof(k.comm));
    hits.increment(k);
    u32 *e = events.ringbuf_reserve(sizeof(u32));
    if (e) {
        *e = k.pid;
        events.ringbuf_submit(e, 0);
    }
    return 0;
}

int on_sample(void *ctx)
{
    int zero = 0;
    u64 *v = counts.lookup(&zero);
    if (v)
        (*v)++;
    return 0;
}

TRACEPOINT_PROBE(sched, sched_process_exec)
{
    int one = 1;
    u64 *v = counts.lookup(&one);
    if (v)
        (*v)++;
    return 0;
}

RAW_TRACEPOINT_PROBE(sched_process_fork)
{
    int zero = 0;
    u32 *v = forks.lookup(&zero);
    if (v)
        __sync_fetch_and_add(v, 1);
    return 0;
}
"""

TARGET = r"""
#include <stdio.h>
__attribute__((noinline)) int target(int x) { return x * 3; }
int main(void)
{
    int s = 0;
    for (int i = 0; i < 5; i++)
        s += target(i);
    printf("%d\n", s);
    return 0;
}
"""


def open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


@pytest.fixture
def program(monkeypatch: pytest.MonkeyPatch) -> LoadedProgram:
    monkeypatch.setattr(bpf, "source", lambda name: TEXT)
    return compile_program("facade.bpf.c", [], {"on_sample": "perf_event"})


def test_maps_probes_events_and_clean_up(program: LoadedProgram, tmp_path: Path) -> None:
    before = open_fds()
    src = tmp_path / "target.c"
    src.write_text(TARGET)
    exe = compile_c(src, tmp_path / "target", "-O1")
    got: list[int] = []
    try:
        hits = program["hits"]
        assert ctypes.sizeof(hits.Key) == 20 and hits.Key.comm.offset == 4
        program["events"].open_ring_buffer(
            lambda _ctx, data, _size: got.append(ctypes.c_uint32.from_address(data).value)
        )
        program.attach_uprobe(name=str(exe).encode(), sym=b"target", fn_name="on_target")
        program.attach_uretprobe(name=str(exe).encode(), sym=b"target", fn_name="on_target")
        program.attach_perf_event(
            bpfsys.PERF_TYPE_SOFTWARE, bpfsys.PERF_COUNT_SW_CPU_CLOCK, "on_sample", sample_freq=999
        )
        run = subprocess.run([str(exe)], capture_output=True, text=True, check=True)
        end = time.monotonic() + 0.3
        while time.monotonic() < end:  # busy here, so the perf event fires
            pass
        program.ring_buffer_poll(100)
        program.ring_buffer_consume()
        counted = {int(k.pid): (bytes(k.comm), int(v.value)) for k, v in hits.items()}
        # five calls, each seen entering and returning, each sent through the ring buffer
        assert run.stdout == "30\n" and len(got) == 10 and len(set(got)) == 1
        assert counted == {got[0]: (b"target", 10)}, counted
        counts = program["counts"]
        assert counts.sum(0).value > 0  # perf-event samples
        assert counts.sum(1).value >= 1  # the exec, through BCC's TRACEPOINT_PROBE
        assert program["forks"][0].value >= 1  # the fork, through its RAW_TRACEPOINT_PROBE
        drained = list(hits.items_lookup_and_delete_batch())
        assert [int(v) for _, v in drained] == [10] and len(hits) == 0
    finally:
        program.cleanup()
    assert open_fds() <= before  # every map, program and link closed


def test_uprobe_errors_name_the_problem(program: LoadedProgram) -> None:
    try:
        with pytest.raises(LookupError, match="no function nonesuch"):
            program.attach_uprobe(name=b"/bin/true", sym=b"nonesuch", fn_name="on_target")
        with pytest.raises(KeyError):
            program.attach_uprobe(name=b"/bin/true", sym=b"main", fn_name="nonesuch")
    finally:
        program.cleanup()
