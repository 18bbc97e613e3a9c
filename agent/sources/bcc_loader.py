"""Compile and load BPF C sources through BCC, with clear errors.

BCC is the distro's `python3-bpfcc`; it needs kernel headers to compile and
tracefs to attach tracepoints. Each missing piece is diagnosed before the
compiler runs, so the user sees one line with the fix instead of clang's
output. The compiler's own messages are captured and shown only on failure
(or with -vv), because the fallback headers make it warn on every run.
"""

from __future__ import annotations

import logging
import os
import platform
import tempfile
from pathlib import Path
from types import ModuleType
from typing import Any

import bpf
from agent.errors import SetupError

log = logging.getLogger("bpfprof.bcc")

TRACEFS_DIRS = ("/sys/kernel/tracing", "/sys/kernel/debug/tracing")


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


def compile_program(name: str, cflags: list[str]) -> Any:
    """A loaded BCC `BPF` object for one of the shipped programs."""
    bcc = import_bcc()
    check_prerequisites()
    text = bpf.expanded(name)
    flags = [f"-I{bpf.include_dir()}", *cflags]
    with tempfile.TemporaryFile() as err:
        saved = os.dup(2)
        os.dup2(err.fileno(), 2)
        try:
            program = bcc.BPF(text=text, cflags=flags)
            failure: Exception | None = None
        except Exception as e:  # BCC raises bare Exception on compile/load errors
            program, failure = None, e
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        err.seek(0)
        output = err.read().decode("utf-8", "replace")
    if output.strip():
        log.debug("compiler output for %s:\n%s", name, output)
    if failure is not None:
        if "Permission denied" in str(failure) or "Operation not permitted" in output:
            raise SetupError(f"the kernel refused to load {name}: run as root") from None
        # the first diagnostic names the cause; later ones often follow from it
        first = next((ln for ln in output.splitlines() if "error:" in ln), str(failure))
        raise SetupError(f"cannot compile {name}: {first.strip()} (run with -vv for details)")
    return program
