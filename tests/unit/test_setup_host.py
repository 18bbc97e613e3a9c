"""packaging/setup-host.sh: the kernel-headers fallback, run against a fake root.

The script's functions are sourced into bash without running main(), and
pointed at a temporary tree laid out as Debian lays out its headers: the
-amd64 package (generated headers, the `build` link) and the -common package
(the `source` link).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "packaging" / "setup-host.sh"
RUNNING = "6.18.44-fc-v595"
DISTRO = "6.1.0-56-amd64"


def run_function(*args: str) -> subprocess.CompletedProcess[str]:
    """Calls one function of the script in a fresh bash that sourced it."""
    return subprocess.run(
        ["bash", "-c", 'source "$0" && "$@"', str(SCRIPT), *args],
        capture_output=True,
        text=True,
        check=False,
    )


@pytest.fixture
def fake_root(tmp_path: Path) -> Path:
    """A root holding the distro's headers, linked the way Debian's packages link them."""
    build = tmp_path / f"usr/src/linux-headers-{DISTRO}"
    source = tmp_path / "usr/src/linux-headers-6.1.0-56-common"
    (build / "include/generated").mkdir(parents=True)
    (build / "include/generated/utsrelease.h").write_text(f'#define UTS_RELEASE "{DISTRO}"\n')
    (source / "include").mkdir(parents=True)
    modules = tmp_path / "lib/modules" / DISTRO
    modules.mkdir(parents=True)
    (modules / "build").symlink_to(build)
    (modules / "source").symlink_to(source)
    return tmp_path


def test_links_build_and_source_to_the_distro_targets(fake_root: Path) -> None:
    result = run_function("link_fallback_headers", RUNNING, DISTRO, str(fake_root))

    assert result.returncode == 0, result.stderr
    ours, theirs = fake_root / "lib/modules" / RUNNING, fake_root / "lib/modules" / DISTRO
    for name in ("build", "source"):
        assert os.readlink(ours / name) == os.readlink(theirs / name)
    assert (ours / "build/include/generated/utsrelease.h").read_text().count(DISTRO) == 1


def test_relinking_replaces_a_stale_link(fake_root: Path) -> None:
    ours = fake_root / "lib/modules" / RUNNING
    ours.mkdir(parents=True)
    (ours / "build").symlink_to("/nonexistent")

    run_function("link_fallback_headers", RUNNING, DISTRO, str(fake_root))
    result = run_function("link_fallback_headers", RUNNING, DISTRO, str(fake_root))

    assert result.returncode == 0, result.stderr
    assert (ours / "build").resolve() == (fake_root / f"usr/src/linux-headers-{DISTRO}")
    assert not (ours / "build" / "build").exists()  # ln -n: not a link inside the old target


def test_relative_link_targets_stay_valid(fake_root: Path) -> None:
    theirs = fake_root / "lib/modules" / DISTRO
    (theirs / "build").unlink()
    (theirs / "build").symlink_to(f"../../../usr/src/linux-headers-{DISTRO}")

    run_function("link_fallback_headers", RUNNING, DISTRO, str(fake_root))

    assert (fake_root / "lib/modules" / RUNNING / "build/include").is_dir()


def test_fails_when_the_distro_has_no_headers_tree(tmp_path: Path) -> None:
    result = run_function("link_fallback_headers", RUNNING, DISTRO, str(tmp_path))

    assert result.returncode != 0
    assert "no headers tree" in result.stderr
    assert not (tmp_path / "lib/modules" / RUNNING).exists()


def test_newest_headers_release_skips_the_running_kernel(fake_root: Path) -> None:
    older = fake_root / "lib/modules/5.10.0-30-amd64"
    older.mkdir(parents=True)
    (older / "build").symlink_to(fake_root / f"usr/src/linux-headers-{DISTRO}")
    run_function("link_fallback_headers", RUNNING, DISTRO, str(fake_root))

    result = run_function("newest_headers_release", str(fake_root), RUNNING)

    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{DISTRO}\n"


def test_headers_release_reads_utsrelease(fake_root: Path) -> None:
    result = run_function("headers_release", str(fake_root / f"usr/src/linux-headers-{DISTRO}"))
    assert result.stdout == f"{DISTRO}\n"
    missing = run_function("headers_release", str(fake_root / "usr/src/nothing"))
    assert (missing.returncode, missing.stdout) == (0, "")


def test_sourcing_runs_nothing() -> None:
    """Sourcing must not run main(): no root check, no output."""
    result = run_function("true")
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")
