"""The loader child's protocol and the BCC-free facade over what it sends:
JSON type descriptions to ctypes, fds over a socket pair, tables over a
fake map, symbol offsets for uprobes, and the one-line errors."""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.errors import SetupError
from agent.kernel import bcc_loader, bpfsys, handoff, loaded, loader_child, typedesc, uprobes

# -- JSON type descriptions --------------------------------------------------

# as BCC 0.26 describes a key with an array, bitfields, an anonymous union
# and a nested packed struct (copied from bpf_table_key_desc's output)
KEY_DESC = (
    '["k", [["pid","unsigned int"], ["tid","unsigned int"], ["comm","char", [16]], '
    '["a","int", 3], ["b","int", 5], ["", [["x","unsigned long long"], '
    '["y","unsigned int"] ], "union"], ["inner",["", [["q","unsigned short"] ], '
    '"struct_packed"]] ], "struct"]'
)
STACK_DESC = '["bpf_stacktrace", [["ip","unsigned long long", [127]] ], "struct_packed"]'


def test_a_struct_decodes_with_bccs_field_names_and_layout() -> None:
    key = typedesc.decode(json.loads(KEY_DESC))
    assert [f[0] for f in key._fields_] == ["pid", "tid", "comm", "a", "b", "__anon0", "inner"]
    assert (key.pid.offset, key.tid.offset, key.comm.offset, key.comm.size) == (0, 4, 8, 16)
    assert key.__anon0.offset == 32 and ctypes.sizeof(key) == 48
    value = key(pid=7)
    value.x = 1 << 40  # the anonymous union's members are reached directly
    value.inner.q = 3
    value.a = 3
    assert (value.pid, value.y, value.inner.q, value.a) == (7, 0, 3, 3)


def test_scalars_and_packed_arrays() -> None:
    assert typedesc.decode("unsigned long long") is ctypes.c_ulonglong
    stack = typedesc.decode(json.loads(STACK_DESC))
    assert ctypes.sizeof(stack) == 127 * 8 and len(stack().ip) == 127


@pytest.mark.parametrize(
    "desc",
    ["bool", ["x"], ["x", [["f"]]], ["x", [["f", "int", "huh"]]], ["x", [], "class"], 3],
)
def test_unknown_descriptions_are_errors(desc: Any) -> None:
    with pytest.raises(typedesc.TypeDescError):
        typedesc.decode(desc)


# -- the fd hand-over ---------------------------------------------------------


@pytest.fixture
def pair() -> Iterator[tuple[Any, Any]]:
    a, b = handoff.socket_pair()
    with a, b:
        yield a, b


def test_a_reply_carries_more_fds_than_one_message_can(pair: tuple[Any, Any]) -> None:
    ours, theirs = pair
    sent = [os.open("/dev/null", os.O_RDONLY) for _ in range(handoff.FDS_PER_MESSAGE + 7)]
    try:
        handoff.send_reply(theirs, {"maps": ["m"]}, sent)
        reply, got = handoff.recv_reply(ours)
    finally:
        handoff.close_all(sent)
    try:
        assert reply == {"maps": ["m"], "fd_count": len(sent)}
        assert len(got) == len(sent) and not set(got) & set(sent)  # new fds, same files
        null = os.stat("/dev/null")
        assert all(os.fstat(fd).st_rdev == null.st_rdev for fd in got)
    finally:
        handoff.close_all(got)


def test_a_peer_gone_before_replying_is_an_error(pair: tuple[Any, Any]) -> None:
    ours, theirs = pair
    theirs.close()
    with pytest.raises(handoff.HandoffError):
        handoff.recv_reply(ours)


def test_a_peer_gone_before_sending_every_fd_is_an_error(pair: tuple[Any, Any]) -> None:
    ours, theirs = pair
    handoff.send_json(theirs, {"fd_count": 2})
    theirs.close()
    with pytest.raises(handoff.HandoffError, match="0 of 2"):
        handoff.recv_reply(ours)


def test_json_that_is_not_an_object_is_refused(pair: tuple[Any, Any]) -> None:
    ours, theirs = pair
    theirs.sendall(b"[1]")
    with pytest.raises(handoff.HandoffError):
        handoff.recv_json(ours)


# -- the loader child's errors --------------------------------------------------


