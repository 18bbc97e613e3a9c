"""What the off-CPU and lock sources share: wait counts keyed by stacks.

Both programs store, when a wait begins (off-CPU) or ends (lock), the
waiting thread's stacks, and add (1, nanoseconds) to a double-buffered
counts map when it ends. Their stacks are not double-buffered by window: a
wait can span any number of drains, so its stack ids must outlive them.
They go by generation instead (bpf/waits.h): StackGenerations moves the
program to a fresh half of its stack maps when the current one fills, reads
what is left of the half before into its own cache and empties it, and
keeps the stacks that waits still in flight name for as long as they are.
"""

from __future__ import annotations

import contextlib
import errno
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.config import BpfLimits, SourceOptions
from agent.kernel import bcc_loader
from agent.kernel.layout import STACK_GEN_MASK, STACK_GEN_SHIFT, Counter
from agent.model import RawSample
from agent.sources.program import ProgramSource, base_cflags, read_stack
from agent.sources.unwinding import Resolve, raw_cflags, read_unwound
from agent.unwind.layout import UnwindStat


def common_cflags(
    limits: BpfLimits,
    *,
    filter_pids: bool,
    follow_forks: bool,
    self_pid: int,
    unwind: bool = False,
) -> list[str]:
    """The -D flags both wait programs take: a pure function of the options."""
    flags = base_cflags(limits, filter_pids=filter_pids, follow_forks=follow_forks, unwind=unwind)
    flags[5:5] = [f"-DPENDING_ENTRIES={limits.target_entries * 4}", f"-DSELF_PID={self_pid}"]
    if unwind:  # a wait before its process's tables are loaded keeps its raw stack
        flags += raw_cflags()
    return flags


def split_id(tagged: int) -> tuple[int, int]:
    """(generation tag, map id) of a stack id the wait programs tagged."""
    return (tagged >> STACK_GEN_SHIFT) & STACK_GEN_MASK, tagged & ((1 << STACK_GEN_SHIFT) - 1)


def gen_tag(generation: int) -> int:
    return generation & STACK_GEN_MASK


