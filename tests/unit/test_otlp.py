"""OTLP profiles encoding: dictionary invariants, round trip, resources."""

from __future__ import annotations

from collections import Counter
from typing import Any

from opentelemetry.proto.profiles.v1development import profiles_pb2 as pb

from agent.exporters import otlp
from agent.exporters.otlp_dict import check_indices
from agent.model import KERNEL_MAPPING_NAME, Frame, Location, Mapping, Profile, Sample, ValueType

LIBC = Mapping(0x7000, 0x9000, 0x1000, "/lib/libc.so.6", "abcd1234")
APP = Mapping(0x1000, 0x3000, 0, "/usr/bin/app")
KERN = Mapping(1 << 63, 2**64 - 1, 0, KERNEL_MAPPING_NAME)
MAIN = Location(0x1100, APP, (Frame("main"),))
WORK = Location(0x1200, APP, (Frame("inlined", "a.c", 7), Frame("work", "a.c", 3)))
MEMCPY = Location(0x7100, LIBC, (Frame("memcpy"),))
UNSYM = Location(0x2999, APP)
SYSCALL = Location((1 << 63) + 5, KERN, (Frame("do_syscall_64"),), "kernel")


def cpu_profile() -> Profile:
    def sample(stack: tuple[Location, ...], n: int, pid: int, tid: int, comm: str) -> Sample:
        labels = {"comm": comm, "process": "app" if pid == 10 else "db"}
        if pid == 20:
            labels["container_id"] = "c" * 64
        return Sample(stack, (n, n * 1000), labels, {"pid": pid, "tid": tid})

    return Profile(
        sample_types=(ValueType("samples", "count"), ValueType("cpu", "nanoseconds")),
        samples=[
            sample((MEMCPY, WORK, MAIN), 3, 10, 11, "worker"),
            sample((WORK, MAIN), 5, 10, 10, "app"),
            sample((SYSCALL, UNSYM, MAIN), 2, 20, 20, "db"),
        ],
        period_type=ValueType("cpu", "nanoseconds"),
        period=1000,
        time_nanos=1_700_000_000_000_000_000,
        duration_nanos=10_000_000_000,
        default_sample_type="cpu",
    )


def all_profiles(data: Any) -> list[Any]:
    return [p for rp in data.resource_profiles for sp in rp.scope_profiles for p in sp.profiles]


def attrs(kvs: Any) -> dict[str, Any]:
    return {kv.key: getattr(kv.value, kv.value.WhichOneof("value")) for kv in kvs}


def decode_stacks(data: Any) -> Counter[tuple[str, int, str, tuple[str, ...]]]:
    """(pid, sample type, leaf-first function names) -> value: our reader of the wire."""
    d = data.dictionary
    s = d.string_table
    out: Counter[tuple[str, int, str, tuple[str, ...]]] = Counter()
    for rp in data.resource_profiles:
        pid = attrs(rp.resource.attributes)["process.pid"]
        for sp in rp.scope_profiles:
            for p in sp.profiles:
                for sample in p.samples:
                    names = []
                    for li in d.stack_table[sample.stack_index].location_indices:
                        loc = d.location_table[li]
                        fn = [
                            s[d.function_table[ln.function_index].name_strindex] for ln in loc.lines
                        ]
                        names.append("/".join(fn) or hex(loc.address))
                    key = (s[p.sample_type.type_strindex], pid, "", tuple(names))
                    out[key] += sample.values[0]
    return out


def encoded() -> pb.ProfilesData:
    return pb.ProfilesData.FromString(otlp.encode(cpu_profile(), host_name="h1"))


def test_dictionary_is_sound() -> None:
    data = encoded()
    assert data.dictionary.string_table[0] == ""
    assert check_indices(data.dictionary, all_profiles(data)) == []


def test_every_attribute_but_the_zero_entry_is_referenced() -> None:
    """GIVEN mappings with and without a build id (APP, the kernel), THEN the
    attribute table is the spec's zero entry (KeyValueAndUnit{}, index 0 =
    "not set", which must be present) and entries something points at."""
    data = encoded()
    d = data.dictionary
    assert d.attribute_table[0] == pb.KeyValueAndUnit()
    referenced = {a for m in d.mapping_table for a in m.attribute_indices}
    referenced |= {a for loc in d.location_table for a in loc.attribute_indices}
    referenced |= {a for p in all_profiles(data) for s in p.samples for a in s.attribute_indices}
    assert referenced == set(range(1, len(d.attribute_table)))
    keys = [d.string_table[a.key_strindex] for a in d.attribute_table]
    assert keys.count("process.executable.build_id.gnu") == 1  # LIBC's; APP and KERN have none