@pytest.mark.parametrize(
    ("failure", "output", "expected"),
    [
        (
            Exception("Failed to load BPF program on_x: Permission denied"),
            "",
            "the kernel refused to load p.bpf.c: run as root",
        ),
        (
            Exception("Failed to compile BPF module <text>"),
            "warning: w\n/virtual/main.c:3:1: error: nope\n/virtual/main.c:4:1: error: later\n",
            "cannot compile p.bpf.c: /virtual/main.c:3:1: error: nope (run with -vv for details)",
        ),
        (Exception("odd"), "", "cannot compile p.bpf.c: odd (run with -vv for details)"),
    ],
)
def test_compile_failures_are_one_line(failure: Exception, output: str, expected: str) -> None:
    assert loader_child.describe_failure("p.bpf.c", failure, output) == expected


def fake_loader(monkeypatch: pytest.MonkeyPatch, script: str) -> None:
    """Run `script` as the loader child (fd as argv[1])."""
    monkeypatch.setattr(bcc_loader, "check_prerequisites", lambda: None)
    monkeypatch.setattr(
        bcc_loader, "loader_command", lambda fd: [sys.executable, "-c", script, str(fd)]
    )


def test_a_loader_that_dies_gives_its_last_words(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_loader(monkeypatch, "import sys; sys.stderr.write('Traceback\\nboom\\n'); sys.exit(3)")
    with pytest.raises(SetupError, match=r"^the BPF loader failed for cpu.bpf.c: boom$"):
        bcc_loader.compile_program("cpu.bpf.c", [])


def test_an_error_reply_is_raised_as_is(monkeypatch: pytest.MonkeyPatch) -> None:
    script = (
        "import socket, sys; from agent.kernel import handoff; "
        "s = socket.socket(fileno=int(sys.argv[1])); r = handoff.recv_json(s); "
        "handoff.send_reply(s, {'error': 'cannot compile ' + r['name'] + ': x', "
        "'output': 'x'}, [])"
    )
    fake_loader(monkeypatch, script)
    with pytest.raises(SetupError) as info:
        bcc_loader.compile_program("cpu.bpf.c", ["-DX=1"])
    assert str(info.value) == "cannot compile cpu.bpf.c: x"


def test_the_request_carries_the_text_flags_and_function_types(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen: list[dict[str, Any]] = []

    def run_loader(request: dict[str, Any]) -> tuple[dict[str, Any], list[int]]:
        seen.append(request)
        return {"maps": [], "functions": {}, "attachments": []}, []

    monkeypatch.setattr(bcc_loader, "check_prerequisites", lambda: None)
    monkeypatch.setattr(bcc_loader, "run_loader", run_loader)
    program = bcc_loader.compile_program("cpu.bpf.c", ["-DX=1"], {"on_cpu_sample": "perf_event"})
    (request,) = seen
    assert request["cflags"][1:] == ["-DX=1"] and request["cflags"][0].startswith("-I")
    assert "on_cpu_sample" in request["text"] and request["name"] == "cpu.bpf.c"
    assert request["functions"] == {"on_cpu_sample": "perf_event"}
    assert isinstance(program, loaded.LoadedProgram) and program.tables == {}


# -- tables over a fake map -------------------------------------------------


class FakeMaps:
    """bpfsys's map calls over dicts of bytes, one per fd."""

    def __init__(self) -> None:
        self.maps: dict[int, dict[bytes, bytes]] = {}

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        for name in ("lookup", "update", "delete", "next_key", "lookup_and_delete_batch"):
            monkeypatch.setattr(bpfsys, name, getattr(self, name))
        monkeypatch.setattr(bpfsys, "possible_cpus", lambda: 2)

    def lookup(self, fd: int, key: Any, leaf: Any) -> bool:
        data = self.maps.setdefault(fd, {}).get(bytes(key))
        if data is None:
            return False
        ctypes.memmove(ctypes.addressof(leaf), data, len(data))
        return True

    def update(self, fd: int, key: Any, leaf: Any, flags: int = 0) -> None:
        self.maps.setdefault(fd, {})[bytes(key)] = bytes(leaf)

    def delete(self, fd: int, key: Any) -> bool:
        return self.maps.setdefault(fd, {}).pop(bytes(key), None) is not None

    def next_key(self, fd: int, key: Any, out: Any) -> bool:
        keys = sorted(self.maps.setdefault(fd, {}))
        later = keys if key is None else [k for k in keys if k > bytes(key)]
        if not later:
            return False
        ctypes.memmove(ctypes.addressof(out), later[0], len(later[0]))
        return True

    def lookup_and_delete_batch(
        self, fd: int, keys: Any, values: Any, key_size: int, leaf_size: int
    ) -> int:
        items = sorted(self.maps.pop(fd, {}).items())
        for i, (k, v) in enumerate(items):
            ctypes.memmove(ctypes.addressof(keys) + i * key_size, k, key_size)
            ctypes.memmove(ctypes.addressof(values) + i * leaf_size, v, leaf_size)
        return len(items)


def spec(name: str, kind: int, key: str, leaf: str, sizes: tuple[int, int]) -> dict[str, Any]:
    return {
        "name": name,
        "type": kind,
        "max_entries": 4,
        "key_size": sizes[0],
        "leaf_size": sizes[1],
        "key_desc": key,
        "leaf_desc": leaf,
        "fd": 0,
    }


@pytest.fixture
def maps(monkeypatch: pytest.MonkeyPatch) -> FakeMaps:
    fake = FakeMaps()
    fake.install(monkeypatch)
    return fake


def test_a_hash_table_behaves_like_bccs(maps: FakeMaps) -> None:
    buffers = bpfsys.RingBuffers()
    table = loaded.make_table(
        spec("h", loaded.MAP_HASH, '"unsigned int"', '"unsigned long long"', (4, 8)), 3, buffers
    )
    for k in (2, 1, 3):
        table[table.Key(k)] = table.Leaf(k * 10)
    assert table[table.Key(2)].value == 20 and len(table) == 3
    assert [k.value for k in table] == [1, 2, 3]
    assert len(table.keys()) == 3
    del table[table.Key(1)]
    with pytest.raises(KeyError):
        del table[table.Key(1)]
    with pytest.raises(KeyError):
        table[table.Key(1)]
    assert [(k.value, v.value) for k, v in table.items()] == [(2, 20), (3, 30)]
    assert [v.value for v in table.values()] == [20, 30]
    # scalar keys and values come out as ints, as from BCC
    assert list(table.items_lookup_and_delete_batch()) == [(2, 20), (3, 30)]
    assert len(table) == 0
    table[table.Key(5)] = table.Leaf(1)
    table.clear()
    assert table.keys() == []


def test_arrays_index_by_int_and_delete_by_zeroing(maps: FakeMaps) -> None:
    table = loaded.make_table(
        spec("a", loaded.MAP_ARRAY, '"int"', '"unsigned int"', (4, 4)), 4, bpfsys.RingBuffers()
    )
    table[1] = table.Leaf(9)
    assert table[table.Key(1)].value == 9 and len(table) == 4
    del table[-3]  # index 1
    assert table[1].value == 0
    assert [k.value for k in table] == [0, 1, 2, 3]
    with pytest.raises(IndexError):
        table[4]


def test_a_per_cpu_array_sums_over_the_cpus(maps: FakeMaps) -> None:
    table = loaded.make_table(
        spec("c", loaded.MAP_PERCPU_ARRAY, '"int"', '"unsigned long long"', (4, 8)),
        5,
        bpfsys.RingBuffers(),
    )
    assert isinstance(table, loaded.PerCpuArray) and len(table.Leaf()) == 2
    table[2] = table.Leaf(3, 4)
    assert table.sum(2).value == 7 and isinstance(table.sum(2), ctypes.c_ulonglong)
    ints = loaded.make_table(
        spec("i", loaded.MAP_PERCPU_ARRAY, '"int"', '"unsigned int"', (4, 4)),
        6,
        None,  # type: ignore[arg-type]
    )
    assert ints.Leaf._type_ is ctypes.c_uint64  # 4-byte values: 8 bytes per CPU


def test_sizes_that_disagree_with_the_kernel_are_refused() -> None:
    with pytest.raises(typedesc.TypeDescError, match="differ"):
        loaded.make_table(spec("h", 1, '"int"', '"int"', (4, 8)), 3, bpfsys.RingBuffers())
    # a type used only inside BPF (task storage): a plain table, no error
    storage = loaded.make_table(spec("s", 29, '"int"', '"int"', (4, 4)), 3, bpfsys.RingBuffers())
    assert type(storage) is loaded.Table and storage.map_fd == 3


def test_the_program_routes_each_fd_and_closes_each_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    closed: list[int] = []
    monkeypatch.setattr(bpfsys, "close_perf_event", lambda fd: (closed.append(fd), os.close(fd)))
    fds = [os.open("/dev/null", os.O_RDONLY) for _ in range(5)]
    reply = {
        "maps": [
            spec("events", loaded.MAP_RINGBUF, '"int"', '"unsigned int"', (0, 0)),
            {**spec("h", loaded.MAP_HASH, '"int"', '"int"', (4, 4)), "fd": 1},
        ],
        "functions": {"tracepoint__sched__sched_switch": 2, "on_x": 3},
        "attachments": [{"kind": "tracepoint", "target": "sched:sched_switch", "fd": 4}],
    }
    program = loaded.LoadedProgram("p.bpf.c", reply, fds)
    assert isinstance(program["events"], loaded.RingBuf) and program[b"h"].map_fd == fds[1]
    assert program.funcs == {"tracepoint__sched__sched_switch": fds[2], "on_x": fds[3]}
    with pytest.raises(KeyError, match="no loaded function nope"):
        program.attach_perf_event(1, 0, "nope")
    program.cleanup()
    program.cleanup()  # twice: nothing left to close
    assert closed == [fds[4]]
    for fd in fds:
        with pytest.raises(OSError):
            os.fstat(fd)


def test_a_bad_reply_closes_every_fd() -> None:
    fds = [os.open("/dev/null", os.O_RDONLY) for _ in range(2)]
    reply = {"maps": [spec("h", 1, '"int"', '"int"', (4, 8))], "functions": {"f": 1}}
    with pytest.raises(typedesc.TypeDescError):
        loaded.LoadedProgram("p.bpf.c", reply, fds)
    for fd in fds:
        with pytest.raises(OSError):
            os.fstat(fd)


def test_ring_buffers_need_one_opened_first() -> None:
    buffers = bpfsys.RingBuffers()
    with pytest.raises(RuntimeError):
        buffers.poll(0)
    with pytest.raises(RuntimeError):
        buffers.consume()
    buffers.free()


@pytest.mark.parametrize(("text", "cpus"), [("0-1\n", [0, 1]), ("0,2-3,7", [0, 2, 3, 7]), ("", [])])
def test_cpu_lists(text: str, cpus: list[int]) -> None:
    assert bpfsys.cpu_list(text) == cpus


# -- uprobe offsets ---------------------------------------------------------------


def test_file_offset_goes_through_the_segment_holding_the_address() -> None:
    segments = ((0, 0x1000, 0), (0x401000, 0x2000, 0x1000))
    assert uprobes.file_offset(0x401234, segments) == 0x1234
    with pytest.raises(uprobes.SymbolError):
        uprobes.file_offset(0x900000, segments)


def test_symbol_offsets_agree_with_readelf(tmp_path: Path) -> None:
    """A position-dependent executable (address != offset) built here,
    checked against binutils' own reading of its symbols and segments."""
    src = tmp_path / "p.c"
    src.write_text("int target(int x) { return x + 1; }\nint main(void) { return target(1); }\n")
    exe = tmp_path / "p"
    subprocess.run(["gcc", "-O1", "-no-pie", "-o", str(exe), str(src)], check=True)
    syms = subprocess.run(["nm", str(exe)], capture_output=True, text=True, check=True).stdout
    address = next(int(ln.split()[0], 16) for ln in syms.splitlines() if ln.endswith(" target"))
    heads = subprocess.run(["readelf", "-lW", str(exe)], capture_output=True, text=True).stdout
    loads = [ln.split() for ln in heads.splitlines() if ln.strip().startswith("LOAD")]
    offset, vaddr = next(
        (int(f[1], 16), int(f[2], 16))
        for f in loads
        if int(f[2], 16) <= address < int(f[2], 16) + int(f[5], 16)
    )
    assert uprobes.symbol_offset(str(exe), "target") == address - vaddr + offset
    with pytest.raises(uprobes.SymbolError, match="no function"):
        uprobes.symbol_offset(str(exe), "absent")
    with pytest.raises(uprobes.SymbolError, match="cannot read"):
        uprobes.symbol_offset(str(src), "target")
    with pytest.raises(uprobes.SymbolError, match="cannot read"):
        uprobes.symbol_offset(str(tmp_path / "gone"), "target")


def test_symbols_are_read_once_per_file_whatever_the_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each process's libc is opened through its own /proc/PID/root: one
    read serves every path to the file, and a changed file is read again."""
    reads: list[str] = []
    real = uprobes._read

    def counting(path: str) -> uprobes.Symbols:
        reads.append(path)
        return real(path)

    monkeypatch.setattr(uprobes, "_read", counting)
    monkeypatch.setattr(uprobes, "_cache", uprobes.LruCache(32))
    src = tmp_path / "p.c"
    src.write_text("int target(int x) { return x + 1; }\nint main(void) { return target(1); }\n")
    exe = tmp_path / "p"
    subprocess.run(["gcc", "-O1", "-o", str(exe), str(src)], check=True)
    link = tmp_path / "link"
    link.symlink_to(exe)
    paths = (exe, link, Path(f"/proc/{os.getpid()}/root{exe}"))
    offsets = {uprobes.symbol_offset(str(p), "target") for p in paths}
    assert len(offsets) == 1 and len(reads) == 1
    os.utime(exe, ns=(0, 0))  # another version of the file
    assert uprobes.symbol_offset(str(exe), "target") in offsets and len(reads) == 2


def test_a_process_file_is_opened_through_its_root() -> None:
    assert uprobes.probe_path("/bin/sh", os.getpid()) == f"/proc/{os.getpid()}/root/bin/sh"
    assert uprobes.probe_path("/bin/sh", -1) == "/bin/sh"


# -- the loader children are not profiled -----------------------------------------


def test_a_loader_pid_is_ignored_until_a_while_after_it_exits(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(bcc_loader, "_loaders", {5: None, 6: 100.0})
    assert bcc_loader.is_loader(5) and not bcc_loader.is_loader(7)
    assert bcc_loader.is_loader(6, now=100.0 + bcc_loader.LOADER_MEMORY - 1)
    assert not bcc_loader.is_loader(6, now=100.0 + bcc_loader.LOADER_MEMORY)
    assert 6 not in bcc_loader._loaders  # forgotten: the pid may be reused


def test_each_loader_child_is_remembered(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bcc_loader, "_loaders", {})
    fake_loader(monkeypatch, "import sys; sys.exit(1)")
    with pytest.raises(SetupError):
        bcc_loader.compile_program("cpu.bpf.c", [])
    ((pid, exited),) = bcc_loader._loaders.items()
    assert exited is not None and bcc_loader.is_loader(pid)


def test_the_walker_announces_no_loader_child(monkeypatch: pytest.MonkeyPatch) -> None:
    from agent.config import SourceOptions
    from agent.sources.unwinding import Walker

    monkeypatch.setattr(bcc_loader, "_loaders", {5: None})
    seen: list[int] = []
    walker = Walker(SourceOptions())
    walker.announce(5, seen.append)
    walker.announce(6, seen.append)
    assert seen == [6]


# -- libbcc_bpf's errors, on a closed fd (no privileges needed) ------------------------

BAD_FD = 1 << 20  # above any fd this test process has open


def test_map_calls_on_a_bad_fd_say_what_failed() -> None:
    key, leaf = ctypes.c_uint32(0), ctypes.c_uint64(0)
    assert not bpfsys.lookup(BAD_FD, key, leaf) and not bpfsys.delete(BAD_FD, key)
    assert not bpfsys.next_key(BAD_FD, None, key) and not bpfsys.next_key(BAD_FD, key, key)
    with pytest.raises(OSError, match="could not update the map"):
        bpfsys.update(BAD_FD, key, leaf)
    keys, values = (ctypes.c_uint32 * 4)(), (ctypes.c_uint64 * 4)()
    with pytest.raises(OSError, match="LOOKUP_AND_DELETE_BATCH"):
        bpfsys.lookup_and_delete_batch(BAD_FD, keys, values, 4, 8)
    with pytest.raises(OSError, match="UPDATE_BATCH"):
        bpfsys.update_batch(BAD_FD, keys, values, 4)


def test_attachments_on_a_bad_program_fd_say_what_failed() -> None:
    with pytest.raises(OSError, match="tracepoint sched:sched_switch"):
        bpfsys.attach_tracepoint(BAD_FD, b"sched", b"sched_switch")
    with pytest.raises(OSError, match="raw tracepoint sched_switch"):
        bpfsys.attach_raw_tracepoint(BAD_FD, b"sched_switch")
    with pytest.raises(OSError, match="uprobe to /bin/true"):
        bpfsys.attach_uprobe(BAD_FD, False, b"p_test", b"/bin/true", 0, -1)
    with pytest.raises(OSError, match="perf event 1:0 on CPU 0"):
        bpfsys.attach_perf_event(
            BAD_FD, bpfsys.PERF_TYPE_SOFTWARE, 0, sample_period=0, sample_freq=99, cpu=0
        )
    with pytest.raises(OSError, match="ring buffer"):
        bpfsys.RingBuffers().add(BAD_FD, lambda *_: 0)


def test_a_missing_libbcc_bpf_is_a_setup_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bcc_loader, "check_prerequisites", lambda: None)
    monkeypatch.setattr(bpfsys, "LIBRARY", "libbcc_bpf_nonesuch.so.0")
    bpfsys.lib.cache_clear()
    try:
        with pytest.raises(
            SetupError, match=r"^cannot load libbcc_bpf_nonesuch.so.0 .*python3-bpfcc"
        ):
            bcc_loader.compile_program("cpu.bpf.c", [])
    finally:
        monkeypatch.undo()
        bpfsys.lib.cache_clear()
