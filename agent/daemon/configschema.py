"""The keys `bpfprof run` accepts, their types and limits, and their sources.

One table (`SCHEMA`, completed by `schema()` with the profile types' keys
from agent/registry.py) names every key by its dotted path (`export.protocol`);
the TOML file, the OpenTelemetry environment variables and the command-line
flags all become `Override`s on those paths, each remembering where it came
from, so an error can say which of the three places to fix. `agent/daemon/runconfig.py`
merges them in order and builds the frozen RunConfig.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from agent import registry
from agent.config import parse_key_values
from agent.errors import ConfigError


@dataclass(frozen=True)
class Key:
    """One setting: its kind ("int", "float", "bool", "str", "choice", "size",
    "regex", "strlist", "intlist", "strmap"), default and limits."""

    kind: str
    default: Any
    low: float | None = None
    high: float | None = None
    choices: tuple[str, ...] = ()


@dataclass(frozen=True)
class Override:
    """A value for a key, and where it came from (for error messages)."""

    key: str
    value: Any
    origin: str


MiB = 1 << 20
SCHEMA: dict[str, Key] = {
    "interval": Key("float", 10.0, 0.2, 3600),
    "status_file": Key("str", "/run/bpfprof/status.json"),
    "python_frames": Key("bool", True),
    **{lim.key: Key("int", lim.default, lim.low, lim.high) for lim in registry.LIMITS},
    "export.endpoint": Key("str", ""),
    "export.protocol": Key("choice", "grpc", choices=("grpc", "http/protobuf")),
    "export.compression": Key("choice", "gzip", choices=("gzip", "none")),
    "export.headers": Key("strmap", {}),
    "export.bearer_token_file": Key("str", ""),
    "export.insecure": Key("bool", False),
    "export.ca_file": Key("str", ""),
    "export.client_cert_file": Key("str", ""),
    "export.client_key_file": Key("str", ""),
    "export.timeout": Key("float", 10.0, 0.1, 600),
    "export.queue_size": Key("int", 8, 1, 1024),
    "export.retry.initial_backoff": Key("float", 1.0, 0.01, 600),
    "export.retry.max_backoff": Key("float", 30.0, 0.01, 3600),
    "export.retry.max_elapsed": Key("float", 60.0, 0, 86400),
    "spool.dir": Key("str", "/var/lib/bpfprof/spool"),
    "spool.max_bytes": Key("size", 256 * MiB, 0, 1 << 40),
    "output.dir": Key("str", "/var/lib/bpfprof/profiles"),
    "output.max_files": Key("int", 1000, 1, 10_000_000),
    "output.max_bytes": Key("size", 512 * MiB, 1024, 1 << 40),
    "resource.host_name": Key("str", ""),
    "resource.service_name": Key("str", ""),
    "resource.command_line": Key("bool", False),
    "resource.attributes": Key("strmap", {}),
}
for _side in ("include", "exclude"):
    SCHEMA[f"filter.{_side}_executables"] = Key("strlist", ())
    SCHEMA[f"filter.{_side}_pids"] = Key("intlist", (), 1, 1 << 22)
    SCHEMA[f"filter.{_side}_containers"] = Key("strlist", ())
    SCHEMA[f"filter.{_side}_cgroups"] = Key("strlist", ())
    SCHEMA[f"filter.{_side}_command_line"] = Key("regex", "")


def schema() -> dict[str, Key]:
    """SCHEMA and each registered profile type's `profiles.TYPE.*` keys
    (agent/registry.py), read when asked: a type registered later
    is configurable like the built-in ones."""
    out = dict(SCHEMA)
    for t in registry.TYPES.values():
        out[f"profiles.{t.name}.enabled"] = Key("bool", t.enabled_by_default)
        for s in t.config_settings():
            out[f"profiles.{t.name}.{s.key}"] = Key(s.kind, s.default, s.low, s.high)
    return out


def flatten(table: Mapping[str, Any], origin: str, prefix: str = "") -> Iterator[Override]:
    """TOML tables to dotted keys; a table is a value only where the schema
    says the key is a map (headers, attributes)."""
    for name, value in table.items():
        key = f"{prefix}{name}"
        spec = schema().get(key)
        if isinstance(value, dict) and (spec is None or spec.kind != "strmap"):
            yield from flatten(value, origin, key + ".")
        else:
            yield Override(key, value, f"{origin}: {key}")


def check_key(o: Override) -> None:
    """Unknown keys are errors (a typo must not silently do nothing)."""
    keys = schema()
    if o.key in keys:
        return
    parts = o.key.split(".")
    if parts[0] == "profiles" and len(parts) == 3 and parts[1] not in registry.TYPES:
        known = ", ".join(registry.TYPES)
        raise ConfigError(f"{o.origin}: unknown profile type {parts[1]!r} (known: {known})")
    close = difflib.get_close_matches(o.key, keys, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise ConfigError(f"{o.origin}: unknown key {o.key!r}{hint}")


def coerce(o: Override) -> Any:
    """The value of `o` as its key's kind, within limits; strings (from the
    environment) are parsed as TOML would type them."""
    spec = schema()[o.key]
    value = o.value
    try:
        out = _CONVERT[spec.kind](value, spec)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"{o.origin}: {e}") from None
    if spec.kind in ("int", "float", "size"):
        _check_range(o, out, spec)
    if spec.kind == "intlist":
        for v in out:
            _check_range(o, v, spec)
    return out


def _check_range(o: Override, value: float, spec: Key) -> None:
    if spec.low is not None and value < spec.low:
        raise ConfigError(f"{o.origin}: must be at least {_num(spec.low)}, not {_num(value)}")
    if spec.high is not None and value > spec.high:
        raise ConfigError(f"{o.origin}: must be at most {_num(spec.high)}, not {_num(value)}")


def _num(x: float) -> str:
    """Integers in full (4194304, not 4.1943e+06), other numbers short."""
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def _int(v: Any, _s: Key) -> int:
    if isinstance(v, bool) or not isinstance(v, int | str):
        raise TypeError(f"expected an integer, not {v!r}")
    try:
        return int(v)
    except ValueError:
        raise ValueError(f"expected an integer, not {v!r}") from None


def _float(v: Any, _s: Key) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float | str):
        raise TypeError(f"expected a number, not {v!r}")
    try:
        out = float(v)
    except ValueError:
        raise ValueError(f"expected a number, not {v!r}") from None
    if not math.isfinite(out):  # TOML has nan and inf; NaN passes every range check
        raise ValueError(f"expected a finite number, not {v!r}")
    return out


def _bool(v: Any, _s: Key) -> bool:
    if isinstance(v, bool):
        return v
    if isinstance(v, str) and v.strip().lower() in ("true", "false"):
        return v.strip().lower() == "true"
    raise ValueError(f"expected true or false, not {v!r}")


def _str(v: Any, _s: Key) -> str:
    if not isinstance(v, str):
        raise TypeError(f"expected a string, not {v!r}")
    return v


def _choice(v: Any, s: Key) -> str:
    text = _str(v, s).strip().lower()
    if text not in s.choices:
        raise ValueError(f"must be one of {', '.join(s.choices)}, not {v!r}")
    return text


_SIZE = re.compile(r"^\s*(\d+)\s*([KMGT]i?B?|B)?\s*$", re.IGNORECASE)


def _size(v: Any, _s: Key) -> int:
    """Bytes, as an integer or a string like "256MiB" (powers of 1024)."""
    if isinstance(v, int) and not isinstance(v, bool):
        return v
    m = _SIZE.match(v) if isinstance(v, str) else None
    if not m:
        raise ValueError(f'expected a size in bytes such as 1048576 or "256MiB", not {v!r}')
    unit = (m.group(2) or "B")[0].upper()
    return int(m.group(1)) << {"B": 0, "K": 10, "M": 20, "G": 30, "T": 40}[unit]


def _regex(v: Any, s: Key) -> str:
    text = _str(v, s)
    try:
        re.compile(text)
    except re.error as e:
        raise ValueError(f"not a valid regular expression: {e}") from None
    return text


def _list(v: Any, item: Any, s: Key) -> tuple[Any, ...]:
    if isinstance(v, str):
        v = [x.strip() for x in v.split(",") if x.strip()]
    if not isinstance(v, list | tuple):
        raise TypeError(f"expected a list, not {v!r}")
    return tuple(item(x, s) for x in v)


def _strmap(v: Any, _s: Key) -> dict[str, str]:
    if isinstance(v, str):
        return parse_key_values(v)
    if not isinstance(v, dict) or not all(isinstance(x, str) for x in v.values()):
        raise TypeError(f"expected a table of strings, not {v!r}")
    return dict(v)


_CONVERT: dict[str, Any] = {
    "int": _int,
    "float": _float,
    "bool": _bool,
    "str": _str,
    "choice": _choice,
    "size": _size,
    "regex": _regex,
    "strlist": lambda v, s: _list(v, _str, s),
    "intlist": lambda v, s: _list(v, _int, s),
    "strmap": _strmap,
}