class StackGenerations:
    """Stack ids of a wait program to instruction pointers, by generation.

    Generation g's stacks are in half g % 2: `stacks[g % 2]` (kernel, and
    user stacks without the CFI walker) and ids [half * capacity, (half +
    1) * capacity) of `user_stacks` (`ustacks`, with the walker). Each id
    is read from its map once and cached under its tagged value.

    `maintain()` (at each poll and drain) runs the generations: once the
    current generation has filled its maps to a load where new stacks would
    collide (below), the program moves to the next (`window[1]`), at most
    once every capacity / MOVE_RATE seconds; at a call at least GRACE_S later (no program
    can still be writing the old half by then, programs run for
    microseconds) the old generation's maps are read into the cache whole
    and emptied. `after_drain()` then keeps its cached stacks while a wait
    may still name them: for two drains, after that only those
    `in_flight()` named in one of its last two looks (a wait that ends
    between a drain and its look is drained the next time; one in flight
    at a look is seen by it). A wait never starts in an old generation, so
    the set only shrinks.

    A new stack collides in a stack map (bpf_get_stackid: one bucket, no
    probing) with the probability of the map's load, and in `ustacks` (4
    buckets probed) about the fourth power of it; a generation ends at 1/32
    of the stack maps read or 1/8 of its `ustacks` half stored (`inserted()`,
    the walker's count), whichever comes first, or when `collisions()` (the
    program's count of stacks lost to them) has grown since the last look:
    the maps also hold stacks no one
    reads (off-CPU takes them before it knows whether a block is long
    enough to count), which only the collisions tell of.
    """

    STACK_FILL = 32
    USTACK_FILL = 8
    GRACE_S = 0.01  # an old half is emptied no sooner than this after the move
    # Moves are capacity / MOVE_RATE seconds apart at least: each empties a
    # half, so this bounds the entries read for that to MOVE_RATE a second.
    MOVE_RATE = 16384

    def __init__(
        self,
        capacity: int,
        window: Any = None,
        stacks: tuple[Any, Any] = (None, None),
        user_stacks: Any = None,
        resolve: Resolve | None = None,
        in_flight: Callable[[], set[int]] = set,
        collisions: Callable[[], int] = int,
        inserted: Callable[[], int] | None = None,
    ) -> None:
        self.capacity = capacity
        self.window = window
        self.stacks = stacks
        self.user_stacks = user_stacks
        self.resolve = resolve
        self.in_flight = in_flight
        self.collisions = collisions
        self._collided = 0
        # stacks stored in ustacks so far (the walker's count of buckets
        # taken), or, without it, the user ids read
        self.inserted = inserted or self._user_ids_read
        self._inserted_at_move = 0
        self.generation = 0
        self.flips = 0
        self.expired = 0  # ids named after their generation's stacks were let go
        self._kernel: dict[int, tuple[int, ...]] = {}
        self._user: dict[int, tuple[tuple[int, ...], int]] = {}
        self._deferred: list[int] = []  # tagged ids of deferred stacks read
        self._read = [0, 0]  # ids of the current generation read: stack maps, ustacks
        self._to_empty: int | None = None  # the generation whose half is to be emptied
        self.move_every_s = capacity / self.MOVE_RATE
        self._moved_at = -self.move_every_s
        self._retired: dict[int, int] = {}  # tag -> drains since its half was emptied
        self._last_look: set[int] = set()

    def __len__(self) -> int:
        return len(self._kernel) + len(self._user)

    def _user_ids_read(self) -> int:
        """User stack ids of this generation read: inserted() without the
        walker's count."""
        return self._read[1] + self._inserted_at_move

    def _live(self, tag: int) -> bool:
        """Whether ids of `tag` are still in the maps."""
        old = self._to_empty
        return tag == gen_tag(self.generation) or (old is not None and tag == gen_tag(old))

    def kernel(self, tagged: int) -> tuple[tuple[int, ...], int]:
        if tagged < 0:
            return (), tagged
        ips = self._kernel.get(tagged)
        if ips is not None:
            return ips, 0
        tag, stack_id = split_id(tagged)
        if not self._live(tag):
            self.expired += 1
            return (), -errno.ENOENT
        ips = self._kernel[tagged] = read_stack(self.stacks[tag & 1], stack_id)
        self._read[0] += tag == gen_tag(self.generation)
        return ips, 0

    def user(self, tagged: int) -> tuple[tuple[int, ...], int]:
        if self.user_stacks is None:
            return self.kernel(tagged)
        if tagged < 0:
            return (), tagged
        got = self._user.get(tagged)
        if got is not None:
            return got
        tag, stack_id = split_id(tagged)
        if not self._live(tag):
            self.expired += 1
            return (), -errno.ENOENT
        deferred: list[int] = []
        got = self._user[tagged] = read_unwound(self.user_stacks, stack_id, self.resolve, deferred)
        self._deferred += [tagged for _ in deferred]
        self._read[1] += tag == gen_tag(self.generation)
        return got

    def after_drain(self) -> None:
        """Free the deferred stacks read, let go of retired stacks no wait
        can name any more, and maintain()."""
        self._free_deferred()
        if self._retired:
            self._prune()
        self.maintain()

    def maintain(self) -> None:
        """Empty the old half once the grace has passed; move on when the
        current generation is full. Safe at any time (a drain or a poll):
        what a drain must come first for is in after_drain."""
        if self._to_empty is not None and time.monotonic() - self._moved_at >= self.GRACE_S:
            self._empty(self._to_empty)
            self._retired[gen_tag(self._to_empty)] = 0
            self._to_empty = None
        if self._to_empty is not None or time.monotonic() - self._moved_at < self.move_every_s:
            return  # the half to move to is not empty yet, or the last move was just now
        collided, self._collided = self._collided, self.collisions()
        stored = (self._read[0], self.inserted() - self._inserted_at_move)
        full = (max(1, self.capacity // fill) for fill in (self.STACK_FILL, self.USTACK_FILL))
        if self._collided > collided or any(
            n >= limit for n, limit in zip(stored, full, strict=True)
        ):
            self._next()

    def _free_deferred(self) -> None:
        """Each deferred stack was one wait's own (its raw record's hash), so
        no later wait names its id: delete it from the map and forget it."""
        for tagged in self._deferred:
            self._user.pop(tagged, None)
            with contextlib.suppress(KeyError):
                del self.user_stacks[self.user_stacks.Key(split_id(tagged)[1])]
        self._deferred.clear()

    def _empty(self, generation: int) -> None:
        """Read what is left of `generation`'s half into the cache, then
        delete it from the maps."""
        tag, half = gen_tag(generation), generation & 1
        base = tag << STACK_GEN_SHIFT
        table = self.stacks[half]
        for key in list(table.keys()):
            stack_id = int(key.value)
            self._kernel.setdefault(base | stack_id, read_stack(table, stack_id))
            with contextlib.suppress(KeyError):
                del table[key]
        if self.user_stacks is None:
            return
        low, high = half * self.capacity, (half + 1) * self.capacity
        for key in list(self.user_stacks.keys()):
            stack_id = int(key.value)
            if not low <= stack_id < high:
                continue
            if base | stack_id not in self._user:
                got = read_unwound(self.user_stacks, stack_id, self.resolve)
                self._user[base | stack_id] = got
            with contextlib.suppress(KeyError):
                del self.user_stacks[key]

    def _prune(self) -> None:
        """Let go of retired stacks no wait can name any more."""
        look = self.in_flight()
        keep = look | self._last_look
        self._last_look = look
        for tag in list(self._retired):
            self._retired[tag] += 1
            if self._retired[tag] < 2:
                continue
            left = 0
            for cache in (self._kernel, self._user):
                for tagged in [t for t in cache if split_id(t)[0] == tag]:
                    if tagged in keep:
                        left += 1
                    else:
                        del cache[tagged]
            if not left:
                del self._retired[tag]

    def _next(self) -> None:
        """Move the program to the next generation, whose half is empty,
        unless its tag is still held by stacks of a wait 256 generations
        old (then the current one goes on, collisions counted)."""
        following = self.generation + 1
        if gen_tag(following) in self._retired:
            return
        self.window[self.window.Key(1)] = self.window.Leaf(following)
        self._to_empty = self.generation
        self._moved_at = time.monotonic()
        self.generation = following
        self._read = [0, 0]
        self._inserted_at_move = self.inserted()
        self.flips += 1


class WaitSource(ProgramSource):
    """A SampleSource over a program with counts0/1, stacks, window, events
    (and, with the CFI walker, ustacks and the unwind maps).

    Subclasses name the program, give its flags, and turn one drained
    (key, value) pair into a RawSample.
    """

    def __init__(self, options: SourceOptions, cache_dir: Path | None = None) -> None:
        super().__init__(options, cache_dir)
        self._cache = StackGenerations(
            options.limits.stack_entries, in_flight=self.in_flight, collisions=self._collisions
        )

    def cflags(self, unwind: bool | None = None) -> list[str]:
        return common_cflags(
            self._options.limits,
            filter_pids=self._options.filter_pids,
            follow_forks=self._options.follow_forks,
            self_pid=os.getpid(),
            unwind=self._walker.wanted if unwind is None else unwind,
        )

    def sample(self, key: Any, value: Any) -> RawSample:
        raise NotImplementedError

    def in_flight(self) -> set[int]:
        """The stack ids waits in flight name (their stacks were taken when
        they began, and they are counted when they end): none for a
        program that takes stacks when a wait ends."""
        return set()

    def poll(self, timeout_ms: int, on_new_process: Callable[[int], None]) -> None:
        """Wait for events; between drains (the agent's are 10 s apart),
        move to a new stack generation as soon as the current one fills."""
        super().poll(timeout_ms, on_new_process)
        self._cache.maintain()

    def _collisions(self) -> int:
        """Stacks lost to collisions so far, user and kernel."""
        table = self._bpf["counters"]
        counters = (Counter.USER_COLLISION, Counter.KERNEL_COLLISION)
        return sum(int(table.sum(c.value).value) for c in counters)

    def loaded(self) -> None:
        self._cache.window = self._bpf["window"]
        self._cache.stacks = (self._bpf["stacks0"], self._bpf["stacks1"])
        self._cache.user_stacks = self._bpf["ustacks"] if self._walker.active else None
        self._cache.resolve = self._walker.resolve if self._walker.raw else None
        if self._walker.active:
            self._cache.inserted = self._stacks_stored

    def _stacks_stored(self) -> int:
        table = self._bpf["unwind_stats"]
        return int(table.sum(UnwindStat.NEW_STACKS.value).value)

    def drain(self) -> list[RawSample]:
        """Flip the counts' double buffer and read the retired half, then
        let the stack generations move on (StackGenerations.after_drain)."""
        counts = self._bpf[f"counts{self.retire_window()}"]
        drained = counts.items_lookup_and_delete_batch()
        samples = [self.sample(k, v) for k, v in drained if not bcc_loader.is_loader(_pid(k))]
        self._cache.after_drain()
        return samples

    def counters(self) -> dict[str, int]:
        out = super().counters()
        out["stack_ids"] = len(self._cache)
        out["stack_generations"] = self._cache.flips
        out["stacks_expired"] = self._cache.expired
        return out


def _pid(key: Any) -> int:
    """The pid of an off-CPU key, or of a lock key's `base`."""
    return int(key.base.pid if hasattr(key, "base") else key.pid)
