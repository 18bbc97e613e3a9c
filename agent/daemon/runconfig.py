"""The continuous agent's configuration: one frozen RunConfig, merged in one place.

Order (later wins): built-in defaults, the TOML file (`--config`, else
/etc/bpfprof/config.toml if it exists), the OpenTelemetry environment
variables, then command-line flags. Every value is checked against
agent/daemon/configschema.py (and an endpoint's TLS files are loaded once), and an
error names the key and where it came from.
"""

from __future__ import annotations

import os
import socket
import ssl
import tomllib
import urllib.parse
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent import registry
from agent.config import BpfLimits
from agent.daemon.configschema import Override, check_key, coerce, flatten, schema
from agent.errors import ConfigError

DEFAULT_CONFIG = Path("/etc/bpfprof/config.toml")
HTTP_PATH = "/v1development/profiles"

# OpenTelemetry exporter variables → config keys. The PROFILES_ variant of a
# variable wins over the generic one, as the OTLP exporter spec says.
ENV_KEYS = {
    "ENDPOINT": "export.endpoint",
    "PROTOCOL": "export.protocol",
    "HEADERS": "export.headers",
    "COMPRESSION": "export.compression",
    "CERTIFICATE": "export.ca_file",
    "CLIENT_CERTIFICATE": "export.client_cert_file",
    "CLIENT_KEY": "export.client_key_file",
    "INSECURE": "export.insecure",
    "TIMEOUT": "export.timeout",
}


@dataclass(frozen=True)
class RetryPolicy:
    initial_backoff: float = 1.0
    max_backoff: float = 30.0
    max_elapsed: float = 60.0  # then the payload goes to the spool


@dataclass(frozen=True)
class ExportConfig:
    """Where and how profiles are sent; `endpoint` "" means local files."""

    endpoint: str = ""
    protocol: str = "grpc"
    compression: str = "gzip"
    headers: tuple[tuple[str, str], ...] = ()
    bearer_token_file: str = ""
    insecure: bool = False
    ca_file: str = ""
    client_cert_file: str = ""
    client_key_file: str = ""
    timeout: float = 10.0
    queue_size: int = 8
    retry: RetryPolicy = field(default_factory=RetryPolicy)

    @property
    def url(self) -> str:
        """The HTTP URL to POST to: the endpoint, plus the signal path when it
        has no path of its own (OTEL_EXPORTER_OTLP_ENDPOINT is a base URL)."""
        parts = urllib.parse.urlsplit(self.endpoint)
        if parts.path in ("", "/"):
            return self.endpoint.rstrip("/") + HTTP_PATH
        return self.endpoint


@dataclass(frozen=True)
class FilterConfig:
    include_executables: tuple[str, ...] = ()
    exclude_executables: tuple[str, ...] = ()
    include_pids: tuple[int, ...] = ()
    exclude_pids: tuple[int, ...] = ()
    include_containers: tuple[str, ...] = ()
    exclude_containers: tuple[str, ...] = ()
    include_cgroups: tuple[str, ...] = ()
    exclude_cgroups: tuple[str, ...] = ()
    include_command_line: str = ""
    exclude_command_line: str = ""


@dataclass(frozen=True)
class ResourceConfig:
    host_name: str = ""
    service_name: str = ""  # for processes that do not name themselves
    command_line: bool = False  # process.command_line can hold secrets: opt-in
    attributes: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class RunConfig:
    """One merged, validated configuration of `bpfprof run`."""

    interval: float = 10.0
    profiles: tuple[tuple[str, tuple[tuple[str, Any], ...]], ...] = (("cpu", (("frequency", 19),)),)
    limits: BpfLimits = field(default_factory=BpfLimits)
    python_frames: bool = True  # CPython processes' Python frames in every type
    export: ExportConfig = field(default_factory=ExportConfig)
    spool_dir: Path = Path("/var/lib/bpfprof/spool")
    spool_max_bytes: int = 256 << 20
    output_dir: Path = Path("/var/lib/bpfprof/profiles")
    output_max_files: int = 1000
    output_max_bytes: int = 512 << 20
    resource: ResourceConfig = field(default_factory=ResourceConfig)
    filter: FilterConfig = field(default_factory=FilterConfig)
    status_file: Path = Path("/run/bpfprof/status.json")
    source: str = "defaults"  # the config file used, for logs and status

    def type_settings(self, name: str) -> dict[str, Any]:
        return dict(dict(self.profiles)[name])


