"""Process facts from /proc (parsers and a fake /proc tree), resource
attributes, and the include/exclude filters."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from agent.daemon.filters import ProcessFilter
from agent.daemon.runconfig import FilterConfig
from agent.pipeline.procinfo import (
    ProcessFacts,
    ProcessTable,
    otel_identity,
    parse_cgroup_path,
    parse_cmdline,
    parse_environ,
    process_resource,
    read_facts,
)

CID = "4f" * 32


def test_environ_and_otel_identity() -> None:
    env = parse_environ(b"PATH=/bin\0OTEL_SERVICE_NAME=checkout\0BAD\0=x\0EMPTY=\0")
    assert env == {"PATH": "/bin", "OTEL_SERVICE_NAME": "checkout", "EMPTY": ""}
    assert otel_identity(env) == ("checkout", ())
    attrs = {"OTEL_RESOURCE_ATTRIBUTES": "service.name=cart,team=shop%20a,deployment.environment=p"}
    assert otel_identity(attrs) == ("cart", (("deployment.environment", "p"), ("team", "shop a")))
    both = {**attrs, "OTEL_SERVICE_NAME": "wins"}
    assert otel_identity(both)[0] == "wins"
    assert otel_identity({"OTEL_RESOURCE_ATTRIBUTES": "garbage"}) == ("", ())


@pytest.mark.parametrize(
    ("text", "path"),
    [
        ("0::/system.slice/nginx.service\n", "/system.slice/nginx.service"),
        ("12:cpu:/docker/abc\n0::/kubepods/pod1/x\n", "/kubepods/pod1/x"),
        ("12:cpu:/docker/abc\n", "/docker/abc"),
        ("", ""),
    ],
)
def test_cgroup_path(text: str, path: str) -> None:
    assert parse_cgroup_path(text) == path


def test_cmdline() -> None:
    assert parse_cmdline(b"python3\0-m\0http.server\0") == "python3 -m http.server"
    assert parse_cmdline(b"") == ""


def fake_proc(root: Path, pid: int, exe: str, environ: bytes, cgroup: str) -> None:
    d = root / str(pid)
    d.mkdir(parents=True)
    os.symlink(exe, d / "exe")
    (d / "environ").write_bytes(environ)
    (d / "cgroup").write_text(cgroup)
    (d / "cmdline").write_bytes(exe.encode() + b"\0--port\0" + b"8080\0")
    (d / "comm").write_text(os.path.basename(exe)[:15] + "\n")


def test_read_facts_from_a_proc_tree(tmp_path: Path) -> None:
    fake_proc(
        tmp_path,
        42,
        "/srv/bin/api (deleted)",
        b"OTEL_SERVICE_NAME=api\0",
        f"0::/system.slice/docker-{CID}.scope\n",
    )
    f = read_facts(42, str(tmp_path))
    assert f == ProcessFacts(
        pid=42,
        exe_path="/srv/bin/api",
        exe_name="api",
        command_line="/srv/bin/api (deleted) --port 8080",
        cgroup=f"/system.slice/docker-{CID}.scope",
        container_id=CID,
        service_name="api",
    )
    gone = read_facts(99, str(tmp_path))
    assert gone == ProcessFacts(pid=99)


def test_process_table_prunes_only_gone_processes(tmp_path: Path) -> None:
    fake_proc(tmp_path, 1, "/bin/a", b"", "")
    fake_proc(tmp_path, 2, "/bin/b", b"", "")
    table = ProcessTable(str(tmp_path))
    table.observe(1)
    table.observe(2)
    assert table.get(3).pid == 3 and len(table) == 3  # read (empty) on first use
    (tmp_path / "2" / "exe").unlink()
    for name in os.listdir(tmp_path / "2"):
        (tmp_path / "2" / name).unlink()
    (tmp_path / "2").rmdir()
    assert sorted(table.prune(keep={3})) == [2]
    assert len(table) == 2


def test_resource_attributes_precedence() -> None:
    facts = ProcessFacts(
        pid=7,
        exe_path="/usr/bin/redis-server",
        exe_name="redis-server",
        command_line="redis-server --requirepass s3cret",
        container_id=CID,
        attributes=(("team", "cache"), ("host.name", "spoofed")),
    )
    r = dict(process_resource(facts, "node1", (("team", "agent"), ("env", "prod"))))
    assert r == {
        "env": "prod",
        "team": "cache",  # the process's own beats the agent's
        "host.name": "node1",  # measured beats declared
        "service.name": "redis-server",
        "process.pid": 7,
        "process.executable.name": "redis-server",
        "process.executable.path": "/usr/bin/redis-server",
        "container.id": CID,
    }
    r = dict(process_resource(facts, "n", default_service="fleet", command_line=True))
    assert r["service.name"] == "fleet"
    assert r["process.command_line"] == "redis-server --requirepass s3cret"
    named = ProcessFacts(pid=7, exe_name="java", service_name="orders")
    assert dict(process_resource(named, "n", default_service="fleet"))["service.name"] == "orders"


NGINX = ProcessFacts(1, "/usr/sbin/nginx", "nginx", "nginx: worker", "/system.slice/nginx.service")
PY = ProcessFacts(2, "/usr/bin/python3", "python3", "python3 -m app.server", "/user.slice/u")
BOX = ProcessFacts(3, "/app/svc", "svc", "/app/svc", "/docker/x", container_id=CID)


@pytest.mark.parametrize(
    ("config", "wanted"),
    [
        (FilterConfig(), {1, 2, 3}),
        (FilterConfig(include_executables=("nginx", "svc")), {1, 3}),
        (FilterConfig(exclude_executables=("nginx",)), {2, 3}),
        (FilterConfig(include_pids=(2,)), {2}),
        (FilterConfig(exclude_pids=(2, 3)), {1}),
        (FilterConfig(include_containers=(CID[:12],)), {3}),
        (FilterConfig(exclude_containers=(CID.upper()[:12],)), {1, 2}),
        (FilterConfig(include_cgroups=("/system.slice/",)), {1}),
        (FilterConfig(include_cgroups=("/system.slice/nginx",)), set()),  # a prefix of parts
        (FilterConfig(include_command_line=r"-m app\."), {2}),
        (FilterConfig(exclude_command_line=r"^nginx"), {2, 3}),
        (FilterConfig(include_executables=("python3", "nginx"), include_pids=(2,)), {2}),
        (FilterConfig(include_executables=("nginx",), exclude_pids=(1,)), set()),
    ],
)
def test_filters(config: FilterConfig, wanted: set[int]) -> None:
    f = ProcessFilter(config)
    assert {p.pid for p in (NGINX, PY, BOX) if f.wants(p)} == wanted


def test_filter_decisions_are_cached_until_forgotten() -> None:
    f = ProcessFilter(FilterConfig(include_executables=("nginx",)))
    assert f.wants(NGINX)
    renamed = ProcessFacts(1, exe_name="other")
    assert f.wants(renamed)  # same pid: the decision made at first sight stands
    f.forget(1)
    assert not f.wants(renamed)
