"""StackGenerations (agent/sources/waits.py): the wait programs' stack ids
carry their generation, the program moves to a fresh half of its maps when
the current one fills, and the stacks of a generation whose maps were
emptied are kept for as long as a wait may still name them."""

from __future__ import annotations

import ctypes
import errno
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest

from agent.kernel.layout import STACK_GEN_SHIFT
from agent.sources import waits
from agent.sources.waits import StackGenerations, split_id

CAPACITY = 64  # a generation ends after 64 // 32 = 2 kernel ids or 64 // 8 = 8 user ids


class Map:
    """A BCC table: Key()/Leaf() wrap values; keys() iterates ctypes keys;
    reads are counted."""

    def __init__(self, items: dict[int, Any] | None = None) -> None:
        self.items: dict[int, Any] = dict(items or {})
        self.reads = 0

    Key = ctypes.c_uint32
    Leaf = ctypes.c_uint32

    def keys(self) -> Iterator[ctypes.c_uint32]:
        return iter([ctypes.c_uint32(k) for k in self.items])

    def __getitem__(self, key: ctypes.c_uint32) -> Any:
        self.reads += 1
        return self.items[key.value]

    def __setitem__(self, key: ctypes.c_uint32, leaf: ctypes.c_uint32) -> None:
        self.items[key.value] = leaf.value

    def __delitem__(self, key: ctypes.c_uint32) -> None:
        del self.items[key.value]


def kstack(*ips: int) -> SimpleNamespace:
    return SimpleNamespace(ip=[*ips, 0])


def ustack(*ips: int) -> SimpleNamespace:
    return SimpleNamespace(len=len(ips), flags=0, ips=list(ips))


def tagged(generation: int, stack_id: int) -> int:
    return (generation << STACK_GEN_SHIFT) | stack_id


class Program:
    """The maps of a loaded wait program, and the waits it has in flight."""

    def __init__(self) -> None:
        self.window = Map({0: 0, 1: 0})
        self.stacks = (Map(), Map())
        self.ustacks = Map()
        self.in_flight: set[int] = set()
        self.looks = 0

    def look(self) -> set[int]:
        self.looks += 1
        return set(self.in_flight)

    def cache(self, walker: bool = True) -> StackGenerations:
        cache = StackGenerations(
            CAPACITY,
            window=self.window,
            stacks=self.stacks,
            user_stacks=self.ustacks if walker else None,
            in_flight=self.look,
        )
        cache.GRACE_S = cache.move_every_s = 0  # drains here are microseconds apart
        return cache

    def take(self, generation: int, bucket: int, ip: int) -> tuple[int, int]:
        """What take_stacks stores in generation `generation`: tagged
        (user, kernel) ids of a stack in `bucket` of its half."""
        half = generation & 1
        self.ustacks.items[half * CAPACITY + bucket] = ustack(ip)
        self.stacks[half].items[bucket] = kstack(ip | 0xFFFF0000_00000000)
        return tagged(generation, half * CAPACITY + bucket), tagged(generation, bucket)


def fill(prog: Program, cache: StackGenerations, generation: int) -> list[tuple[int, int]]:
    """Two stacks of `generation` read, user and kernel: enough to end it."""
    taken = [prog.take(generation, b, 0x401000 + (generation << 16) + b) for b in (1, 2)]
    for user, kernel in taken:
        cache.user(user)
        cache.kernel(kernel)
    return taken


def test_ids_are_read_from_their_generations_half_once() -> None:
    prog = Program()
    cache = prog.cache()
    user, kernel = prog.take(0, 3, 0x401000)
    assert cache.user(user) == ((0x401000,), 0)
    assert cache.kernel(kernel) == ((0xFFFF0000_00401000,), 0)
    assert cache.user(user) == ((0x401000,), 0)  # cached
    assert prog.ustacks.reads == 1 and prog.stacks[0].reads == 1
    assert cache.user(-errno.EEXIST) == ((), -errno.EEXIST)
    assert cache.kernel(-errno.EFAULT) == ((), -errno.EFAULT)