def env_overrides(env: Mapping[str, str]) -> list[Override]:
    out = []
    for suffix, key in ENV_KEYS.items():
        for var in (f"OTEL_EXPORTER_OTLP_{suffix}", f"OTEL_EXPORTER_OTLP_PROFILES_{suffix}"):
            value = env.get(var)
            if value is None or value == "":
                continue
            if suffix == "TIMEOUT":  # milliseconds in the environment, seconds here
                try:
                    value = str(float(value) / 1000)
                except ValueError:
                    raise ConfigError(f"{var}: expected milliseconds, not {value!r}") from None
            out.append(Override(key, value, var))
    if env.get("OTEL_SERVICE_NAME"):
        out.append(Override("resource.service_name", env["OTEL_SERVICE_NAME"], "OTEL_SERVICE_NAME"))
    if env.get("OTEL_RESOURCE_ATTRIBUTES"):
        value = env["OTEL_RESOURCE_ATTRIBUTES"]
        out.append(Override("resource.attributes", value, "OTEL_RESOURCE_ATTRIBUTES"))
    return out


def read_file(path: Path | None) -> tuple[list[Override], str]:
    """The file's overrides, and its name ("defaults" when there is none)."""
    if path is None:
        if not DEFAULT_CONFIG.exists():
            return [], "defaults"
        path = DEFAULT_CONFIG
    try:
        with open(path, "rb") as f:
            table = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None
    return list(flatten(table, str(path))), str(path)


def load(
    path: Path | None,
    env: Mapping[str, str] | None = None,
    flags: Iterable[Override] = (),
) -> RunConfig:
    """File, then environment, then flags: one RunConfig, or a ConfigError."""
    file_overrides, source = read_file(path)
    values = {k: spec.default for k, spec in schema().items()}
    origins: dict[str, str] = {}  # key -> where its value came from, for the TLS file errors
    for o in [*file_overrides, *env_overrides(os.environ if env is None else env), *flags]:
        check_key(o)
        values[o.key] = coerce(o)
        origins[o.key] = o.origin
    config = build(values, source)
    check_tls_files(config.export, origins)
    return config


def build(v: dict[str, Any], source: str) -> RunConfig:
    enabled = tuple(
        (name, tuple((s.key, v[f"profiles.{name}.{s.key}"]) for s in t.config_settings()))
        for name, t in registry.TYPES.items()
        if v[f"profiles.{name}.enabled"]
    )
    if not enabled:
        raise ConfigError(f"{source}: no profile type is enabled (enable [profiles.cpu])")
    retry = RetryPolicy(*(v[f"export.retry.{k}"] for k in RetryPolicy.__dataclass_fields__))
    if retry.max_backoff < retry.initial_backoff:
        raise ConfigError(
            f"{source}: export.retry.max_backoff ({retry.max_backoff:g}) is below "
            f"export.retry.initial_backoff ({retry.initial_backoff:g})"
        )
    export = ExportConfig(
        **{k: v[f"export.{k}"] for k in ExportConfig.__dataclass_fields__ if k not in _SPECIAL},
        headers=tuple(sorted(v["export.headers"].items())),
        retry=retry,
    )
    check_endpoint(export)
    resource = ResourceConfig(
        host_name=v["resource.host_name"] or socket.gethostname(),
        service_name=v["resource.service_name"],
        command_line=v["resource.command_line"],
        attributes=tuple(sorted(v["resource.attributes"].items())),
    )
    return RunConfig(
        interval=v["interval"],
        profiles=enabled,
        limits=BpfLimits(**{lim.field: v[lim.key] for lim in registry.LIMITS}),
        python_frames=v["python_frames"],
        export=export,
        spool_dir=Path(v["spool.dir"]),
        spool_max_bytes=v["spool.max_bytes"],
        output_dir=Path(v["output.dir"]),
        output_max_files=v["output.max_files"],
        output_max_bytes=v["output.max_bytes"],
        resource=resource,
        filter=FilterConfig(**{k: v[f"filter.{k}"] for k in FilterConfig.__dataclass_fields__}),
        status_file=Path(v["status_file"]),
        source=source,
    )


