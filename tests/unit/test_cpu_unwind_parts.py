"""The CPU source's unwinding glue, without BPF: fallback and stack reading."""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest

from agent.config import BpfLimits, SourceOptions
from agent.errors import SetupError
from agent.kernel import bcc_loader
from agent.kernel.layout import SampleKey
from agent.sources.cpu import CpuSource, bpf_cflags, read_samples
from agent.unwind.layout import E2BIG, STACK_TRUNCATED


@dataclass
class FakeTable:
    """A BCC table: Key() wraps an id, [] reads, del frees."""

    items: dict[int, Any] = field(default_factory=dict)

    @staticmethod
    def Key(i: int) -> int:
        return i

    def __getitem__(self, key: int) -> Any:
        return self.items[key]

    def __delitem__(self, key: int) -> None:
        del self.items[key]


def key(user: int, kernel: int) -> SampleKey:
    return SampleKey(pid=7, tid=7, user_stack_id=user, kernel_stack_id=kernel, comm=b"prog")


def test_unwound_user_stacks_and_truncation() -> None:
    kernel = FakeTable({3: SimpleNamespace(ip=[0xFFFF0001, 0])})
    user = FakeTable(
        {
            1: SimpleNamespace(len=2, flags=0, ips=[0x401000, 0x402000, 0]),
            2: SimpleNamespace(len=3, flags=STACK_TRUNCATED, ips=[1, 2, 3]),
        }
    )
    samples = read_samples([(key(1, 3), 5), (key(2, -14), 1), (key(9, -14), 1)], kernel, user)
    stacks = [s.key.stack for s in samples]
    assert (stacks[0].user, stacks[0].kernel, stacks[0].user_error) == (
        (0x401000, 0x402000),
        (0xFFFF0001,),
        0,
    )
    assert stacks[1].user == (1, 2, 3) and stacks[1].user_error == -E2BIG
    assert stacks[2].user == ()  # already gone: an empty stack, not an error
    assert not user.items and not kernel.items  # every id read is freed


def test_refused_walker_falls_back_to_frame_pointers(monkeypatch: pytest.MonkeyPatch) -> None:
    tried: list[list[str]] = []

    def compile_program(name: str, flags: list[str], functions: object = None) -> object:
        assert functions == {"on_cpu_sample": "perf_event"}  # a perf-event program
        tried.append(flags)
        if "-DUNWIND_DWARF=1" in flags:
            raise SetupError("cannot compile cpu.bpf.c: program too large")
        return object()

    monkeypatch.setattr(bcc_loader, "compile_program", compile_program)
    source = CpuSource(SourceOptions(python=False))
    assert source._compile() is not None
    assert not source.unwinding and len(tried) == 2


def test_unwind_flags() -> None:
    flags = bpf_cflags(
        BpfLimits(unwind_rows=4096), filter_pids=False, follow_forks=False, unwind=True
    )
    assert "-DUNWIND_DWARF=1" in flags and "-DUNWIND_ROWS=4096" in flags
    assert not any(
        "UNWIND" in f for f in bpf_cflags(BpfLimits(), filter_pids=False, follow_forks=False)
    )


def test_a_loader_childs_samples_are_dropped_but_their_stacks_freed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(bcc_loader, "_loaders", {8: None})
    kernel = FakeTable({3: SimpleNamespace(ip=[0xFFFF0001, 0]), 4: SimpleNamespace(ip=[1, 0])})
    loader = SampleKey(pid=8, tid=8, user_stack_id=-14, kernel_stack_id=4, comm=b"python3")
    samples = read_samples([(key(-14, 3), 2), (loader, 9)], kernel)
    assert [s.key.pid for s in samples] == [7]
    assert kernel.items == {}  # the next use of this half starts empty
