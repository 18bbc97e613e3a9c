"""The model as a gzipped pprof `Profile`, and any pprof file back to the model.

The encoder is a pure function of a validated Profile: it interns strings,
functions, mappings and locations into pprof's tables (id 0 and
string_table[0] == "" reserved, as every pprof reader requires). A
mapping's `has_functions` is true only when every location in it was
symbolized, because pprof re-symbolizes exactly the mappings where it is
false: a frame we could not name keeps its address so pprof (or a later
bpfprof) can name it with the binary at hand. Python frames live in a
pseudo-mapping named after their interpreter ("[python3.11]",
model.cpython_mapping_name), which is how the decoder gives them back
their kind: pprof has no field for it.

The decoder reads what any producer writes (Go's runtime/pprof, pprof
itself, other agents) and turns every malformed input into one InputError
line, never an IndexError or a protobuf traceback.
"""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Callable, Iterable
from dataclasses import replace
from typing import Any

from google.protobuf.message import DecodeError

from agent import model
from agent.errors import InputError
from agent.exporters import pprof_pb

_GZIP_MAGIC = b"\x1f\x8b"
GZIP_LEVEL = 1


def encode(profile: model.Profile) -> bytes:
    """Serialize `profile` as pprof, gzipped (deterministically: mtime 0).

    Level 1, as Go's runtime/pprof writes its profiles: a third of the time
    of level 9 for files about 7 % larger (measured on the agent's own
    intervals), which matters to an agent that encodes every 10 seconds."""
    profile.validate()
    message = _Encoder(profile).message().SerializeToString()
    return gzip.compress(message, compresslevel=GZIP_LEVEL, mtime=0)


class _Encoder:
    """Interning tables for one profile; ids are table positions + 1."""

    def __init__(self, profile: model.Profile) -> None:
        self.profile = profile
        self.pb = pprof_pb.Profile()
        self.strings: dict[str, int] = {}
        self.functions: dict[tuple[str, str, str, int], int] = {}
        self.mappings: dict[model.Mapping, int] = {}
        self.locations: dict[tuple[object, ...], int] = {}
        # by identity first: the resolver hands out one Location object per
        # address, met in many samples, and hashing its frames each time is
        # most of the cost of encoding (the profile keeps them alive meanwhile)
        self.location_ids: dict[int, int] = {}
        self.string("")

    def string(self, s: str) -> int:
        idx = self.strings.get(s)
        if idx is None:
            idx = self.strings[s] = len(self.pb.string_table)
            self.pb.string_table.append(s)
        return idx

    def value_type(self, vt: model.ValueType, out: Any) -> None:
        out.type, out.unit = self.string(vt.type), self.string(vt.unit)

    def message(self) -> Any:
        p, pb = self.profile, self.pb
        for st in p.sample_types:
            self.value_type(st, pb.sample_type.add())
        unique = {id(loc): loc for s in p.samples for loc in s.locations}
        self.add_mappings(unique.values())
        for s in p.samples:
            self.add_sample(s)
        if p.period_type is not None:
            self.value_type(p.period_type, pb.period_type)
        pb.period, pb.time_nanos, pb.duration_nanos = p.period, p.time_nanos, p.duration_nanos
        if p.default_sample_type:
            pb.default_sample_type = self.string(p.default_sample_type)
        pb.comment.extend(self.string(c) for c in p.comments)
        return pb

    def add_mappings(self, locations: Iterable[model.Location]) -> None:
        """Emit each mapping once, its has_* flags true only when every one of
        its locations carries that much symbol information."""
        by_mapping: dict[model.Mapping, list[model.Location]] = {}
        for loc in locations:
            if loc.mapping is not None:
                by_mapping.setdefault(loc.mapping, []).append(loc)
        # Python frames' pseudo-mapping and the kernel go last: pprof takes
        # the first mapping for the main binary.
        order = {model.NATIVE: 0, model.CPYTHON: 1, model.KERNEL: 2}
        for m, locs in sorted(by_mapping.items(), key=lambda item: order[item[0].kind]):
            frames = [f for loc in locs for f in loc.frames]
            functions = all(loc.symbolized for loc in locs)
            self.mappings[m] = len(self.pb.mapping) + 1
            self.pb.mapping.add(
                id=self.mappings[m],
                memory_start=m.start,
                memory_limit=m.limit,
                file_offset=m.offset,
                filename=self.string(m.file),
                build_id=self.string(m.build_id),
                has_functions=functions,
                has_filenames=functions and all(f.file for f in frames),
                has_line_numbers=functions and all(f.line for f in frames),
                has_inline_frames=functions and any(len(loc.frames) > 1 for loc in locs),
            )

    def add_sample(self, s: model.Sample) -> None:
        out = self.pb.sample.add(value=s.values)
        known = self.location_ids  # the common case inline: no call per frame
        out.location_id.extend([known.get(id(loc)) or self.location(loc) for loc in s.locations])
        strings = self.strings
        for key, text in sorted(s.labels.items()):
            k, t = strings.get(key) or self.string(key), strings.get(text) or self.string(text)
            out.label.add(key=k, str=t)
        for key, num in sorted(s.num_labels.items()):
            out.label.add(key=self.string(key), num=num)

    def location(self, loc: model.Location) -> int:
        lid = self.location_ids.get(id(loc))
        if lid is not None:
            return lid
        key = (loc.mapping, loc.address, loc.frames)
        lid = self.locations.get(key)
        if lid is None:
            lid = self.locations[key] = len(self.pb.location) + 1
            out = self.pb.location.add(id=lid, address=loc.address)
            out.mapping_id = self.mappings[loc.mapping] if loc.mapping is not None else 0
            for frame in loc.frames:  # innermost first, as pprof orders Lines
                out.line.add(function_id=self.function(frame), line=frame.line)
        self.location_ids[id(loc)] = lid
        return lid

    def function(self, frame: model.Frame) -> int:
        key = (frame.function, frame.system_name, frame.file, frame.start_line)
        fid = self.functions.get(key)
        if fid is None:
            fid = self.functions[key] = len(self.pb.function) + 1
            self.pb.function.add(
                id=fid,
                name=self.string(frame.function),
                system_name=self.string(frame.system_name),
                filename=self.string(frame.file),
                start_line=frame.start_line,
            )
        return fid


