"""The short-lived process that compiles and loads one BPF program with BCC.

Run as `python -m agent.kernel.loader_child FD`, FD one end of a
SOCK_SEQPACKET pair (agent/kernel/handoff.py). It reads one request
(program name, text, cflags, and the type to load each function as), has
BCC compile the text, which also loads and attaches the functions BCC
auto-attaches (TRACEPOINT_PROBE, RAW_TRACEPOINT_PROBE), loads the other
functions, and sends back every map, program and attachment as a file
descriptor with what the agent needs to use it (names, map types, sizes
and BCC's JSON type descriptions). Then it exits, without BCC's atexit
clean-up, which would disable the tracepoint perf events the agent now
shares.

The agent (agent/kernel/bcc_loader.py) thus never maps libbcc.so, LLVM and
clang, which stay resident after a compile (about 60 MiB for the import and
60 MiB per program).
"""

from __future__ import annotations

import atexit
import ctypes
import os
import socket
import sys
import tempfile
from typing import Any

from agent.errors import SetupError
from agent.kernel import handoff

# BCC's BPF.<TYPE> program types, by the names requests use
PROGRAM_TYPES = {
    "kprobe": 2,
    "tracepoint": 5,
    "perf_event": 7,
    "raw_tracepoint": 17,
    "uprobe_session": 2,  # a kprobe program that expects a uprobe session link
}
ATTACH_TYPES = {"uprobe_session": 57}  # BPF_TRACE_UPROBE_SESSION (agent/kernel/sessions.py)
DEFAULT_TYPE = "kprobe"  # what uprobes load as


def main(argv: list[str]) -> int:
    sock = socket.socket(fileno=int(argv[1]))
    request = handoff.recv_json(sock)
    try:
        reply, fds = load(request)
    except SetupError as e:
        reply, fds = {"error": str(e), "output": getattr(e, "output", "")}, []
    handoff.send_reply(sock, reply, fds)
    sock.close()
    return 0


def load(request: dict[str, Any]) -> tuple[dict[str, Any], list[int]]:
    """Compile and load; the reply and the fds it names."""
    from agent.kernel.bcc_loader import import_bcc

    bcc = import_bcc()
    name = str(request["name"])
    with tempfile.TemporaryFile() as err:
        saved = os.dup(2)
        os.dup2(err.fileno(), 2)
        try:
            program = bcc.BPF(text=request["text"], cflags=list(request["cflags"]))
            _load_functions(bcc, program, request.get("functions") or {})
            failure: Exception | None = None
        except Exception as e:  # BCC raises bare Exception on compile/load errors
            failure = e
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        err.seek(0)
        output = err.read().decode("utf-8", "replace")
    if failure is not None:
        error = SetupError(describe_failure(name, failure, output))
        error.output = output  # type: ignore[attr-defined]
        raise error
    described = describe(bcc, program, output)
    # The agent shares the tracepoint events from here on: BCC's exit handler
    # would disable them as this process ends.
    atexit.unregister(program.cleanup)
    return described


def describe_failure(name: str, failure: Exception, output: str) -> str:
    """The one-line error for a failed compile or load."""
    if "Permission denied" in str(failure) or "Operation not permitted" in output:
        return f"the kernel refused to load {name}: run as root"
    # the first diagnostic names the cause; later ones often follow from it
    first = next((ln for ln in output.splitlines() if "error:" in ln), str(failure))
    return f"cannot compile {name}: {first.strip()} (run with -vv for details)"


def _functions(lib: Any, module: Any) -> list[bytes]:
    return [lib.bpf_function_name(module, i) for i in range(lib.bpf_num_functions(module))]


def _load_functions(bcc: Any, program: Any, types: dict[str, str]) -> None:
    """Load every function BCC did not load itself, each as its named type."""
    from bcc.libbcc import lib

    for fn in _functions(lib, program.module):
        if fn not in program.funcs:
            kind = types.get(fn.decode(), DEFAULT_TYPE)
            program.load_func(fn, PROGRAM_TYPES[kind], attach_type=ATTACH_TYPES.get(kind, -1))


def describe(bcc: Any, program: Any, output: str) -> tuple[dict[str, Any], list[int]]:
    from bcc.libbcc import lib

    lib.bpf_num_tables.restype, lib.bpf_num_tables.argtypes = ctypes.c_size_t, [ctypes.c_void_p]
    lib.bpf_table_name.restype = ctypes.c_char_p
    lib.bpf_table_name.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    for f in (lib.bpf_table_key_size_id, lib.bpf_table_leaf_size_id):
        f.restype, f.argtypes = ctypes.c_size_t, [ctypes.c_void_p, ctypes.c_size_t]
    module = program.module
    fds: list[int] = []
    maps = []
    for i in range(lib.bpf_num_tables(module)):
        name = lib.bpf_table_name(module, i)
        maps.append(
            {
                "name": name.decode(),
                "type": int(lib.bpf_table_type_id(module, i)),
                "flags": int(lib.bpf_table_flags_id(module, i)),
                "max_entries": int(lib.bpf_table_max_entries_id(module, i)),
                "key_size": int(lib.bpf_table_key_size_id(module, i)),
                "leaf_size": int(lib.bpf_table_leaf_size_id(module, i)),
                "key_desc": lib.bpf_table_key_desc(module, name).decode(),
                "leaf_desc": lib.bpf_table_leaf_desc(module, name).decode(),
                "fd": len(fds),
            }
        )
        fds.append(int(lib.bpf_table_fd(module, name)))
    functions = {}
    for fn_name, fn in program.funcs.items():
        functions[fn_name.decode()] = len(fds)
        fds.append(int(fn.fd))
    attachments = []
    for kind, table in (
        ("tracepoint", program.tracepoint_fds),
        ("raw_tracepoint", program.raw_tracepoint_fds),
    ):
        for target, fd in table.items():
            attachments.append({"kind": kind, "target": target.decode(), "fd": len(fds)})
            fds.append(int(fd))
    others = ("kprobe_fds", "uprobe_fds", "kfunc_entry_fds", "kfunc_exit_fds", "lsm_fds")
    if any(getattr(program, k, None) for k in others):
        raise SetupError("the program attaches kprobes, uprobes, kfuncs or LSM hooks on load")
    reply = {"maps": maps, "functions": functions, "attachments": attachments, "output": output}
    return reply, fds


if __name__ == "__main__":
    sys.exit(main(sys.argv))
