"""The CLI's error contract, in process: one line on stderr, a non-zero exit."""

from __future__ import annotations

from pathlib import Path

import pytest

import agent.tools.report
from agent.cli import main
from tests.fake_profiles import cpu_profile


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    out, err = capsys.readouterr()
    code = exit_info.value.code
    return (code if isinstance(code, int) else 1), out, err


@pytest.fixture
def profile_file(tmp_path: Path) -> Path:
    from agent.exporters.pprof import encode

    path = tmp_path / "p.pb.gz"
    path.write_bytes(encode(cpu_profile()))
    return path


def test_print_bpf_shows_the_program_without_loading_it(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["check", "--print-bpf"], capsys)
    assert code == 0
    assert "#define MAX_ENTRIES 16384" in out and "int on_cpu_sample" in out


@pytest.mark.parametrize(
    ("profile_type", "marker"),
    [
        ("offcpu", "RAW_TRACEPOINT_PROBE(sched_switch)"),
        ("lock", "TRACEPOINT_PROBE(syscalls, sys_enter_futex)"),
        ("alloc", "int on_malloc(struct pt_regs *ctx)"),
    ],
)
def test_print_bpf_shows_any_type(
    capsys: pytest.CaptureFixture[str], profile_type: str, marker: str
) -> None:
    code, out, _ = run(["check", "--print-bpf", "-t", profile_type], capsys)
    assert code == 0 and marker in out and f"/* {profile_type}.bpf.c as" in out
    assert "on_cpu_sample" not in out


def test_a_bug_is_one_line_with_a_hint(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, profile_file: Path
) -> None:
    def broken(*args: object, **kwargs: object) -> str:
        raise RuntimeError("boom")

    monkeypatch.setattr(agent.tools.report, "format_top", broken)
    code, _, err = run(["top", str(profile_file)], capsys)
    assert code == 70
    assert err == "bpfprof: internal error: RuntimeError: boom (run with -vv for details)\n"


def test_interrupt_is_one_line(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, profile_file: Path
) -> None:
    def interrupted(*args: object, **kwargs: object) -> str:
        raise KeyboardInterrupt

    monkeypatch.setattr(agent.tools.report, "format_top", interrupted)
    code, _, err = run(["top", str(profile_file)], capsys)
    assert (code, err.strip()) == (130, "bpfprof: interrupted")  # click adds a newline after ^C


@pytest.mark.parametrize(
    ("argv", "status", "message"),
    [
        (["top", "{dir}"], 65, "is a directory, not a profile"),
        (["top", "{dir}/missing.pb.gz"], 65, "missing.pb.gz: no such file"),
        (["record", "-t", "bogus"], 2, "Invalid value for '-t'"),
        (["nosuchcommand"], 2, "No such command 'nosuchcommand'"),
        (["record", "-d", "nan"], 2, "'-d' / '--duration': 'nan' is not a finite number"),
        (["record", "-d", "inf"], 2, "'-d' / '--duration': 'inf' is not a finite number"),
        (["run", "--interval", "nan"], 2, "'--interval': 'nan' is not a finite number"),
        (["run", "-i", "-inf"], 2, "'--interval': '-inf' is not a finite number"),
    ],
)
def test_bad_input(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, argv: list[str], status: int, message: str
) -> None:
    code, _, err = run([a.format(dir=tmp_path) for a in argv], capsys)
    assert code == status
    assert err.startswith("bpfprof: error: ") and err.count("\n") == 1 and message in err


def test_help_and_version_exit_zero(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["--help"], capsys)
    assert code == 0 and "record" in out and "top" in out
    code, out, _ = run(["--version"], capsys)
    assert code == 0 and "0.1.0" in out


def test_finite_float_takes_numbers_only() -> None:
    from agent.cli import FINITE

    assert FINITE.convert("2.5", None, None) == 2.5
    assert FINITE.convert(3, None, None) == 3.0


def test_status_prints_dates_and_json_keeps_the_file(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    import json
    import re
    import time

    from agent.daemon.telemetry import write_status

    path = tmp_path / "run" / "status.json"
    started = time.time() - 3600
    status = {"state": "running", "started": started, "updated": time.time(), "interval": 10}
    write_status(path, status)
    code, out, _ = run(["status", "--status-file", str(path)], capsys)
    assert code == 0
    assert re.search(
        r"^started: +\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \S+ \(up 1h 00m 0\ds\)$", out, re.M
    )
    assert re.search(r"^updated: +\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \S+ \(\ds ago\)$", out, re.M)
    code, out, _ = run(["status", "--status-file", str(path), "--json"], capsys)
    assert code == 0 and json.loads(out) == status