def test_round_trip_keeps_every_stack_and_value() -> None:
    got = decode_stacks(encoded())
    assert got == Counter(
        {
            ("samples", 10, "", ("memcpy", "inlined/work", "main")): 3,
            ("cpu", 10, "", ("memcpy", "inlined/work", "main")): 3000,
            ("samples", 10, "", ("inlined/work", "main")): 5,
            ("cpu", 10, "", ("inlined/work", "main")): 5000,
            ("samples", 20, "", ("do_syscall_64", "0x2999", "main")): 2,
            ("cpu", 20, "", ("do_syscall_64", "0x2999", "main")): 2000,
        }
    )


def test_one_resource_per_process_with_semantic_attributes() -> None:
    data = encoded()
    resources = [attrs(rp.resource.attributes) for rp in data.resource_profiles]
    assert resources == [
        {
            "host.name": "h1",
            "service.name": "app",
            "process.pid": 10,
            "process.executable.name": "app",
        },
        {
            "host.name": "h1",
            "service.name": "db",
            "process.pid": 20,
            "process.executable.name": "db",
            "container.id": "c" * 64,
        },
    ]
    rp = data.resource_profiles[0]
    assert rp.scope_profiles[0].scope.name == "bpfprof"
    types = [data.dictionary.string_table[p.sample_type.type_strindex] for p in all_profiles(data)]
    assert types == ["samples", "cpu", "samples", "cpu"]
    p = rp.scope_profiles[0].profiles[1]
    assert (p.time_unix_nano, p.duration_nano, p.period) == (1_700_000_000 * 10**9, 10**10, 1000)
    assert data.dictionary.string_table[p.period_type.unit_strindex] == "nanoseconds"
    assert len(p.profile_id) == 16


def test_locations_carry_frame_type_mappings_build_ids_and_threads() -> None:
    data = encoded()
    d = data.dictionary
    s = d.string_table

    def attr(i: int) -> tuple[str, Any]:
        a = d.attribute_table[i]
        return s[a.key_strindex], getattr(a.value, a.value.WhichOneof("value"))

    kinds = Counter(attr(i)[1] for loc in d.location_table[1:] for i in loc.attribute_indices)
    assert kinds == {"native": 4, "kernel": 1}
    libc = next(m for m in d.mapping_table if s[m.filename_strindex] == "/lib/libc.so.6")
    assert [attr(i) for i in libc.attribute_indices] == [
        ("process.executable.build_id.gnu", "abcd1234")
    ]
    assert (libc.memory_start, libc.memory_limit, libc.file_offset) == (0x7000, 0x9000, 0x1000)
    first = data.resource_profiles[0].scope_profiles[0].profiles[0].samples[0]
    assert dict(attr(i) for i in first.attribute_indices) == {
        "thread.id": 11,
        "thread.name": "worker",
    }


def test_shared_stacks_are_interned_once() -> None:
    d = encoded().dictionary
    stacks = [tuple(s.location_indices) for s in d.stack_table]
    assert len(stacks) == len(set(stacks)) == 4  # zero entry + three stacks
    assert len(d.string_table) == len(set(d.string_table))


def test_check_indices_finds_broken_requests() -> None:
    data = encoded()
    data.dictionary.string_table[0] = "x"
    data.dictionary.stack_table[1].location_indices.append(999)
    all_profiles(data)[0].samples[0].stack_index = 77
    data.dictionary.mapping_table[0].memory_start = 1
    data.dictionary.attribute_table.add(key_strindex=1)
    problems = check_indices(data.dictionary, all_profiles(data))
    assert 'string_table[0] is not ""' in problems
    assert "mapping_table[0] is not the zero value" in problems
    assert any("location index 999" in p for p in problems)
    assert any("stack index 77" in p for p in problems)
    last = len(data.dictionary.attribute_table) - 1
    assert f"attribute_table entries [{last}] are referenced by nothing" in problems


def test_request_and_profiles_data_carry_the_same_content() -> None:
    builder = otlp.RequestBuilder(scope_version="1.2")
    builder.add(cpu_profile(), otlp.resource_from_labels("h"))
    request = builder.request()
    data = builder.profiles_data()
    assert request.dictionary == data.dictionary
    assert list(request.resource_profiles) == list(data.resource_profiles)
    assert request.resource_profiles[0].scope_profiles[0].scope.version == "1.2"