def test_a_full_generation_moves_the_program_to_the_other_half() -> None:
    prog = Program()
    cache = prog.cache()
    cache.after_drain()
    assert prog.window.items[1] == 0  # nothing read yet: stays
    fill(prog, cache, 0)
    cache.after_drain()
    assert prog.window.items[1] == 1 and cache.generation == 1 and cache.flips == 1
    # the new generation's stacks are in the other half, the old ones still readable
    user, kernel = prog.take(1, 1, 0x402000)
    assert split_id(user) == (1, CAPACITY + 1)
    assert cache.user(user) == ((0x402000,), 0)
    assert cache.kernel(kernel)[0] == (0xFFFF0000_00402000,)
    old_user, old_kernel = tagged(0, 5), tagged(0, 5)
    prog.ustacks.items[5], prog.stacks[0].items[5] = ustack(0x405000), kstack(0x405)
    assert cache.user(old_user) == ((0x405000,), 0)  # written before the move
    assert cache.kernel(old_kernel) == ((0x405,), 0)


def test_an_old_half_is_emptied_a_drain_later_and_what_it_held_kept() -> None:
    prog = Program()
    cache = prog.cache()
    fill(prog, cache, 0)
    pending_user, pending_kernel = prog.take(0, 6, 0x406000)  # a wait in flight, never read
    cache.after_drain()  # moves to generation 1
    assert 6 in prog.ustacks.items  # not emptied yet: a program may still be writing it
    prog.in_flight = {pending_user, pending_kernel}
    cache.after_drain()  # empties half 0
    assert not prog.stacks[0].items and not [k for k in prog.ustacks.items if k < CAPACITY]
    reads = prog.ustacks.reads
    assert cache.user(pending_user) == ((0x406000,), 0)  # from the cache now
    assert cache.kernel(pending_kernel) == ((0xFFFF0000_00406000,), 0)
    assert prog.ustacks.reads == reads


def test_retired_stacks_stay_while_a_wait_in_flight_names_them() -> None:
    prog = Program()
    cache = prog.cache()
    first = fill(prog, cache, 0)
    sleeper_user, sleeper_kernel = prog.take(0, 6, 0x406000)
    prog.in_flight = {sleeper_user, sleeper_kernel}
    cache.after_drain()  # -> generation 1
    cache.after_drain()  # half 0 emptied into the cache
    for _ in range(5):
        cache.after_drain()
    # the sleeper's stacks are kept, the rest of generation 0 let go
    assert cache.user(sleeper_user) == ((0x406000,), 0)
    assert cache.kernel(sleeper_kernel) == ((0xFFFF0000_00406000,), 0)
    assert cache.user(first[0][0]) == ((), -errno.ENOENT) and cache.expired == 1
    # the sleeper wakes: its stacks go two looks later (the drain that reads
    # its count comes before the second)
    prog.in_flight = set()
    cache.after_drain()
    assert cache.user(sleeper_user) == ((0x406000,), 0)
    cache.after_drain()
    assert cache.user(sleeper_user) == ((), -errno.ENOENT)
    looks = prog.looks
    cache.after_drain()
    assert prog.looks == looks  # nothing retired: no more looks at the waits in flight


def test_a_wait_that_ends_between_a_drain_and_its_look_is_still_read() -> None:
    """The look after a drain misses a wait that ended in between (no longer
    in flight, its count not drained yet); the look before saw it."""
    prog = Program()
    cache = prog.cache()
    fill(prog, cache, 0)
    user, kernel = prog.take(0, 6, 0x406000)
    prog.in_flight = {user, kernel}
    for _ in range(4):
        cache.after_drain()
    prog.in_flight = set()  # it ended just before this look; counted in the next drain
    cache.after_drain()
    assert cache.user(user) == ((0x406000,), 0)


def test_with_frame_pointers_user_ids_are_in_the_stack_maps_by_generation() -> None:
    prog = Program()
    cache = prog.cache(walker=False)
    prog.stacks[0].items[1] = kstack(0x401000)
    prog.stacks[0].items[2] = kstack(0x402000)
    assert cache.user(tagged(0, 1)) == ((0x401000,), 0)
    cache.kernel(tagged(0, 2))
    cache.after_drain()
    assert cache.generation == 1
    prog.stacks[1].items[1] = kstack(0x501000)
    assert cache.user(tagged(1, 1)) == ((0x501000,), 0)
    cache.after_drain()
    assert not prog.stacks[0].items and prog.stacks[1].items


