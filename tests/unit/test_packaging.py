"""The packaged config and unit: the annotated default config documents every
key and is valid with every line uncommented; the unit keeps its hardening."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from agent.daemon.configschema import schema
from agent.daemon.runconfig import load

REPO = Path(__file__).parent.parent.parent
CONFIG = REPO / "packaging" / "config.toml"
UNIT = REPO / "systemd" / "bpfprof.service"


def uncommented(text: str) -> str:
    """Every commented-out `#key = value` line and `#[table]` header, live."""
    return re.sub(r"(?m)^#(\[|\w+ = )", r"\1", text)


def test_default_config_is_the_defaults(tmp_path: Path) -> None:
    empty = tmp_path / "empty.toml"
    empty.write_text("")
    assert replace(load(CONFIG, env={}), source="") == replace(load(empty, env={}), source="")


def test_every_documented_value_is_valid_and_every_key_documented(tmp_path: Path) -> None:
    live = tmp_path / "all.toml"
    live.write_text(uncommented(CONFIG.read_text()))
    config = load(live, env={})
    assert config.export.headers == (("x-scope-orgid", "team-a"),)
    text = uncommented(CONFIG.read_text())
    table = ""
    documented = set()
    for line in text.splitlines():
        if m := re.match(r"^\[(.+)\]", line):
            table = m.group(1) + "."
        elif m := re.match(r"^(\w+) = ", line):
            documented.add(table + m.group(1))
    assert set(schema()) - documented == set()


def test_unit_is_hardened_as_far_as_bpf_allows() -> None:
    unit = UNIT.read_text()
    for directive in (
        "ProtectSystem=strict",
        "ProtectHome=read-only",
        "PrivateTmp=yes",
        "NoNewPrivileges=yes",
        "LimitMEMLOCK=infinity",
        "Restart=on-failure",
        "StateDirectory=bpfprof",
        "ExecReload=@PREFIX@/libexec/bpfprof-reload $MAINPID",
        # ProtectKernelLogs without the CAP_SYSLOG drop (issue 14)
        "SystemCallFilter=~syslog",
        "InaccessiblePaths=-/proc/kmsg",
        # what it writes names every process: root's alone (issue 11, case 5)
        "UMask=0077",
        "StateDirectoryMode=0700",
        "RuntimeDirectoryMode=0700",
    ):
        assert f"\n{directive}\n" in unit, directive
    caps = re.search(r"\nCapabilityBoundingSet=(.*)\n", unit)
    assert caps and set(caps.group(1).split()) == {
        "CAP_BPF",
        "CAP_PERFMON",
        "CAP_SYS_PTRACE",
        "CAP_SYS_ADMIN",
        "CAP_SYS_RESOURCE",
        "CAP_DAC_READ_SEARCH",
        "CAP_SYSLOG",  # kallsyms' addresses (issue 14)
    }
    assert "ProtectKernelLogs=yes" not in unit  # it drops CAP_SYSLOG: kallsyms reads as zeros
    assert "ProtectKernelModules=yes" not in unit  # it would hide the kernel headers
    assert "ExecStart=@PREFIX@/venv/bin/bpfprof run --config @CONFDIR@/config.toml" in unit


def test_fleet_manifests() -> None:
    yaml = pytest.importorskip("yaml")
    docs = list(yaml.safe_load_all((REPO / "packaging/k8s/daemonset.yaml").read_text()))
    ds = next(d for d in docs if d["kind"] == "DaemonSet")
    pod = ds["spec"]["template"]["spec"]
    assert pod["hostPID"] is True
    container = pod["containers"][0]
    assert container["command"][1:3] == ["run", "--config"]
    env = {e["name"] for e in container["env"]}
    assert "OTEL_EXPORTER_OTLP_ENDPOINT" in env
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert {"/lib/modules", "/sys/kernel/tracing", "/var/lib/bpfprof"} <= mounts
    collector = yaml.safe_load((REPO / "packaging/otel-collector.yaml").read_text())
    assert set(collector["receivers"]["otlp"]["protocols"]) == {"grpc", "http"}
    assert collector["service"]["pipelines"]["profiles"]["receivers"] == ["otlp"]
    assert "service.profilesSupport" in (REPO / "packaging/otel-collector.yaml").read_text()


def _unit_capabilities() -> list[str]:
    caps = re.search(r"\nCapabilityBoundingSet=(.*)\n", UNIT.read_text())
    assert caps
    return caps.group(1).split()


def _kallsyms_visible() -> bool:
    try:
        with open("/proc/kallsyms") as f:
            return f.readline()[:16].strip("0") != ""
    except OSError:
        return False


@pytest.mark.skipif(
    not _kallsyms_visible() or shutil.which("setpriv") is None,
    reason="needs setpriv and a kallsyms this process can see",
)
def test_kallsyms_addresses_are_visible_with_the_units_capabilities() -> None:
    """Root confined to the unit's bounding set still reads real kallsyms
    addresses (the unit without CAP_SYSLOG read zeros: every kernel frame
    unnamed), while root without CAP_SYSLOG reads zeros here."""
    caps = ",".join("+" + c.removeprefix("CAP_").lower() for c in _unit_capabilities())
    confined = ["setpriv", f"--bounding-set=-all,{caps}"]  # root execs with the set's caps
    first = subprocess.run(
        [*confined, "head", "-n1", "/proc/kallsyms"], capture_output=True, text=True, check=True
    ).stdout
    assert first[:16].strip("0"), first
    without = ["setpriv", "--bounding-set=-syslog"]
    zeroed = subprocess.run(
        [*without, "head", "-n1", "/proc/kallsyms"], capture_output=True, text=True, check=True
    ).stdout
    if Path("/proc/sys/kernel/perf_event_paranoid").read_text().strip() not in ("-1", "0", "1"):
        assert not zeroed[:16].strip("0"), zeroed  # the control: CAP_SYSLOG is what shows them


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
def test_unit_parses_without_warnings(tmp_path: Path) -> None:
    unit = tmp_path / "bpfprof.service"
    text = UNIT.read_text().replace("@PREFIX@", "/opt/bpfprof").replace("@CONFDIR@", "/etc/x")
    unit.write_text(text)
    run = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(unit)], capture_output=True, text=True
    )
    lines = [
        ln
        for ln in run.stderr.splitlines()
        if "bpfprof.service" in ln and "Command /opt/bpfprof" not in ln  # not installed here
    ]
    assert lines == [], run.stderr


RELOAD = REPO / "systemd" / "bpfprof-reload"
FAKE_AGENT = """
import signal, sys, time
from pathlib import Path
from agent.daemon import runner
verdict = runner.reload_verdict_path(Path("/nonexistent/status.json"))
def hup(*_):
    runner.write_reload_verdict(verdict, sys.argv[1])