_SPECIAL = ("headers", "retry")


def check_endpoint(export: ExportConfig) -> None:
    """HTTP needs a full http(s) URL; gRPC takes host:port or a URL."""
    if bool(export.client_cert_file) != bool(export.client_key_file):
        raise ConfigError(
            "export.client_cert_file and export.client_key_file go together (mTLS needs both)"
        )
    if not export.endpoint:
        return
    parts = urllib.parse.urlsplit(export.endpoint)
    if export.protocol == "http/protobuf" and (parts.scheme not in ("http", "https")):
        raise ConfigError(
            f"export.endpoint: {export.endpoint!r} must be an http:// or https:// URL "
            "for the http/protobuf protocol"
        )
    if parts.scheme in ("http", "https") and not parts.hostname:
        raise ConfigError(f"export.endpoint: {export.endpoint!r} has no host")


def check_tls_files(export: ExportConfig, origins: Mapping[str, str]) -> None:
    """An endpoint's CA and client certificate files exist and hold PEM that
    OpenSSL loads. Checked here because the transports find out late: gRPC
    only at the first handshake (as a retryable UNAVAILABLE, for ever), and
    Python's ssl names no file in its FileNotFoundError."""
    if not export.endpoint:
        return  # nothing will read them

    def named(key: str) -> str:
        return f"{origins.get(f'export.{key}', f'export.{key}')}: {getattr(export, key)}"

    def encrypted() -> bytes:
        """OpenSSL asks for a pass phrase only for an encrypted key; in an
        agent no one is there to type it (and gRPC cannot take one)."""
        raise ConfigError(
            f"{named('client_key_file')}: the key is encrypted; give an unencrypted one"
        )

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if export.ca_file:
        _check_readable(export.ca_file, named("ca_file"))
        try:
            context.load_verify_locations(cafile=export.ca_file)
        except ssl.SSLError as e:
            raise ConfigError(
                f"{named('ca_file')}: no PEM certificate in it ({e.reason})"
            ) from None
    if export.client_cert_file:  # check_endpoint made sure there is a key too
        _check_readable(export.client_cert_file, named("client_cert_file"))
        _check_readable(export.client_key_file, named("client_key_file"))
        try:
            context.load_cert_chain(
                export.client_cert_file, export.client_key_file, password=encrypted
            )
        except ssl.SSLError as e:
            raise ConfigError(
                f"{named('client_cert_file')}: not a PEM certificate for the key "
                f"{export.client_key_file} ({e.reason})"
            ) from None


def _check_readable(path: str, where: str) -> None:
    try:
        with open(path, "rb"):
            pass
    except OSError as e:
        raise ConfigError(f"{where}: cannot read: {e.strerror}") from None


# `bpfprof run` flags → config keys (the flag name is the error's origin).
FLAG_KEYS = {
    "interval": "interval",
    "frequency": "profiles.cpu.frequency",
    "endpoint": "export.endpoint",
    "protocol": "export.protocol",
    "insecure": "export.insecure",
    "output_dir": "output.dir",
    "spool_dir": "spool.dir",
    "status_file": "status_file",
    "command_line": "resource.command_line",
}


def flag_overrides(flags: Mapping[str, Any]) -> list[Override]:
    """Flags the user gave (None means not given) as overrides."""
    out = []
    for name, value in flags.items():
        if value is None or value is False:
            continue
        key = FLAG_KEYS[name]
        out.append(Override(key, str(value) if isinstance(value, Path) else value, flag(name)))
    return out


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")
