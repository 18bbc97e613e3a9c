"""Aggregation, stack resolution and profile building, with plain fakes."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from agent.kernel.layout import EEXIST, EFAULT
from agent.model import KERNEL_MAPPING_NAME, RawKey, RawSample, RawStack, ValueType
from agent.pipeline.aggregate import Aggregator
from agent.pipeline.builder import build_profile, cpu_spec
from agent.pipeline.resolve import KERNEL_START, StackResolver


@dataclass(frozen=True)
class FakeEntry:
    start: int
    end: int
    offset: int
    path: str


@dataclass(frozen=True)
class FakeLine:
    function: str
    system_name: str = ""
    file: str = ""
    line: int = 0
    start_line: int = 0


@dataclass(frozen=True)
class FakeResolved:
    mapping: FakeEntry | None
    build_id: str
    function: str | None
    lines: tuple[FakeLine, ...] = ()


class FakeSymbolizer:
    """Resolves addresses from a dict; records what it was asked."""

    def __init__(self, user: dict[int, str], kernel: dict[int, str]) -> None:
        self.user, self.kernel = user, kernel
        self.asked: list[tuple[str, int]] = []
        self.entry = FakeEntry(0x1000, 0x9000, 0x0, "/usr/bin/prog")

    def resolve_user(self, pid: int, address: int) -> FakeResolved:
        self.asked.append(("user", address))
        return FakeResolved(self.entry, "abcd", self.user.get(address))

    def resolve_kernel(self, address: int) -> FakeResolved:
        self.asked.append(("kernel", address))
        return FakeResolved(None, "", self.kernel.get(address))


K1, K2 = KERNEL_START + 0x100, KERNEL_START + 0x200


def key(
    user: tuple[int, ...] = (), kernel: tuple[int, ...] = (), ue: int = 0, ke: int = 0
) -> RawKey:
    return RawKey(10, 11, "worker", RawStack(user, kernel, ue, ke))


def test_aggregator_sums_equal_keys_and_starts_over() -> None:
    agg = Aggregator()
    agg.add([RawSample(key((0x1100,)), (2,)), RawSample(key((0x1200,)), (1,))])
    agg.add([RawSample(key((0x1100,)), (3,))])
    assert len(agg) == 2 and agg.total() == 6 and agg.pids() == {10}
    taken = {s.key.stack.user: s.values for s in agg.take()}
    assert taken == {(0x1100,): (5,), (0x1200,): (1,)}
    assert len(agg) == 0


def test_resolver_orders_kernel_leaf_first_and_looks_up_callers_at_address_minus_one() -> None:
    sym = FakeSymbolizer({0x1100: "leaf", 0x11FF: "caller"}, {K1: "kleaf", K2 - 1: "kcaller"})
    locs = StackResolver(sym).locations(key((0x1100, 0x1200), (K1, K2)))
    assert [loc.display_name() for loc in locs] == ["kleaf", "kcaller", "leaf", "caller"]
    assert [loc.address for loc in locs] == [K1, K2, 0x1100, 0x1200]
    assert sym.asked == [("kernel", K1), ("kernel", K2 - 1), ("user", 0x1100), ("user", 0x11FF)]
    assert locs[0].mapping is not None and locs[0].mapping.file == KERNEL_MAPPING_NAME
    assert locs[2].mapping is not None and locs[2].mapping.build_id == "abcd"
    assert [loc.kind for loc in locs] == ["kernel", "kernel", "native", "native"]


def test_unresolved_address_keeps_address_and_mapping() -> None:
    sym = FakeSymbolizer({}, {})
    resolver = StackResolver(sym)
    (loc,) = resolver.locations(key((0x1234,)))
    assert loc.frames == () and loc.address == 0x1234
    assert loc.mapping is not None and loc.mapping.file == "/usr/bin/prog"
    assert loc.display_name() == "prog+0x234"
    assert resolver.misses == 1


def test_inline_chain_becomes_several_frames_innermost_first() -> None:
    class InlineSymbolizer(FakeSymbolizer):
        def resolve_user(self, pid: int, address: int) -> FakeResolved:
            lines = (
                FakeLine("sq", "", "/src/a.c", 2, 2),
                FakeLine("work(int)", "_Z4worki", "/src/a.c", 9, 5),
            )
            return FakeResolved(self.entry, "abcd", "work(int)", lines)

    (loc,) = StackResolver(InlineSymbolizer({}, {})).locations(key((0x1100,)))
    assert [(f.function, f.file, f.line, f.start_line, f.system_name) for f in loc.frames] == [
        ("sq", "/src/a.c", 2, 2, ""),
        ("work(int)", "/src/a.c", 9, 5, "_Z4worki"),
    ]
    assert loc.display_name() == "work(int)"


def test_resolver_caches_per_address() -> None:
    sym = FakeSymbolizer({0x1100: "f"}, {})
    resolver = StackResolver(sym)
    resolver.locations(key((0x1100,)))
    resolver.locations(key((0x1100,)))
    assert sym.asked == [("user", 0x1100)]


def test_resolver_keeps_named_addresses_across_intervals_and_asks_again_for_misses() -> None:
    # GIVEN a resolver that met a named user address, an unnamed one and an
    # unnamed kernel address, twice in one interval
    sym = FakeSymbolizer({0x1100: "f"}, {})
    resolver = StackResolver(sym)
    stack = key((0x1100, 0x1300), (K1,))
    resolver.locations(stack)
    resolver.locations(stack)
    assert resolver.misses == 2  # distinct addresses, not occurrences
    assert sym.asked == [("kernel", K1), ("user", 0x1100), ("user", 0x12FF)]
    # WHEN the next interval starts and meets them again
    resolver.start_interval()
    assert resolver.misses == 0
    resolver.locations(stack)
    resolver.locations(stack)
    # THEN the named one is not asked again; the misses are, once (a JIT's
    # perf map may name them by now), and count for this interval
    assert sym.asked[3:] == [("kernel", K1), ("user", 0x12FF)]
    assert resolver.misses == 2


def test_resolver_forgets_a_process_it_is_told_of() -> None:
    sym = FakeSymbolizer({0x1100: "f"}, {K1: "k"})
    resolver = StackResolver(sym)
    resolver.locations(key((0x1100,), (K1,)))
    resolver.forget(10)  # the pid exec'd or exited
    resolver.forget(99)  # never seen: nothing to do
    resolver.locations(key((0x1100,), (K1,)))
    # the user address is asked again; the kernel's answers do not depend on the pid
    assert sym.asked == [("kernel", K1), ("user", 0x1100), ("user", 0x1100)]


def test_resolver_cache_is_bounded_and_answers_stay_right() -> None:
    sym = FakeSymbolizer({a: f"f{a:x}" for a in (0x1100, 0x11FF, 0x1300)}, {})
    resolver = StackResolver(sym, max_cached=2)
    other = RawKey(20, 20, "other", RawStack((0x1300,), ()))
    for _ in range(2):
        for k in (key((0x1100, 0x1200)), other):
            names = [loc.display_name() for loc in resolver.locations(k)]
            assert names == [f"f{a - (i > 0):x}" for i, a in enumerate(k.stack.user)]
    # every entry above the bound started the cache over: asked again
    assert len(sym.asked) > 3


@pytest.mark.parametrize(
    ("ue", "ke", "expected"),
    [
        (-EFAULT, 0, []),  # kernel thread: no user stack, nothing lost
        (-EEXIST, -EFAULT, ["[user stack lost: stack-map collision]"]),
        (0, -EEXIST, ["[kernel stack lost: stack-map collision]"]),
        (-12, -EFAULT, ["[user stack lost: error 12]"]),
        (
            -2,
            -2,
            [
                "[kernel stack lost: wait outlived its stack generation]",
                "[user stack lost: wait outlived its stack generation]",
            ],
        ),
    ],
)
def test_lost_stacks_become_marked_pseudo_frames(ue: int, ke: int, expected: list[str]) -> None:
    locs = StackResolver(FakeSymbolizer({}, {})).locations(key(ue=ue, ke=ke))
    assert [loc.display_name() for loc in locs] == expected


def test_build_cpu_profile_values_labels_and_period() -> None:
    sym = FakeSymbolizer({0x1100: "hot"}, {})
    samples = [RawSample(key((0x1100,)), (4,))]
    profile = build_profile(
        samples,
        cpu_spec(100),
        StackResolver(sym),
        lambda k: "prog",
        time_nanos=1,
        duration_nanos=2,
    )
    assert profile.sample_types == (ValueType("samples", "count"), ValueType("cpu", "nanoseconds"))
    assert profile.period_type == ValueType("cpu", "nanoseconds")
    assert profile.period == 10_000_000
    (s,) = profile.samples
    assert s.values == (4, 40_000_000)
    assert dict(s.labels) == {"comm": "worker", "process": "prog"}
    assert dict(s.num_labels) == {"pid": 10, "tid": 11}


def test_process_label_falls_back_to_comm() -> None:
    sym = FakeSymbolizer({}, {})
    profile = build_profile(
        [RawSample(key((0x1100,)), (1,))],
        cpu_spec(99),
        StackResolver(sym),
        lambda k: "",
        time_nanos=0,
        duration_nanos=0,
    )
    assert profile.samples[0].labels["process"] == "worker"


def test_builder_drops_a_sample_that_breaks_the_model_and_keeps_the_rest(
    caplog: pytest.LogCaptureFixture,
) -> None:
    sym = FakeSymbolizer({0x1100: "f"}, {})  # its mapping is [0x1000, 0x9000)
    profile = build_profile(
        [RawSample(key((0xFFFF,)), (1,)), RawSample(key((0x1100,)), (2,))],
        cpu_spec(99),
        StackResolver(sym),
        lambda k: "",
        time_nanos=0,
        duration_nanos=0,
    )
    assert [s.values[0] for s in profile.samples] == [2]
    assert "dropped 1 samples" in caplog.text and "outside its mapping" in caplog.text


def test_a_return_address_at_the_end_of_its_mapping_stays_inside_it() -> None:
    """The call was the mapping's last instruction: address - 1 is in it,
    the return address itself is the mapping's limit."""
    sym = FakeSymbolizer({0x8FFF: "caller"}, {})
    _leaf, caller = StackResolver(sym).locations(key((0x1100, 0x9000)))
    assert caller.mapping is not None and caller.address == 0x8FFF < caller.mapping.limit
    assert caller.display_name() == "caller"


def test_container_id_label_only_where_there_is_one() -> None:
    sym = FakeSymbolizer({}, {})
    samples = [RawSample(key((0x1100,)), (1,)), RawSample(RawKey(12, 12, "c", RawStack()), (1,))]
    profile = build_profile(
        samples,
        cpu_spec(99),
        StackResolver(sym),
        lambda k: "",
        time_nanos=0,
        duration_nanos=0,
        container_id=lambda pid: "ab" * 32 if pid == 12 else "",
    )
    by_pid = {s.num_labels["pid"]: dict(s.labels) for s in profile.samples}
    assert "container_id" not in by_pid[10]
    assert by_pid[12]["container_id"] == "ab" * 32
