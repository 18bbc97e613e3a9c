"""`bpfprof check`: each parser fed inline values, then the real host once."""

from __future__ import annotations

import os
import sys
import types
from pathlib import Path

import pytest

from agent.kernel import privileges, probe
from agent.tools import check
from agent.tools.check import CheckResult, Level

RELEASE = "6.18.44-fc-v595"
CAPS_ROOT = 0x000001FFFEFFFFFF  # CapEff of root on the CI hosts
CAPS_BPF_PERFMON = 1 << privileges.CAP_BPF | 1 << privileges.CAP_PERFMON

MOUNTS_TRACEFS = """\
sysfs /sys sysfs rw,nosuid,nodev,noexec,relatime 0 0
tracefs /sys/kernel/tracing tracefs rw,relatime 0 0
"""
MOUNTS_DEBUG_TRACING = """\
debugfs /sys/kernel/debug debugfs rw,relatime 0 0
tracefs /sys/kernel/debug/tracing tracefs rw,relatime 0 0
"""
MOUNTS_NONE = """\
proc /proc proc rw,nosuid,nodev,noexec,relatime 0 0
sysfs /sys sysfs rw,nosuid,nodev,noexec,relatime 0 0
"""


@pytest.mark.parametrize(
    ("release", "level"),
    [
        pytest.param(RELEASE, Level.PASS, id="6.18"),
        pytest.param("5.8.0-1-amd64", Level.PASS, id="oldest-with-ringbuf"),
        pytest.param("5.4.0-42-generic", Level.FAIL, id="too-old"),
        pytest.param("weird", Level.WARN, id="unparsable"),
    ],
)
def test_kernel(release: str, level: Level) -> None:
    result = check.check_kernel(release, "x86_64")
    assert result.level is level
    assert release in result.detail
    assert bool(result.fix) == (level is Level.FAIL)


@pytest.mark.parametrize(
    ("err", "level", "in_detail"),
    [
        pytest.param(0, Level.PASS, "works", id="ok"),
        pytest.param(1, Level.FAIL, "not privileged", id="eperm"),
        pytest.param(13, Level.FAIL, "not privileged", id="eacces"),
        pytest.param(38, Level.FAIL, "no bpf() syscall", id="enosys"),
        pytest.param(22, Level.FAIL, "Invalid argument", id="einval"),
        pytest.param(None, Level.WARN, "riscv64", id="unknown-arch"),
    ],
)
def test_bpf_syscall(err: int | None, level: Level, in_detail: str) -> None:
    result = check.check_bpf_syscall(err, "riscv64")
    assert result.level is level
    assert in_detail in result.detail


def test_btf() -> None:
    assert check.check_btf(True).level is Level.PASS
    missing = check.check_btf(False)
    assert missing.level is Level.WARN and missing.ok
    assert "CONFIG_DEBUG_INFO_BTF" in missing.fix


UTS_61 = '#define UTS_RELEASE "6.1.0-56-amd64"\n'
UTS_RUNNING = f'#define UTS_RELEASE "{RELEASE}"\n'


@pytest.mark.parametrize(
    ("build_dir", "utsrelease", "level", "in_detail"),
    [
        pytest.param(
            f"/usr/src/linux-headers-{RELEASE}", UTS_RUNNING, Level.PASS, "matches", id="matching"
        ),
        pytest.param(
            "/usr/src/linux-headers-6.1.0-56-amd64",
            UTS_61,
            Level.WARN,
            "is for 6.1.0-56-amd64, not",
            id="mismatched",
        ),
        pytest.param(
            "/usr/src/linux-headers-6.1.0-56-amd64",
            None,
            Level.WARN,
            "is for 6.1.0-56-amd64",
            id="mismatched-version-from-dirname",
        ),
        pytest.param(
            f"/usr/src/linux-headers-{RELEASE}", None, Level.PASS, "matches", id="dirname-matches"
        ),
        pytest.param(
            "/opt/kernel-tree", "garbage\n", Level.WARN, "unknown version", id="unknown-version"
        ),
        pytest.param(None, None, Level.FAIL, "no kernel headers", id="missing"),
    ],
)
def test_headers(
    build_dir: str | None, utsrelease: str | None, level: Level, in_detail: str
) -> None:
    result = check.check_headers(RELEASE, build_dir, utsrelease)
    assert result.level is level
    assert in_detail in result.detail
    if level is Level.FAIL:
        assert "make setup" in result.fix
        assert "linux-headers-$(uname -r)" in result.fix
    if level is Level.WARN:
        assert f"linux-headers-{RELEASE}" in result.fix


