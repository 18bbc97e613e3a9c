"""Diagnosing what BCC needs before the compiler runs, and compile failures."""

from __future__ import annotations

from pathlib import Path

import pytest

import bpf
from agent.errors import SetupError
from agent.kernel import bcc_loader


def test_headers_dir_needs_an_include_tree(tmp_path: Path) -> None:
    assert bcc_loader.headers_dir("6.18.0", str(tmp_path)) is None
    (tmp_path / "6.18.0" / "build" / "include").mkdir(parents=True)
    assert bcc_loader.headers_dir("6.18.0", str(tmp_path)) == tmp_path / "6.18.0" / "build"


def test_tracefs_dir_takes_the_first_mounted(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    (b / "events").mkdir(parents=True)
    assert bcc_loader.tracefs_dir((str(a), str(b))) == b
    assert bcc_loader.tracefs_dir((str(a),)) is None


def test_missing_headers_say_how_to_get_them(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bcc_loader, "headers_dir", lambda: None)
    with pytest.raises(SetupError, match=r"no kernel headers .* run `make setup`"):
        bcc_loader.check_prerequisites()


def test_missing_tracefs_says_how_to_mount_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(bcc_loader, "headers_dir", lambda: tmp_path)
    monkeypatch.setattr(bcc_loader, "tracefs_dir", lambda: None)
    with pytest.raises(SetupError, match="mount -t tracefs"):
        bcc_loader.check_prerequisites()


@pytest.mark.bpf
def test_a_compile_error_is_one_line_naming_the_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bpf, "source", lambda name: "int broken(void *ctx) { return nope; }")
    with pytest.raises(SetupError) as info:
        bcc_loader.compile_program("broken.bpf.c", [])
    message = str(info.value)
    assert message.startswith("cannot compile broken.bpf.c:") and "nope" in message
    assert "\n" not in message
