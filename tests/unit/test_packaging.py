"""The packaged config and unit: the annotated default config documents every
key and is valid with every line uncommented; the unit keeps its hardening."""

from __future__ import annotations

import re
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
        "ExecReload=/bin/kill -HUP $MAINPID",
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
    }
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
