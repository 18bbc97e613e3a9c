"""Compile and load BPF C sources through BCC, with clear errors.

BCC is the distro's `python3-bpfcc`; it needs kernel headers to compile and
tracefs to attach tracepoints. Each missing piece is diagnosed before the
compiler runs, so the user sees one line with the fix instead of clang's
output. The compiler's own messages are captured and shown only on failure
(or with -vv), because the fallback headers make it warn on every run.

BCC runs in a short-lived child process (agent/kernel/loader_child.py):
importing it maps libbcc.so with LLVM and clang, and each compile leaves
tens of MiB on the heap, none of which a long-running agent should keep.
The child sends the loaded maps, programs and attachments back as file
descriptors; this process uses them through agent/kernel/loaded.py.
"""

from __future__ import annotations

import logging
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

import agent
import bpf
from agent.errors import SetupError
from agent.kernel import bpfsys, handoff
from agent.kernel.loaded import LoadedProgram

log = logging.getLogger("bpfprof.bcc")

TRACEFS_DIRS = ("/sys/kernel/tracing", "/sys/kernel/debug/tracing")

# Loader children by pid: None while running, else when they exited
# (time.monotonic). Programs already attached see a later program's loader
# (whole-system mode): it is bpfprof's own work, and announcing it would make
# the agent read LLVM's symbols and unwind tables. Its pid is ignored until
# LOADER_MEMORY seconds after its exit, by when its samples are drained.
_loaders: dict[int, float | None] = {}
LOADER_MEMORY = 60.0


def import_bcc() -> ModuleType:
    try:
        import bcc  # the distro's python3-bpfcc
    except ImportError:
        raise SetupError(
            "BCC is not importable: install python3-bpfcc and run bpfprof from a virtualenv "
            "made with /usr/bin/python3 -m venv --system-site-packages (make setup does this)"
        ) from None
    module: ModuleType = bcc
    return module


def headers_dir(release: str | None = None, modules_root: str = "/lib/modules") -> Path | None:
    """The kernel headers BCC will compile against, if any."""
    build = Path(modules_root) / (release or platform.release()) / "build"
    return build if (build / "include").is_dir() else None


def tracefs_dir(candidates: tuple[str, ...] = TRACEFS_DIRS) -> Path | None:
    for d in candidates:
        if Path(d, "events").is_dir():
            return Path(d)
    return None


def check_prerequisites() -> None:
    if headers_dir() is None:
        release = platform.release()
        raise SetupError(
            f"no kernel headers for {release} in /lib/modules/{release}/build: "
            "run `make setup` (or apt-get install linux-headers-$(uname -r))"
        )
    if tracefs_dir() is None:
        raise SetupError(
            "tracefs is not mounted: run `mount -t tracefs tracefs /sys/kernel/tracing`"
        )


def render(name: str, cflags: list[str]) -> str:
    """The program as it will be compiled: its -D flags as #defines, the
    shared headers inlined."""
    defines = []
    for flag in cflags:
        macro, _, value = flag[2:].partition("=")
        defines.append(f"#define {macro} {value or 1}")
    text = bpf.expanded(name)
    return "\n".join([f"/* {name} as bpfprof compiles it */", *defines, "", text])


def compile_program(
    name: str, cflags: list[str], functions: Mapping[str, str] | None = None
) -> LoadedProgram:
    """One of the shipped programs, compiled and loaded by a loader child.

    `functions` names the program type ("perf_event", "kprobe", ...) of
    functions BCC does not attach on load; any other is loaded as "kprobe",
    the type uprobes take. Errors are the one-line SetupErrors the child
    reports (no BCC, compile error, the kernel refusing the program).
    """
    check_prerequisites()
    try:
        bpfsys.lib()  # what this process will drive the program with
    except OSError as e:
        raise SetupError(
            f"cannot load {bpfsys.LIBRARY} ({e}): install python3-bpfcc, which brings it"
        ) from None
    request = {
        "name": name,
        "text": bpf.expanded(name),
        "cflags": [f"-I{bpf.include_dir()}", *cflags],
        "functions": dict(functions or {}),
    }
    reply, fds = run_loader(request)
    output = str(reply.get("output", ""))
    if output.strip():
        log.debug("compiler output for %s:\n%s", name, output)
    if "error" in reply:
        handoff.close_all(fds)
        raise SetupError(str(reply["error"]))
    try:
        return LoadedProgram(name, reply, fds)
    except (ValueError, KeyError, OSError) as e:
        raise SetupError(f"cannot use what the loader made of {name}: {e}") from None


def is_loader(pid: int, now: float | None = None) -> bool:
    """Whether a pid is (or was a moment ago) one of our loader children."""
    if pid not in _loaders:
        return False
    exited = _loaders[pid]
    if exited is None or (now if now is not None else time.monotonic()) - exited < LOADER_MEMORY:
        return True
    del _loaders[pid]  # long gone: the pid may be someone else's now
    return False


def loader_command(fd: int) -> list[str]:
    return [sys.executable, "-m", "agent.kernel.loader_child", str(fd)]


def run_loader(request: dict[str, Any]) -> tuple[dict[str, Any], list[int]]:
    """Start the loader child, send it the request, take its reply and fds."""
    ours, theirs = handoff.socket_pair()
    env = dict(os.environ)
    root = str(Path(agent.__file__).resolve().parent.parent)  # agent importable as here
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    with ours, tempfile.TemporaryFile() as errors:
        with theirs:
            child = subprocess.Popen(
                loader_command(theirs.fileno()),
                pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=errors,
                env=env,
            )
        _loaders[child.pid] = None
        try:
            handoff.send_json(ours, request)
            return handoff.recv_reply(ours)
        except (OSError, ValueError, handoff.HandoffError) as e:
            child.kill()
            status = child.wait()
            errors.seek(0)
            lines = errors.read().decode("utf-8", "replace").strip().splitlines()
            why = lines[-1] if lines else f"{e} (exit status {status})"
            raise SetupError(f"the BPF loader failed for {request['name']}: {why}") from None
        finally:
            child.wait()
            _loaders[child.pid] = time.monotonic()