def test_find_headers_reads_a_tree(tmp_path: Path) -> None:
    """GIVEN a modules dir whose build link points at another kernel's headers."""
    tree = os.path.join(tmp_path, "usr/src/linux-headers-6.1.0-56-amd64")
    os.makedirs(os.path.join(tree, "include/generated"))
    with open(os.path.join(tree, "include/generated/utsrelease.h"), "w") as f:
        f.write(UTS_61)
    os.makedirs(os.path.join(tmp_path, "lib/modules", RELEASE))
    os.symlink(tree, os.path.join(tmp_path, "lib/modules", RELEASE, "build"))

    build_dir, text = check.find_headers(RELEASE, os.path.join(tmp_path, "lib/modules"))

    assert build_dir == os.path.realpath(tree)
    assert text == UTS_61
    assert check.find_headers("9.9.9", os.path.join(tmp_path, "lib/modules")) == (None, None)


def test_find_headers_without_utsrelease(tmp_path: Path) -> None:
    (tmp_path / RELEASE / "build" / "include").mkdir(parents=True)
    build_dir, text = check.find_headers(RELEASE, str(tmp_path))
    assert build_dir == str((tmp_path / RELEASE / "build").resolve())
    assert text is None


@pytest.mark.parametrize(
    ("error", "base_prefix", "level", "in_fix"),
    [
        pytest.param(None, "/usr", Level.PASS, "", id="importable"),
        pytest.param(
            "ModuleNotFoundError: No module named 'bcc'",
            "/root/.pyenv/versions/3.11.7",
            Level.FAIL,
            "--system-site-packages",
            id="other-python",
        ),
        pytest.param(
            "ModuleNotFoundError: No module named 'bcc'",
            "/usr",
            Level.FAIL,
            "apt-get install python3-bpfcc",
            id="debian-python-package-missing",
        ),
    ],
)
def test_bcc(error: str | None, base_prefix: str, level: Level, in_fix: str) -> None:
    result = check.check_bcc("0.26.0" if error is None else None, error, "/x/python", base_prefix)
    assert result.level is level
    assert in_fix in result.fix
    assert "/x/python" in result.detail


@pytest.mark.parametrize(
    ("mounts", "level", "in_detail"),
    [
        pytest.param(MOUNTS_TRACEFS, Level.PASS, "/sys/kernel/tracing", id="tracing"),
        pytest.param(MOUNTS_DEBUG_TRACING, Level.PASS, "/sys/kernel/debug/tracing", id="debug"),
        pytest.param(MOUNTS_NONE, Level.FAIL, "not mounted", id="not-mounted"),
        pytest.param(
            "none /sys/kernel/tracing tmpfs rw 0 0\n", Level.FAIL, "not mounted", id="wrong-fstype"
        ),
    ],
)
def test_tracefs(mounts: str, level: Level, in_detail: str) -> None:
    result = check.check_tracefs(mounts)
    assert result.level is level
    assert in_detail in result.detail
    if level is Level.FAIL:
        assert "mount -t tracefs tracefs /sys/kernel/tracing" in result.fix


def test_parse_mounts_undoes_octal_escapes() -> None:
    mounts = check.parse_mounts("tmpfs /mnt/my\\040disk tmpfs rw 0 0\nshort line\n")
    assert mounts == {"/mnt/my disk": "tmpfs"}


@pytest.mark.parametrize(
    ("value", "privileged", "level", "in_detail"),
    [
        pytest.param(-1, False, Level.WARN, "no restrictions", id="minus1-unprivileged"),
        pytest.param(0, True, Level.PASS, "raw tracepoint", id="0"),
        pytest.param(1, True, Level.PASS, "CPU-wide", id="1"),
        pytest.param(2, True, Level.PASS, "may not profile the kernel", id="2-root"),
        pytest.param(2, False, Level.WARN, "not privileged", id="2-unprivileged"),
        pytest.param(3, True, Level.PASS, "at all", id="3-debian"),
        pytest.param(4, True, Level.PASS, "at all", id="4"),
        pytest.param(-7, True, Level.PASS, "no restrictions", id="below-minus1"),
        pytest.param(None, True, Level.FAIL, "no perf events", id="missing"),
    ],
)
def test_perf_paranoid(value: int | None, privileged: bool, level: Level, in_detail: str) -> None:
    result = check.check_perf_paranoid(value, privileged)
    assert result.level is level
    assert in_detail in result.detail


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        pytest.param("Name:\tx\nCapEff:\t000001fffeffffff\n", CAPS_ROOT, id="root"),
        pytest.param("CapEff:\t0000000000000000\n", 0, id="none"),
        pytest.param("Name:\tx\n", None, id="absent"),
    ],
)
def test_parse_cap_eff(status: str, expected: int | None) -> None:
    assert privileges.parse_cap_eff(status) == expected


