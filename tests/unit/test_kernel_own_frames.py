"""The profiler's own frames at the leaf end of kernel stacks are dropped
(agent.pipeline.resolve.own_frames), whatever kallsyms calls the program."""

from __future__ import annotations

import pytest

from agent.pipeline.resolve import KERNEL_START, StackResolver
from tests.unit.test_pipeline import FakeSymbolizer, key

NAMES = {
    0x10: "bpf_prog_6deef7357e7b4530_sched_switch",
    0x20: "use_tpause_delay",  # what a stale kallsyms calls an unloaded program
    0x30: "bpf_trace_run4",
    0x40: "__traceiter_sched_switch",
    0x50: "__schedule",
    0x60: "schedule",
    0x70: "perf_trace_run_bpf_submit",
    0x80: "htab_map_lookup_elem",
}


def kernel_names(*frames: int) -> list[str]:
    sym = FakeSymbolizer(
        {}, {KERNEL_START + a - (1 if i else 0): n for a, n in NAMES.items() for i in (0, 1)}
    )
    stack = tuple(KERNEL_START + a for a in frames)
    return [loc.display_name() for loc in StackResolver(sym).locations(key(kernel=stack))]


@pytest.mark.parametrize(
    ("frames", "expected"),
    [
        pytest.param((0x10, 0x30, 0x50, 0x60), ["__schedule", "schedule"], id="one-probe"),
        pytest.param((0x10, 0x30, 0x40, 0x50, 0x60), ["__schedule", "schedule"], id="traceiter"),
        pytest.param((0x20, 0x30, 0x50, 0x60), ["__schedule", "schedule"], id="misnamed-program"),
        pytest.param((0x90, 0x30, 0x50), ["__schedule"], id="unnamed-program"),
        pytest.param((0x80, 0x10, 0x30, 0x50), ["__schedule"], id="helper-in-program"),
        pytest.param((0x10, 0x50, 0x60), ["__schedule", "schedule"], id="program-only"),
        pytest.param((0x10, 0x70, 0x50), ["__schedule"], id="perf-tracepoint"),
        pytest.param((0x50, 0x60), ["__schedule", "schedule"], id="none"),
    ],
)
def test_own_leaf_frames_are_dropped(frames: tuple[int, ...], expected: list[str]) -> None:
    assert kernel_names(*frames) == expected


def test_only_the_leaf_end_is_looked_at() -> None:
    # a trampoline deeper than the program's few frames is someone else's
    assert kernel_names(0x50, 0x60, 0x50, 0x30, 0x50) == [
        "__schedule",
        "schedule",
        "__schedule",
        "bpf_trace_run4",
        "__schedule",
    ]


def test_a_stack_of_nothing_but_own_frames_is_kept() -> None:
    assert kernel_names(0x10, 0x30) == ["bpf_prog_6deef7357e7b4530_sched_switch", "bpf_trace_run4"]
