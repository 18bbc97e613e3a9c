"""The ProfilesDictionary of one OTLP request: every table interned once.

OTLP profiles (`profiles.v1development`) move all strings, mappings,
functions, locations, stacks and attributes of a request into one shared
dictionary; the profiles hold indices into it. The spec requires entry 0 of
every table to be the zero value (so index 0 can mean "not set"):
`string_table[0] == ""`, `Mapping{}`, `Location{}`, `Function{}`, `Link{}`,
`Stack{}` and `KeyValueAndUnit{}`. The tables are filled here and checked by
`check_indices`, which the tests run on everything the encoder emits.
"""

from __future__ import annotations

from typing import Any

from opentelemetry.proto.profiles.v1development import profiles_pb2 as pb

from agent.model import Location, Mapping

Value = str | int


class Dictionary:
    """Interns values into a ProfilesDictionary being built."""

    def __init__(self) -> None:
        self.pb = pb.ProfilesDictionary()
        self.pb.string_table.append("")
        self.pb.mapping_table.add()
        self.pb.location_table.add()
        self.pb.function_table.add()
        self.pb.link_table.add()
        self.pb.stack_table.add()
        self.pb.attribute_table.add()
        self._strings: dict[str, int] = {"": 0}
        self._attrs: dict[tuple[str, Value], int] = {}
        self._mappings: dict[Mapping, int] = {}
        self._functions: dict[tuple[str, str, str, int], int] = {}
        self._locations: dict[Location, int] = {}
        self._stacks: dict[tuple[int, ...], int] = {}

    def string(self, s: str) -> int:
        idx = self._strings.get(s)
        if idx is None:
            idx = self._strings[s] = len(self.pb.string_table)
            self.pb.string_table.append(s)
        return idx

    def attribute(self, key: str, value: Value) -> int:
        ck = (key, value)
        idx = self._attrs.get(ck)
        if idx is None:
            idx = self._attrs[ck] = len(self.pb.attribute_table)
            kv = self.pb.attribute_table.add(key_strindex=self.string(key))
            if isinstance(value, int):
                kv.value.int_value = value
            else:
                kv.value.string_value = value
        return idx

    def mapping(self, m: Mapping) -> int:
        idx = self._mappings.get(m)
        if idx is None:
            idx = self._mappings[m] = len(self.pb.mapping_table)
            # interned only when there is one: an entry nothing points at
            # would still travel in every request
            key = "process.executable.build_id.gnu"
            attrs = [self.attribute(key, m.build_id)] if m.build_id else []
            self.pb.mapping_table.add(
                memory_start=m.start,
                memory_limit=m.limit,
                file_offset=m.offset,
                filename_strindex=self.string(m.file),
                attribute_indices=attrs,
            )
        return idx

    def function(self, name: str, system_name: str, file: str, start_line: int) -> int:
        ck = (name, system_name, file, start_line)
        idx = self._functions.get(ck)
        if idx is None:
            idx = self._functions[ck] = len(self.pb.function_table)
            self.pb.function_table.add(
                name_strindex=self.string(name),
                system_name_strindex=self.string(system_name or name),
                filename_strindex=self.string(file),
                start_line=start_line,
            )
        return idx

    def location(self, loc: Location) -> int:
        idx = self._locations.get(loc)
        if idx is None:
            lines = [
                pb.Line(
                    function_index=self.function(f.function, f.system_name, f.file, f.start_line),
                    line=f.line,
                )
                for f in loc.frames
            ]
            self.pb.location_table.add(
                mapping_index=self.mapping(loc.mapping) if loc.mapping else 0,
                address=loc.address,
                lines=lines,
                attribute_indices=[self.attribute("profile.frame.type", loc.kind)],
            )
            idx = self._locations[loc] = len(self.pb.location_table) - 1
        return idx

    def stack(self, locations: tuple[Location, ...]) -> int:
        """Stacks are leaf first, as in pprof and our model."""
        key = tuple(self.location(loc) for loc in locations)
        idx = self._stacks.get(key)
        if idx is None:
            idx = self._stacks[key] = len(self.pb.stack_table)
            self.pb.stack_table.add(location_indices=key)
        return idx


def check_indices(d: Any, profiles: list[Any]) -> list[str]:
    """Every index in range, every table's entry 0 the zero value (the spec
    requires it: index 0 means "not set"), and every other entry referenced
    by something; returns the problems found (empty when the request is sound)."""
    problems: list[str] = []
    tables = ("string", "mapping", "location", "function", "stack", "attribute", "link")
    sizes = {kind: len(getattr(d, f"{kind}_table")) for kind in tables}
    used: dict[str, set[int]] = {kind: {0} for kind in tables}

    def check(kind: str, idx: int, where: str) -> None:
        used[kind].add(idx)
        if not 0 <= idx < sizes[kind]:
            problems.append(f"{where}: {kind} index {idx} out of range ({sizes[kind]})")

    if not d.string_table or d.string_table[0] != "":
        problems.append('string_table[0] is not ""')
    for name in tables[1:]:
        table = getattr(d, f"{name}_table")
        if not table or table[0].ByteSize() != 0:
            problems.append(f"{name}_table[0] is not the zero value")
    for p in profiles:
        for vt in (p.sample_type, p.period_type):
            check("string", vt.type_strindex, "value type")
            check("string", vt.unit_strindex, "value type")
        for a in p.attribute_indices:
            check("attribute", a, "profile")
        for s in p.samples:
            check("stack", s.stack_index, "sample")
            check("link", s.link_index, "sample")
            for a in s.attribute_indices:
                check("attribute", a, "sample")
    for i, s in enumerate(d.stack_table):
        for loc_idx in s.location_indices:
            check("location", loc_idx, f"stack {i}")
    for i, loc in enumerate(d.location_table):
        check("mapping", loc.mapping_index, f"location {i}")
        for a in loc.attribute_indices:
            check("attribute", a, f"location {i}")
        for line in loc.lines:
            check("function", line.function_index, f"location {i}")
    for i, m in enumerate(d.mapping_table):
        check("string", m.filename_strindex, f"mapping {i}")
        for a in m.attribute_indices:
            check("attribute", a, f"mapping {i}")
    for i, f in enumerate(d.function_table):
        for field in ("name", "system_name", "filename"):
            check("string", getattr(f, f"{field}_strindex"), f"function {i}")
    for i, a in enumerate(d.attribute_table):
        check("string", a.key_strindex, f"attribute {i}")
        check("string", a.unit_strindex, f"attribute {i}")
    for kind in tables:
        unused = sorted(set(range(sizes[kind])) - used[kind])
        if unused:
            problems.append(f"{kind}_table entries {unused} are referenced by nothing")
    return problems
