"""The installer and the systemd unit: install into a staging root, verify
the unit with systemd-analyze, run the agent the way ExecStart does, and
uninstall."""

from __future__ import annotations

import shlex
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

REPO = Path(__file__).parent.parent.parent
PREFIX, CONFDIR = "/opt/bpfprof", "/etc/bpfprof"

pytestmark = [pytest.mark.e2e]


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A staging root with the agent installed (a virtualenv, pip from the tree)."""
    root = tmp_path_factory.mktemp("root")
    subprocess.run(
        ["bash", str(REPO / "packaging" / "install.sh"), "--destdir", str(root)],
        check=True,
        capture_output=True,
        text=True,
        timeout=900,
    )
    return root


def staged_unit(root: Path, out: Path) -> Path:
    """The installed unit with its paths pointed into the staging root."""
    text = (root / "etc/systemd/system/bpfprof.service").read_text()
    text = text.replace(PREFIX, f"{root}{PREFIX}").replace(CONFDIR, f"{root}{CONFDIR}")
    path = out / "bpfprof.service"
    path.write_text(text)
    return path


def test_layout(root: Path) -> None:
    assert (root / "etc/bpfprof/config.toml").read_text() == (
        REPO / "packaging/config.toml"
    ).read_text()
    unit = (root / "etc/systemd/system/bpfprof.service").read_text()
    assert f"ExecStart={PREFIX}/venv/bin/bpfprof run --config {CONFDIR}/config.toml" in unit
    assert "@PREFIX@" not in unit and "@CONFDIR@" not in unit
    assert (root / "opt/bpfprof/share/doc/agent.md").is_file()
    assert f"ExecReload={PREFIX}/libexec/bpfprof-reload $MAINPID" in unit
    assert (root / "opt/bpfprof/libexec/bpfprof-reload").stat().st_mode & 0o111
    assert (root / "var/lib/bpfprof").is_dir()
    cfg = (root / "opt/bpfprof/venv/pyvenv.cfg").read_text()
    assert "include-system-site-packages = true" in cfg  # so it imports Debian's BCC


def test_systemd_analyze_verifies_the_unit(root: Path, tmp_path: Path) -> None:
    if shutil.which("systemd-analyze") is None:
        pytest.fail("systemd-analyze is missing: packaging/setup-host.sh --test installs it")
    proc = subprocess.run(
        ["systemd-analyze", "verify", str(staged_unit(root, tmp_path))],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == "", proc.stderr


@pytest.mark.bpf
def test_the_agent_runs_as_execstart_starts_it(root: Path, tmp_path: Path) -> None:
    unit = staged_unit(root, tmp_path).read_text()
    exec_start = next(line for line in unit.splitlines() if line.startswith("ExecStart="))
    argv = shlex.split(exec_start.removeprefix("ExecStart="))
    out = tmp_path / "profiles"
    argv += ["-i", "1", "--output-dir", str(out), "--status-file", str(tmp_path / "st.json")]
    with open(tmp_path / "log", "w") as log:
        agent = subprocess.Popen(argv, stderr=log)
    try:
        deadline = time.monotonic() + 90
        while not list(out.glob("*.pb.gz")) and time.monotonic() < deadline:
            assert agent.poll() is None, (tmp_path / "log").read_text()
            time.sleep(0.2)
        agent.send_signal(signal.SIGTERM)
        assert agent.wait(timeout=30) == 0, (tmp_path / "log").read_text()
    finally:
        if agent.poll() is None:
            agent.kill()
    assert list(out.glob("*-cpu.pb.gz"))
    assert f"{root}{CONFDIR}/config.toml" in (tmp_path / "st.json").read_text()


def test_uninstall_keeps_config_unless_purged(root: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(root, copy, symlinks=True)
    script = str(REPO / "packaging" / "uninstall.sh")
    subprocess.run(["bash", script, "--destdir", str(copy)], check=True, capture_output=True)
    assert not (copy / "opt/bpfprof").exists()
    assert not (copy / "etc/systemd/system/bpfprof.service").exists()
    assert (copy / "etc/bpfprof/config.toml").exists()
    subprocess.run(
        ["bash", script, "--destdir", str(copy), "--purge"], check=True, capture_output=True
    )
    assert not (copy / "etc/bpfprof").exists() and not (copy / "var/lib/bpfprof").exists()


def test_debian_package_installs_offline(tmp_path: Path) -> None:
    """build-deb.sh: the layout, the control file, and a postinst that can
    build the virtualenv from the bundled wheels alone (no index)."""
    subprocess.run(
        ["bash", str(REPO / "packaging" / "build-deb.sh"), "--out", str(tmp_path)],
        check=True,
        capture_output=True,
        timeout=900,
    )
    [deb] = tmp_path.glob("bpfprof_*.deb")
    info = subprocess.run(["dpkg-deb", "-I", str(deb)], capture_output=True, text=True).stdout
    # cp311-only wheels (grpcio, zstandard): Debian 12's Python alone (issue 14, item 15)
    assert "Depends: python3 (>= 3.11), python3 (<< 3.12), python3-venv, python3-bpfcc" in info
    tree = tmp_path / "x"
    subprocess.run(["dpkg-deb", "-R", str(deb), str(tree)], check=True)
    wheels = [w.name for w in (tree / "opt/bpfprof/wheels").glob("*.whl")]
    assert not [w for w in wheels if "-cp3" in w and "-cp311-" not in w and "abi3" not in w]
    doc = tree / "usr/share/doc/bpfprof"
    assert "License: Apache-2.0" in (doc / "copyright").read_text()
    assert (doc / "changelog.gz").read_bytes()[:2] == b"\x1f\x8b"
    postinst = (tree / "DEBIAN/postinst").read_text()
    assert "systemctl enable" not in postinst and "enable --now" not in postinst
    assert "deb-systemd-helper --quiet was-enabled" in postinst  # an admin's disable stays
    assert "deb-systemd-invoke try-restart" in postinst  # upgrades restart a running agent only
    assert "disable" not in (tree / "DEBIAN/prerm").read_text()  # an upgrade keeps the state
    if shutil.which("lintian"):
        run = subprocess.run(["lintian", str(deb)], capture_output=True, text=True)
        tags = [ln for ln in run.stdout.splitlines() if ln[:2] in ("E:", "W:")]
        assert tags == [], run.stdout
    assert (tree / "lib/systemd/system/bpfprof.service").is_file()
    assert (tree / "DEBIAN/conffiles").read_text().strip() == "/etc/bpfprof/config.toml"
    venv = tmp_path / "venv"
    subprocess.run(
        ["/usr/bin/python3", "-m", "venv", "--system-site-packages", str(venv)], check=True
    )
    subprocess.run(
        [
            str(venv / "bin/pip"),
            "install",
            "--quiet",
            "--no-index",
            "--find-links",
            str(tree / "opt/bpfprof/wheels"),
            "bpfprof",
        ],
        check=True,
    )
    subprocess.run([str(venv / "bin/bpfprof"), "--version"], check=True, capture_output=True)