signal.signal(signal.SIGHUP, hup)
print("ready", flush=True)
time.sleep(60)
"""


@pytest.mark.parametrize(
    "error,status", [("", 0), ("c.toml: interval: must be at least 0.2, not 0", 1)]
)
def test_reload_command_fails_when_the_agent_rejects_the_config(
    tmp_path: Path, error: str, status: int
) -> None:
    """ExecReload's script against a process that answers SIGHUP with the
    runner's own verdict writer: exit 1 and the reason when rejected."""
    env = {**os.environ, "RUNTIME_DIRECTORY": str(tmp_path / "run"), "BPFPROF_RELOAD_TIMEOUT": "10"}
    agent = subprocess.Popen(
        [sys.executable, "-c", FAKE_AGENT, error], stdout=subprocess.PIPE, text=True, env=env,
        cwd=REPO,
    )  # fmt: skip
    try:
        assert agent.stdout is not None and agent.stdout.readline() == "ready\n"
        for _ in range(2):  # a second reload must wait for its own verdict, not the first's
            run = subprocess.run(
                [str(RELOAD), str(agent.pid)], capture_output=True, text=True, env=env, timeout=20
            )
            assert run.returncode == status, run.stderr
            if error:
                assert error in run.stderr and "previous config" in run.stderr
    finally:
        agent.kill()
        agent.wait()


def test_reload_command_fails_when_the_agent_never_answers(tmp_path: Path) -> None:
    env = {**os.environ, "RUNTIME_DIRECTORY": str(tmp_path), "BPFPROF_RELOAD_TIMEOUT": "1"}
    sleeper = subprocess.Popen(["sleep", "30"])  # SIGHUP kills it: no verdict ever comes
    try:
        run = subprocess.run(
            [str(RELOAD), str(sleeper.pid)], capture_output=True, text=True, env=env
        )
        assert run.returncode == 1 and "no verdict" in run.stderr
    finally:
        sleeper.kill()
        sleeper.wait()


def test_otlp_proto_lower_bound_has_the_messages_the_exporter_uses() -> None:
    """opentelemetry-proto 1.40.0 is the first with pb.Stack, the dictionary's
    stack_table, a singular Profile.sample_type, `samples` and KeyValueAndUnit
    attributes (1.39.1 has none of them: `-o x.otlp.pb` failed with 1.38)."""
    text = (REPO / "pyproject.toml").read_text()
    assert re.search(r'"opentelemetry-proto>=1\.40"', text)
    pb = pytest.importorskip("opentelemetry.proto.profiles.v1development.profiles_pb2")
    assert hasattr(pb, "Stack") and hasattr(pb, "KeyValueAndUnit")
    assert "stack_table" in pb.ProfilesDictionary.DESCRIPTOR.fields_by_name
    assert not pb.Profile.DESCRIPTOR.fields_by_name["sample_type"].is_repeated
