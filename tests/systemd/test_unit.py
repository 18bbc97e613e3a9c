"""systemd/bpfprof.service under a real systemd as PID 1 (issue 14, item 14).

A Debian 12 container (tests/systemd/machine.py) with the capabilities and
system calls BPF needs, and the host's /lib/modules, /usr/src and tracefs;
packaging/install.sh installs a clean clone of this checkout into it and
enables the unit; then systemctl and journalctl drive and read it as an
administrator would. Run by `make test-systemd` only (root, minutes).

The container has its own PID namespace, as any container without
--pid=host: the agent must say so at start, and its user frames stay
unnamed there. Kernel frames do not depend on pids, so they must be named.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from agent.exporters.pprof import decode
from tests.systemd import machine as m

REPO = Path(__file__).resolve().parents[2]
PROFILES = "/var/lib/bpfprof/profiles"
BAD_CONFIG = "interval = 'often'\n"


@pytest.fixture(scope="module")
def box(tmp_path_factory: pytest.TempPathFactory) -> Iterator[m.Machine]:
    m.ensure_tools()
    root = m.ensure_root()
    m.ensure_tracefs()
    work = tmp_path_factory.mktemp("systemd")
    src, wheels = m.clone_and_wheels(REPO, work, REPO / ".venv/bin/pip")
    machine = m.Machine(root, {src: "/src", wheels: "/wheels"}, work / "nspawn.log")
    try:
        yield machine
    finally:
        machine.stop()


@pytest.fixture(scope="module")
def installed(box: m.Machine) -> m.Machine:
    """Installed and enabled with tracefs unmounted: the unit's fallback must mount it."""
    box.run("umount /sys/kernel/tracing", check=True)
    box.run("bash /src/packaging/install.sh --wheelhouse /wheels", check=True)
    wait_for(lambda: main_pid(box) > 0 and active(box), box, 60)
    return box


def wait_for(cond: Callable[[], bool], box: m.Machine, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, journal(box)
        time.sleep(0.5)


def journal(box: m.Machine) -> str:
    return box.run("journalctl -u bpfprof --no-pager -o short-monotonic").stdout


def main_pid(box: m.Machine) -> int:
    return int(box.run("systemctl show -p MainPID --value bpfprof").stdout.strip() or 0)


def active(box: m.Machine) -> bool:
    return box.run("systemctl is-active bpfprof").stdout.strip() == "active"


def profiles(box: m.Machine) -> list[Path]:
    return sorted(box.path(PROFILES).glob("*-cpu.pb.gz"))


def test_install_enables_and_starts_the_agent(installed: m.Machine) -> None:
    pid = main_pid(installed)
    time.sleep(5)  # past the programs' loading: a failure would have restarted it
    assert active(installed) and main_pid(installed) == pid, journal(installed)
    assert installed.run("systemctl is-enabled bpfprof").stdout.strip() == "enabled"
    assert "Traceback" not in journal(installed)


def test_the_tracefs_fallback_is_the_agents(installed: m.Machine) -> None:
    pid = main_pid(installed)
    seen = installed.run(f"findmnt -n -o FSTYPE -N {pid} /sys/kernel/tracing").stdout
    assert seen.strip() == "tracefs", journal(installed)


def test_profiles_name_kernel_frames(installed: m.Machine) -> None:
    # a syscall-heavy workload, so kernel stacks are plentiful
    installed.run("timeout 15 dd if=/dev/zero of=/dev/null bs=1 >/dev/null 2>&1 &")
    wait_for(lambda: len(profiles(installed)) >= 2, installed, 60)
    kernel = [
        loc
        for path in profiles(installed)
        for sample in decode(path.read_bytes()).samples
        for loc in sample.locations
        if loc.mapping is not None and loc.mapping.file == "[kernel.kallsyms]"
    ]
    assert len(kernel) > 20, journal(installed)
    named = [loc for loc in kernel if loc.frames and not loc.frames[0].function.startswith("0x")]
    assert len(named) / len(kernel) > 0.95, [loc.address for loc in kernel if loc not in named]
    assert "kallsyms" not in journal(installed)  # no zeros warning under the unit


def test_a_foreign_pid_namespace_is_named_at_start(installed: m.Machine) -> None:
    assert "PID namespace that is not the host's" in journal(installed)
    assert "--pid=host" in journal(installed)


def test_reload_of_a_bad_config_fails_and_keeps_running(installed: m.Machine) -> None:
    pid = main_pid(installed)
    good = installed.run("cat /etc/bpfprof/config.toml", check=True).stdout
    installed.path("/etc/bpfprof/config.toml").write_text(BAD_CONFIG)
    try:
        bad = installed.run("systemctl reload bpfprof")
    finally:
        installed.path("/etc/bpfprof/config.toml").write_text(good)
    assert bad.returncode != 0, bad.stdout + bad.stderr
    assert "config reload failed" in journal(installed)
    assert active(installed) and main_pid(installed) == pid
    again = installed.run("systemctl reload bpfprof")
    assert again.returncode == 0, again.stderr + journal(installed)
    assert active(installed) and main_pid(installed) == pid


def test_seccomp_refusing_bpf_is_named(installed: m.Machine) -> None:
    refused = installed.run(
        "systemd-run --wait --pipe --quiet -p SystemCallFilter=~bpf -p SystemCallErrorNumber=EPERM"
        " /opt/bpfprof/venv/bin/bpfprof record -d 1 -o /tmp/refused.pb.gz"
    )
    assert refused.returncode != 0
    lines = [ln for ln in refused.stderr.splitlines() if ln.strip()]
    assert any("a seccomp filter refuses bpf()" in ln for ln in lines), refused.stderr
    assert "run it with sudo" not in refused.stderr


def test_stop_flushes_the_last_interval(installed: m.Machine) -> None:
    before = len(profiles(installed))
    time.sleep(2)  # some samples into the new interval
    installed.run("systemctl stop bpfprof", check=True)
    assert "stopped after" in journal(installed)
    result = installed.run("systemctl show -p Result -p ExecMainStatus bpfprof").stdout
    assert "Result=success" in result and "ExecMainStatus=0" in result, result
    assert len(profiles(installed)) > before, journal(installed)