def decode(data: bytes) -> model.Profile:
    """Read a pprof profile, gzipped or not, from any producer."""
    return _Decoder(_parse(_gunzip(data))).profile()


def _gunzip(data: bytes) -> bytes:
    raw = data
    if data.startswith(_GZIP_MAGIC):
        try:
            raw = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as e:
            raise InputError(f"not a pprof profile: corrupt gzip data ({e})") from None
    if not raw:
        raise InputError("not a pprof profile: the input is empty")
    return raw


def _parse(raw: bytes) -> Any:
    pb = pprof_pb.Profile()
    try:
        pb.ParseFromString(raw)
    except DecodeError:
        raise InputError("not a pprof profile: the data is not a pprof protobuf message") from None
    if not pb.string_table or pb.string_table[0] != "":
        raise InputError("not a pprof profile: its string table does not start with ''")
    if not pb.sample_type:
        raise InputError("not a pprof profile: it declares no sample types")
    return pb


class _Decoder:
    """Resolves one parsed message's ids into model objects, checking each."""

    def __init__(self, pb: Any) -> None:
        self.pb = pb
        self.mappings = _by_id("mapping", pb.mapping, self.mapping)
        self.functions = _by_id("function", pb.function, self.function)
        self.locations = _by_id("location", pb.location, self.location)

    def text(self, idx: int) -> str:
        if not 0 <= idx < len(self.pb.string_table):
            raise InputError(f"malformed pprof profile: string index {idx} is out of range")
        return str(self.pb.string_table[idx])

    def value_type(self, vt: Any) -> model.ValueType:
        return model.ValueType(self.text(vt.type), self.text(vt.unit))

    def mapping(self, m: Any) -> model.Mapping:
        return model.Mapping(
            m.memory_start,
            m.memory_limit,
            m.file_offset,
            self.text(m.filename),
            self.text(m.build_id),
        )

    def location(self, loc: Any) -> model.Location:
        mapping = None
        if loc.mapping_id:
            mapping = _lookup(self.mappings, "mapping", loc.mapping_id, f"location {loc.id}")
        frames = tuple(self.frame(line, loc.id) for line in loc.line)
        kind = mapping.kind if mapping is not None else model.NATIVE
        return model.Location(loc.address, mapping, frames, kind)

    def function(self, f: Any) -> model.Frame:
        """A Function as a Frame without a line; each Line supplies its own."""
        name, system, file = self.text(f.name), self.text(f.system_name), self.text(f.filename)
        return model.Frame(name, file, 0, f.start_line, system)

    def frame(self, line: Any, loc_id: int) -> model.Frame:
        f: model.Frame = _lookup(self.functions, "function", line.function_id, f"location {loc_id}")
        return replace(f, line=line.line)

    def sample(self, i: int, s: Any) -> model.Sample:
        if len(s.value) != len(self.pb.sample_type):
            raise InputError(
                f"malformed pprof profile: sample {i} has {len(s.value)} values "
                f"for {len(self.pb.sample_type)} sample types"
            )
        where = f"sample {i}"
        locs = tuple(_lookup(self.locations, "location", lid, where) for lid in s.location_id)
        labels = {self.text(lb.key): self.text(lb.str) for lb in s.label if lb.str}
        nums = {self.text(lb.key): lb.num for lb in s.label if not lb.str}
        return model.Sample(locs, tuple(s.value), labels, nums)

    def profile(self) -> model.Profile:
        pb = self.pb
        return model.Profile(
            sample_types=tuple(self.value_type(st) for st in pb.sample_type),
            samples=[self.sample(i, s) for i, s in enumerate(pb.sample)],
            period_type=self.value_type(pb.period_type) if pb.HasField("period_type") else None,
            period=pb.period,
            time_nanos=pb.time_nanos,
            duration_nanos=pb.duration_nanos,
            default_sample_type=self.text(pb.default_sample_type),
            comments=tuple(self.text(c) for c in pb.comment),
        )


def _by_id(kind: str, items: Iterable[Any], convert: Callable[[Any], Any]) -> dict[int, Any]:
    """Table rows by id; pprof reserves id 0 and requires ids to be unique."""
    table: dict[int, Any] = {}
    for item in items:
        if item.id == 0 or item.id in table:
            raise InputError(
                f"malformed pprof profile: {kind} id {item.id} is reserved or repeated"
            )
        table[item.id] = convert(item)
    return table


def _lookup(table: dict[int, Any], kind: str, ident: int, where: str) -> Any:
    try:
        return table[ident]
    except KeyError:
        raise InputError(
            f"malformed pprof profile: {where} refers to missing {kind} {ident}"
        ) from None
