"""`bpfprof run` configuration: file < environment < flags, and a named error
for every bad key or value."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.config import parse_key_values
from agent.daemon.configschema import Override
from agent.daemon.runconfig import ExportConfig, flag_overrides, load
from agent.errors import ConfigError
from agent.registry import TYPES


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "config.toml"
    p.write_text(text)
    return p


def test_defaults_without_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("agent.daemon.runconfig.DEFAULT_CONFIG", tmp_path / "absent.toml")
    c = load(None, env={})
    assert c.interval == 10.0
    assert c.type_settings("cpu") == {"frequency": 19}
    assert c.export.endpoint == ""
    assert c.output_dir == Path("/var/lib/bpfprof/profiles")
    assert c.source == "defaults"


def test_the_default_file_is_read_when_present(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("agent.daemon.runconfig.DEFAULT_CONFIG", write(tmp_path, "interval = 3\n"))
    assert load(None, env={}).interval == 3.0


FILE = """
interval = 5
[profiles.cpu]
frequency = 49
[export]
endpoint = "http://file:4318"
protocol = "http/protobuf"
headers = { "x-team" = "file" }
[spool]
max_bytes = "64MiB"
[filter]
exclude_executables = ["sshd"]
"""


def test_environment_overrides_file_and_flags_override_both(tmp_path: Path) -> None:
    path = write(tmp_path, FILE)
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://env:4318",
        "OTEL_EXPORTER_OTLP_PROFILES_ENDPOINT": "http://env-profiles:4318/custom",
        "OTEL_EXPORTER_OTLP_HEADERS": "x-team=env,authorization=Basic%20abc",
        "OTEL_EXPORTER_OTLP_TIMEOUT": "2500",
        "OTEL_EXPORTER_OTLP_COMPRESSION": "none",
        "OTEL_SERVICE_NAME": "fallback",
        "OTEL_RESOURCE_ATTRIBUTES": "deployment.environment=prod",
    }
    c = load(path, env=env)
    assert c.interval == 5.0 and c.type_settings("cpu") == {"frequency": 49}
    assert c.export.endpoint == "http://env-profiles:4318/custom"  # PROFILES_ wins
    assert c.export.url == "http://env-profiles:4318/custom"
    assert dict(c.export.headers) == {"x-team": "env", "authorization": "Basic abc"}
    assert c.export.timeout == 2.5 and c.export.compression == "none"
    assert c.resource.service_name == "fallback"
    assert c.resource.attributes == (("deployment.environment", "prod"),)
    assert c.spool_max_bytes == 64 << 20
    assert c.filter.exclude_executables == ("sshd",)
    flags = flag_overrides(
        {"interval": 1.0, "endpoint": "http://flag:4318", "frequency": 99, "insecure": None}
    )
    c = load(path, env=env, flags=flags)
    assert (c.interval, c.export.endpoint, c.type_settings("cpu")["frequency"]) == (
        1.0,
        "http://flag:4318",
        99,
    )
    assert c.export.url == "http://flag:4318/v1development/profiles"


@pytest.mark.parametrize(
    ("text", "env", "message"),
    [
        ("interval = 0", {}, r"config.toml: interval: must be at least 0.2"),
        ("interval = 'soon'", {}, r"interval: expected a number"),
        ("intervall = 3", {}, r"unknown key 'intervall' \(did you mean 'interval'\?\)"),
        ("[export]\nprotocol = 'udp'", {}, r"export.protocol: must be one of grpc, http/protobuf"),
        ("[export]\ninsecure = 'yes'", {}, r"export.insecure: expected true or false"),
        ("[export]\nheaders = 3", {}, r"export.headers: expected a table of strings"),
        ("[export]\nqueue_size = 0", {}, r"export.queue_size: must be at least 1"),
        ("[spool]\nmax_bytes = 'lots'", {}, r"spool.max_bytes: expected a size"),
        ("[filter]\ninclude_pids = [0]", {}, r"filter.include_pids: must be at least 1"),
        ("[filter]\ninclude_pids = 'x'", {}, r"filter.include_pids: expected an integer"),
        ("[filter]\nexclude_command_line = '('", {}, r"not a valid regular expression"),
        ("[profiles.cpu]\nfrequency = 0", {}, r"profiles.cpu.frequency: must be at least 1"),
        ("[profiles.cpu]\nenabled = false", {}, r"no profile type is enabled"),
        ("[profiles.gpu]\nenabled = true", {}, r"unknown profile type 'gpu'"),
        ("[profiles.cpu]\nfreq = 9", {}, r"unknown key 'profiles.cpu.freq'"),
        ("interval = [", {}, r"not valid TOML"),
        (
            "[export.retry]\ninitial_backoff = 5\nmax_backoff = 1",
            {},
            r"max_backoff \(1\) is below",
        ),
        ("", {"OTEL_EXPORTER_OTLP_PROTOCOL": "json"}, r"^OTEL_EXPORTER_OTLP_PROTOCOL: must be"),
        ("", {"OTEL_EXPORTER_OTLP_TIMEOUT": "soon"}, r"OTEL_EXPORTER_OTLP_TIMEOUT: expected ms"),
        ("", {"OTEL_EXPORTER_OTLP_INSECURE": "maybe"}, r"OTEL_EXPORTER_OTLP_INSECURE: expected"),
        ("", {"OTEL_EXPORTER_OTLP_HEADERS": "novalue"}, r"OTEL_EXPORTER_OTLP_HEADERS: expected"),
        (
            "[export]\nendpoint = 'collector:4318'\nprotocol = 'http/protobuf'",
            {},
            r"must be an http:// or https:// URL",
        ),
        ("[export]\nendpoint = 'http://:4317'", {}, r"has no host"),
        ("[export]\nclient_cert_file = '/c.pem'", {}, r"go together"),
    ],
)
def test_every_bad_value_is_a_named_error(
    tmp_path: Path, text: str, env: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError, match=message.replace("ms", "milliseconds")):
        load(write(tmp_path, text), env=env)


def test_a_bad_flag_names_the_flag(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^--interval: must be at most 3600"):
        load(write(tmp_path, ""), env={}, flags=flag_overrides({"interval": 1e6}))
    with pytest.raises(ConfigError, match=r"^--protocol: must be one of"):
        load(write(tmp_path, ""), env={}, flags=[Override("export.protocol", "x", "--protocol")])


def test_a_missing_explicit_config_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such config file"):
        load(tmp_path / "nope.toml", env={})


def test_other_types_are_opt_in_with_their_settings(tmp_path: Path) -> None:
    c = load(write(tmp_path, "[profiles.lock]\nenabled = false\n"), env={})
    assert [name for name, _ in c.profiles] == ["cpu"]
    text = (
        "[profiles.cpu]\nenabled = false\n[profiles.offcpu]\nenabled = true\nmin_block_us = 5\n"
        "[profiles.alloc]\nenabled = true\nrate = '1MiB'\ninuse = false\n"
        "[profiles.lock]\nenabled = true\n"
    )
    c = load(write(tmp_path, text), env={})
    assert [name for name, _ in c.profiles] == ["offcpu", "lock", "alloc"]
    assert c.type_settings("offcpu") == {"min_block_us": 5, "sampling": 16}
    assert c.type_settings("lock") == {"min_wait_us": 10, "sampling": 16}
    lock = TYPES["lock"].options({"sampling": 1}, c.limits)
    assert lock.wait_sampling == 1  # every wait takes stacks
    assert c.type_settings("alloc") == {"rate": 1 << 20, "inuse": False}
    alloc = TYPES["alloc"].options(c.type_settings("alloc"), c.limits)
    assert (alloc.alloc_rate, alloc.alloc_inuse, alloc.all_processes) == (1 << 20, False, True)
    assert TYPES["alloc"].make_spec(c.type_settings("alloc"), c.limits).period == 1 << 20
    with pytest.raises(ConfigError, match=r"profiles.alloc.rate: expected a size"):
        load(write(tmp_path, "[profiles.alloc]\nrate = 'x'\n"), env={})


def test_python_frames_are_on_unless_the_config_turns_them_off(tmp_path: Path) -> None:
    from agent.daemon.runner import make_sources

    assert load(write(tmp_path, ""), env={}).python_frames
    c = load(write(tmp_path, "python_frames = false\n"), env={})
    assert not c.python_frames
    assert not TYPES["cpu"].options({}, c.limits, c.python_frames).python
    source, _ = make_sources(c)["cpu"]
    assert not source._options.python  # type: ignore[attr-defined]
    with pytest.raises(ConfigError, match="python_frames"):
        load(write(tmp_path, "python_frames = 'yes'\n"), env={})


@pytest.mark.parametrize(
    ("endpoint", "url"),
    [
        ("http://c:4318", "http://c:4318/v1development/profiles"),
        ("http://c:4318/", "http://c:4318/v1development/profiles"),
        ("https://c/otlp/v1development/profiles", "https://c/otlp/v1development/profiles"),
    ],
)
def test_http_url_appends_the_signal_path_to_a_base(endpoint: str, url: str) -> None:
    assert ExportConfig(endpoint=endpoint).url == url


def test_key_values_are_percent_decoded() -> None:
    assert parse_key_values("a=1, b = x%2Cy ,") == {"a": "1", "b": "x,y"}
    with pytest.raises(ValueError, match="key=value"):
        parse_key_values("=x")


def test_sizes_accept_units(tmp_path: Path) -> None:
    for text, size in (("1024", 1024), ("'2KiB'", 2048), ("'3 MB'", 3 << 20), ("'1G'", 1 << 30)):
        c = load(write(tmp_path, f"[output]\nmax_bytes = {text}\n"), env={})
        assert c.output_max_bytes == size


@pytest.mark.parametrize(
    ("toml", "origin"),
    [
        ("interval = nan", "interval"),
        ("interval = inf", "interval"),
        ("[export.retry]\nmax_elapsed = -nan", "export.retry.max_elapsed"),
        ("[profiles.cpu]\nfrequency = nan", "profiles.cpu.frequency"),
    ],
)
def test_non_finite_numbers_in_the_file_are_refused(tmp_path: Path, toml: str, origin: str) -> None:
    # NaN passes every range check (nan < low is False): an agent that
    # would never report, if it were let through
    with pytest.raises(ConfigError, match=f"config.toml: {origin}: expected a"):
        load(write(tmp_path, toml + "\n"), env={})


def test_non_finite_numbers_from_env_and_flags_are_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "")
    with pytest.raises(ConfigError, match="OTEL_EXPORTER_OTLP_TIMEOUT: expected a finite number"):
        load(path, env={"OTEL_EXPORTER_OTLP_TIMEOUT": "nan"})
    with pytest.raises(ConfigError, match="--interval: expected a finite number"):
        load(path, env={}, flags=flag_overrides({"interval": float("nan")}))


def test_every_map_size_record_has_a_flag_for_the_agent_has_a_key(tmp_path: Path) -> None:
    """limits.*: the agent's log names limits.unwind_rows when binaries no
    longer fit; it was record's flag only."""
    text = "[limits]\nmax_entries = 4096\nstack_storage_size = 2048\nunwind_rows = 4194304\n"
    c = load(write(tmp_path, text), env={})
    limits = c.limits
    assert (limits.max_entries, limits.stack_entries, limits.unwind_rows) == (4096, 2048, 1 << 22)
    with pytest.raises(ConfigError, match="unwind_rows"):
        load(write(tmp_path, "[limits]\nunwind_rows = 10\n"), env={})