def test_a_tag_still_held_by_an_old_wait_is_not_reused(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tags wrap (STACK_GEN_MASK + 1 of them); the program stays in its
    generation rather than give a new stack the tag an old wait's ids carry."""
    monkeypatch.setattr(waits, "STACK_GEN_MASK", 1)
    prog = Program()
    cache = prog.cache()
    fill(prog, cache, 0)
    sleeper = prog.take(0, 6, 0x406000)
    prog.in_flight = set(sleeper)
    cache.after_drain()  # -> 1
    fill(prog, cache, 1)
    for _ in range(4):
        cache.after_drain()
    assert cache.generation == 1 and cache.flips == 1  # generation 2 would be tag 0 again
    prog.in_flight = set()
    for _ in range(3):
        cache.after_drain()
    assert cache.generation == 2 and split_id(tagged(2, 1))[0] == 0


def test_ustacks_with_four_probes_fill_further_than_the_stack_maps() -> None:
    """A generation ends at 1/8 of its ustacks half (8 ids here), or at 1/32
    of its stack maps (2 here): one bucket each, no probing."""
    prog = Program()
    cache = prog.cache()
    for bucket in range(7):
        cache.user(prog.take(0, bucket, 0x401000 + bucket)[0])
    cache.after_drain()
    assert cache.generation == 0
    cache.user(prog.take(0, 7, 0x407000)[0])
    cache.after_drain()
    assert cache.generation == 1


def test_drains_closer_than_the_grace_leave_the_old_half_alone() -> None:
    """A program that read the generation a moment before the move may still
    be writing the old half: two drains in a row (the last one of `record`
    takes both halves of the counts) do not empty it."""
    prog = Program()
    cache = prog.cache()
    cache.GRACE_S = 3600
    fill(prog, cache, 0)
    cache.after_drain()
    assert cache.generation == 1
    fill(prog, cache, 1)
    cache.after_drain()
    assert prog.stacks[0].items and cache.generation == 1  # not emptied, so no move either
    cache.GRACE_S = 0
    cache.after_drain()
    assert not prog.stacks[0].items and cache.generation == 2


def test_collisions_end_a_generation_that_reads_did_not_fill() -> None:
    """Stacks taken for blocks too short to count are never read, yet fill
    the maps: a collision the program counted since the last drain moves
    it on."""
    prog = Program()
    lost = [0]
    cache = StackGenerations(
        CAPACITY, prog.window, prog.stacks, prog.ustacks, None, set, lambda: lost[0]
    )
    cache.GRACE_S = 0
    cache.after_drain()
    assert cache.generation == 0
    lost[0] = 3
    cache.after_drain()
    assert cache.generation == 1
    cache.after_drain()  # empties half 0; no new collision: stays
    cache.after_drain()
    assert cache.generation == 1


def test_moves_are_spaced_by_the_size_of_the_maps() -> None:
    """Each move empties a half: at most MOVE_RATE entries a second read."""
    assert StackGenerations(16384).move_every_s == 1.0
    assert StackGenerations(128).move_every_s == 128 / 16384
    prog = Program()
    cache = prog.cache()
    cache.move_every_s = 3600
    fill(prog, cache, 0)
    cache.after_drain()
    assert cache.generation == 1  # the first move is not held back
    fill(prog, cache, 1)
    cache.after_drain()
    cache.after_drain()
    assert cache.generation == 1 and not prog.stacks[0].items  # emptied, not moved again


def test_the_walkers_count_of_stacks_stored_ends_a_generation_between_drains() -> None:
    """Stacks stored in ustacks whether or not anyone reads them (the
    walker counts buckets taken): 1/8 of a half ends the generation, at a
    poll, before anything collides."""
    prog = Program()
    stored = [7]
    cache = prog.cache()
    cache.inserted = lambda: stored[0]
    cache.maintain()
    assert cache.generation == 0  # 7 of 64 // 8
    stored[0] += 1
    cache.maintain()
    assert cache.generation == 1
    stored[0] += 7
    cache.maintain()  # empties half 0
    cache.maintain()
    assert cache.generation == 1  # 7 since the move
    stored[0] += 1
    cache.maintain()
    assert cache.generation == 2
