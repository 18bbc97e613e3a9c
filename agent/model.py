"""The neutral profile model: pure data, shared by every stage.

A `Profile` holds samples whose stacks are tuples of `Location`s (leaf
first, as in pprof); a location holds its `Mapping` and its symbolized
`Frame`s (innermost inlined frame first). Values are plain objects, not
interned ids: the encoders intern. `Profile.validate()` checks the
invariants every encoder relies on, so encoders never see a broken profile.
"""

from __future__ import annotations

import re
from collections.abc import Mapping as MappingABC
from dataclasses import dataclass, field

from agent.errors import InvalidProfile

_CPYTHON_MAPPING = re.compile(r"\[python(\d+\.\d+)?\]")

KERNEL_MAPPING_NAME = "[kernel.kallsyms]"

# Location.kind: the OpenTelemetry profile.frame.type of the frame.
NATIVE = "native"
KERNEL = "kernel"
CPYTHON = "cpython"  # a Python function run by CPython's interpreter loop


def cpython_mapping_name(version: tuple[int, int] | None) -> str:
    """The pseudo-file of a CPython version's Python frames: "[python3.11]"
    ("[python]": version unknown). pprof has no frame kind, so a decoder
    tells a Python frame by it."""
    return f"[python{version[0]}.{version[1]}]" if version else "[python]"


@dataclass(frozen=True)
class ValueType:
    """A sample value's meaning, as pprof's ValueType: e.g. cpu/nanoseconds."""

    type: str
    unit: str


@dataclass(frozen=True)
class Mapping:
    """A file (or pseudo-file) mapped into a process at [start, limit)."""

    start: int
    limit: int
    offset: int = 0
    file: str = ""
    build_id: str = ""

    @property
    def is_kernel(self) -> bool:
        return self.file == KERNEL_MAPPING_NAME

    @property
    def is_cpython(self) -> bool:
        """The pseudo-mapping of Python frames (cpython_mapping_name)."""
        return _CPYTHON_MAPPING.fullmatch(self.file) is not None

    @property
    def kind(self) -> str:
        """The frame kind of locations in this mapping, as a decoder infers it."""
        return KERNEL if self.is_kernel else CPYTHON if self.is_cpython else NATIVE


@dataclass(frozen=True)
class Frame:
    """One function activation at a location: a pprof Line with its Function."""

    function: str
    file: str = ""
    line: int = 0
    start_line: int = 0
    system_name: str = ""


@dataclass(frozen=True)
class Location:
    """A program counter. `frames` is empty when it could not be symbolized:
    the address and mapping are kept so it can be symbolized later."""

    address: int
    mapping: Mapping | None = None
    frames: tuple[Frame, ...] = ()
    kind: str = NATIVE  # profile.frame.type: native, kernel, cpython, ...

    @property
    def symbolized(self) -> bool:
        return bool(self.frames)

    def display_name(self) -> str:
        """The outermost function name, or the address for unsymbolized ones."""
        if self.frames:
            return self.frames[-1].function
        if self.mapping and self.mapping.file:
            base = self.mapping.file.rsplit("/", 1)[-1]
            return f"{base}+0x{self.address - self.mapping.start + self.mapping.offset:x}"
        return f"0x{self.address:x}"


@dataclass(frozen=True)
class Sample:
    """A stack (leaf first) with one value per sample type and its labels."""

    locations: tuple[Location, ...]
    values: tuple[int, ...]
    labels: MappingABC[str, str] = field(default_factory=dict)
    num_labels: MappingABC[str, int] = field(default_factory=dict)


@dataclass
class Profile:
    """One profile of one type over one window."""

    sample_types: tuple[ValueType, ...]
    samples: list[Sample] = field(default_factory=list)
    period_type: ValueType | None = None
    period: int = 0
    time_nanos: int = 0
    duration_nanos: int = 0
    default_sample_type: str = ""
    comments: tuple[str, ...] = ()

    def sample_index(self, name: str | int | None) -> int:
        """Resolve a sample type name (or index) to an index; default: the
        profile's default sample type, else the last one (as pprof does)."""
        if name is None or name == "":
            name = self.default_sample_type or len(self.sample_types) - 1
        if isinstance(name, int) or (isinstance(name, str) and name.isdigit()):
            idx = int(name)
            if 0 <= idx < len(self.sample_types):
                return idx
        else:
            for i, st in enumerate(self.sample_types):
                if st.type == name:
                    return i
        names = ", ".join(st.type for st in self.sample_types)
        raise InvalidProfile(f"no sample type {name!r} in this profile (it has: {names})")

    def validate(self) -> None:
        """Raise InvalidProfile unless every encoder can rely on this profile."""
        if not self.sample_types:
            raise InvalidProfile("profile has no sample types")
        n = len(self.sample_types)
        if self.default_sample_type and all(
            st.type != self.default_sample_type for st in self.sample_types
        ):
            raise InvalidProfile(f"default sample type {self.default_sample_type!r} is not defined")
        for i, s in enumerate(self.samples):
            if len(s.values) != n:
                raise InvalidProfile(f"sample {i} has {len(s.values)} values, expected {n}")
            for loc in s.locations:
                _check_location(loc, i)
            for key in list(s.labels) + list(s.num_labels):
                if not key:
                    raise InvalidProfile(f"sample {i} has a label with an empty key")


def _check_location(loc: Location, sample: int) -> None:
    m = loc.mapping
    if m is None:
        return
    if m.limit < m.start:
        raise InvalidProfile(f"mapping {m.file!r} ends before it starts")
    if not (m.start <= loc.address < m.limit or (m.start == m.limit == 0)):
        raise InvalidProfile(
            f"sample {sample}: address 0x{loc.address:x} is outside its mapping "
            f"{m.file!r} [0x{m.start:x}, 0x{m.limit:x})"
        )


@dataclass(frozen=True)
class RawStack:
    """One stack as the kernel gave it, before symbolization.

    `user` and `kernel` are instruction pointers, leaf first. A non-zero
    `*_error` is the -errno bpf_get_stackid returned for that half (e.g.
    -EEXIST: the stack was lost to a stack-map collision)."""

    user: tuple[int, ...] = ()
    kernel: tuple[int, ...] = ()
    user_error: int = 0
    kernel_error: int = 0


@dataclass(frozen=True)
class RawKey:
    """What the aggregator groups by: a thread and a stack.

    `tag` is what a source knows about the sample beyond its stack (for
    lock waits, the kind of wait the kernel saw); "" for most."""

    pid: int
    tid: int
    comm: str
    stack: RawStack
    tag: str = ""


@dataclass(frozen=True)
class RawSample:
    """A drained in-kernel count: a key and its values (for CPU: a count)."""

    key: RawKey
    values: tuple[int, ...]