@pytest.mark.parametrize(
    ("cap_eff", "euid", "level", "in_text"),
    [
        pytest.param(CAPS_ROOT, 0, Level.PASS, "root, holding CAP_SYS_ADMIN", id="root"),
        pytest.param(1 << privileges.CAP_SYS_ADMIN, 0, Level.PASS, "CAP_SYS_ADMIN", id="sys-admin"),
        pytest.param(CAPS_BPF_PERFMON, 1000, Level.WARN, "BPF loads", id="user-bpf-perfmon"),
        pytest.param(1 << privileges.CAP_BPF, 1000, Level.FAIL, "sudo", id="user-bpf-only"),
        pytest.param(0, 1000, Level.FAIL, "sudo", id="not-root"),
        pytest.param(0, 0, Level.FAIL, "container", id="root-without-caps"),
    ],
)
def test_capabilities(cap_eff: int, euid: int, level: Level, in_text: str) -> None:
    result = check.check_capabilities(cap_eff, euid)
    assert result.level is level
    assert in_text in result.detail + result.fix


def test_bcc_status_reports_a_missing_module(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "bcc", None)  # makes `import bcc` raise ImportError
    version, error = probe.bcc_status()
    assert version is None
    assert error is not None and error.startswith("ModuleNotFoundError")


def test_bcc_status_rejects_the_unrelated_pypi_package(monkeypatch: pytest.MonkeyPatch) -> None:
    impostor = types.ModuleType("bcc")
    impostor.__file__ = "/venv/site-packages/bcc/__init__.py"
    monkeypatch.setitem(sys.modules, "bcc", impostor)
    version, error = probe.bcc_status()
    assert version is None
    assert error is not None and "not BCC" in error


def test_bpf_map_create_is_not_tried_on_an_unknown_architecture() -> None:
    assert probe.bpf_map_create_errno("riscv64") is None


def test_readers_turn_unreadable_files_into_empty_values(tmp_path: Path) -> None:
    garbage = tmp_path / "paranoid"
    garbage.write_text("two\n")
    assert check.read_int(str(garbage)) is None
    assert check.read_int(str(tmp_path / "missing")) is None
    assert check.read_text(str(tmp_path / "missing")) == ""
    garbage.write_text("-1\n")
    assert check.read_int(str(garbage)) == -1


def test_kprobes_is_informational_either_way() -> None:
    for available in (True, False):
        result = check.check_kprobes(available)
        assert result.level is Level.INFO and result.ok
    assert "not available" in check.check_kprobes(False).detail


def test_format_report_aligns_and_shows_fixes() -> None:
    results = [
        CheckResult("kernel", Level.PASS, "6.18"),
        CheckResult("tracefs", Level.FAIL, "not mounted", "mount it"),
        CheckResult("headers", Level.WARN, "fallback", "install them"),
    ]
    assert check.format_report(results) == (
        "PASS  kernel   6.18\n"
        "FAIL  tracefs  not mounted\n"
        "               fix: mount it\n"
        "WARN  headers  fallback\n"
        "               fix: install them\n"
        "3 checks, 1 failed, 1 warning: fix the FAIL lines first\n"
    )
    assert check.format_report(results[:1]).endswith(
        "1 check, 0 failed, 0 warnings: bpfprof can run here\n"
    )


def test_ok_is_false_only_for_fail() -> None:
    assert [CheckResult("x", level, "").ok for level in Level] == [True, True, True, False]


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root, as CI has")
def test_run_checks_on_this_host() -> None:
    """The hosts bpfprof is developed and tested on must pass these for real."""
    results = {r.name: r for r in check.run_checks()}

    assert len(results) == 9
    assert results["btf"].level is Level.PASS
    assert results["bpf syscall"].level is Level.PASS
    assert results["capabilities"].level is Level.PASS
    assert results["bcc"].level is Level.PASS, results["bcc"].detail
    assert results["headers"].ok, results["headers"].detail
    assert results["tracefs"].level is Level.PASS
    assert results["kernel"].level is Level.PASS
