"""The `bpfprof` command line: builds a config and calls one stage entry.

Nothing here does the work. Errors raised as BpfprofError (and click's own
usage errors) become one line on stderr and a non-zero exit status.
"""

from __future__ import annotations

import logging
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from agent import registry
from agent.config import BpfLimits, RecordConfig, format_from_suffix
from agent.errors import BpfprofError, InputError, UsageError
from agent.exporters import FORMATS
from agent.model import Profile
from agent.registry import Setting

log = logging.getLogger("bpfprof")
F = TypeVar("F", bound=Callable[..., Any])


class FiniteFloat(click.types.FloatParamType):
    """click.FLOAT without nan and inf: Python's float() takes both, and a
    NaN interval or duration passes every comparison (the agent would
    never report, a recording never end)."""

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> float:
        number = float(super().convert(value, param, ctx))
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return number


FINITE = FiniteFloat()


# The order --help has always listed the types and their flags in (the
# contract's); a type or flag not named here follows, in the registry's order.
HELP_ORDER = ("cpu", "offcpu", "alloc", "lock")
FLAG_ORDER = ("--min-block-us", "--min-wait-us", "--wait-sampling", "--alloc-rate")


def _in_help_order(names: tuple[str, ...], order: tuple[str, ...]) -> tuple[str, ...]:
    rank = {name: i for i, name in enumerate(order)}
    return tuple(sorted(names, key=lambda n: rank.get(n, len(order))))


class ProfileTypeChoice(click.Choice[str]):
    """The registry's profile types, read when click asks (not at import):
    a type registered later is a choice like the built-in ones."""

    def __init__(self) -> None:
        super().__init__(())

    @property
    def choices(self) -> tuple[str, ...]:
        return _in_help_order(registry.names(), HELP_ORDER)

    @choices.setter
    def choices(self, _value: object) -> None:
        pass


def type_option(help_text: str) -> Callable[[F], F]:
    """`-t/--type`: a profile type, cpu by default (record, check --print-bpf)."""
    return click.option(
        "-t",
        "--type",
        "profile_type",
        type=ProfileTypeChoice(),
        default="cpu",
        show_default=True,
        help=help_text,
    )


def setting_option(s: Setting) -> Callable[[F], F]:
    """A type's setting as a `record` flag: its bounds and help from the
    registry, its default RecordConfig's."""
    decls = s.flag.split("/")
    if s.kind == "bool":
        return click.option(*decls, s.field, is_flag=True, help=s.help)
    kind: Any = click.IntRange(s.low, s.high) if s.click_range else int
    default = getattr(RecordConfig, s.field)
    return click.option(*decls, s.field, type=kind, default=default, show_default=True, help=s.help)


def limit_option(limit: registry.Limit) -> Callable[[F], F]:
    """A map size as a `record` flag, with the bounds `run`'s config has too."""
    return click.option(
        limit.flag,
        type=click.IntRange(limit.low, limit.high),
        default=limit.default,
        show_default=True,
        help=limit.help,
    )


def type_setting_options(skip: tuple[str, ...]) -> Callable[[F], F]:
    """Every type's record flags but `skip` (placed by hand), in help order."""
    flags = {s.flag: s for s in registry.record_settings() if s.flag not in skip}

    def apply(f: F) -> F:
        for flag in reversed(_in_help_order(tuple(flags), FLAG_ORDER)):
            f = setting_option(flags[flag])(f)
        return f

    return apply


def output_options(f: F) -> F:
    """`-o/--output` and `--format`, the same for every command that writes a profile."""
    f = click.option(
        "--format",
        "output_format",
        type=click.Choice(FORMATS),
        help="Output format (overrides the suffix).",
    )(f)
    return click.option(
        "-o",
        "--output",
        type=click.Path(path_type=Path),
        default=Path("profile.pb.gz"),
        show_default=True,
        help="Output file; the suffix picks the format.",
    )(f)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="bpfprof")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
def cli(verbose: int) -> None:
    """bpfprof: eBPF profiles of CPU time, off-CPU time, lock contention and allocations."""
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="bpfprof: %(levelname)s: %(message)s")


@cli.command(context_settings={"ignore_unknown_options": False})
@type_option("What to profile.")
@click.option(
    "-p", "--pid", "pids", type=int, multiple=True, help="Profile this process (repeatable)."
)
@click.option(
    "-d",
    "--duration",
    type=FINITE,
    help="Seconds to record (default: until Ctrl-C or COMMAND exits).",
)
@setting_option(registry.FREQUENCY)
@output_options
@limit_option(registry.LIMITS[0])
@limit_option(registry.LIMITS[1])
@click.option(
    "--unwind",
    type=click.Choice(["dwarf", "fp"]),
    default="dwarf",
    show_default=True,
    help="User stacks: walk the binaries' CFI (.eh_frame), or frame pointers only.",
)
@limit_option(registry.LIMITS[2])
@click.option(
    "--unwind-mappings",
    type=click.IntRange(64, 1 << 24),
    default=BpfLimits.unwind_mappings,
    show_default=True,
    help="Executable mappings the kernel holds for all processes (32 bytes each).",
)
@click.option(
    "--python-frames/--no-python-frames",
    default=True,
    show_default=True,
    help="Show CPython 3.8-3.14 processes' Python functions in place of the interpreter loop.",
)
@type_setting_options(skip=(registry.FREQUENCY.flag,))
@click.option(
    "--capture",
    "capture_dir",
    type=click.Path(path_type=Path),
    help="Also save the raw samples, maps and build IDs here, for `bpfprof replay`.",
)
@click.option(
    "--capture-binaries",
    is_flag=True,
    help="With --capture: copy the mapped executables (up to 64 MiB each) too.",
)
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
def record(
    profile_type: str,
    pids: tuple[int, ...],
    duration: float | None,
    frequency: int,
    output: Path,
    output_format: str | None,
    max_entries: int,
    stack_storage_size: int,
    unwind: str,
    unwind_rows: int,
    unwind_mappings: int,
    python_frames: bool,
    capture_dir: Path | None,
    capture_binaries: bool,
    command: tuple[str, ...],
    **settings: Any,
) -> None:
    """Record one profile and write it to a file.

    Target: --pid PID (repeatable), or -- COMMAND [ARGS...] (started once the
    probes are attached, followed with its children until it exits), or
    neither for the whole system.
    """
    from agent.record.recorder import record as do_record

    config = RecordConfig(
        profile_type=profile_type,
        pids=pids,
        command=command,
        duration=duration,
        frequency=frequency,
        output=output,
        output_format=output_format or format_from_suffix(output),
        limits=BpfLimits(
            max_entries=max_entries,
            stack_entries=stack_storage_size,
            unwind_rows=unwind_rows,
            unwind_mappings=unwind_mappings,
        ),
        unwind=unwind,
        python=python_frames,
        **record_settings(settings),
    )
    capture = None
    if capture_dir is not None:
        from agent.record.capture import Capture

        try:
            capture = Capture(capture_dir, capture_binaries)
        except OSError as exc:
            raise UsageError(f"--capture {capture_dir}: {exc.strerror or exc}") from exc
    status = do_record(config, capture)
    sys.exit(status)


@cli.command()
@click.argument("directory", type=click.Path(path_type=Path, file_okay=False))
@output_options
def replay(directory: Path, output: Path, output_format: str | None) -> None:
    """Replay a `record --capture` directory into a profile, without root."""
    from agent.exporters.output import write_profile
    from agent.record.replay import replay as do_replay

    fmt = output_format or format_from_suffix(output)
    write_profile(do_replay(directory), output, fmt)


def record_settings(given: dict[str, Any]) -> dict[str, Any]:
    """The per-type flags' values as RecordConfig fields (a --no-X flag
    given turns its setting off)."""
    out = {}
    for s in registry.record_settings():
        if s.field in given:
            out[s.field] = not given[s.field] if s.invert else given[s.field]
    return out


@cli.command()
@click.argument("file", type=click.Path(path_type=Path))
@click.option(
    "-n", "count", type=int, default=10, show_default=True, help="How many functions to show."
)
@click.option(
    "--sample-index", help="Sample type to rank by (name or index; default: the profile's default)."
)
@click.option("--cum", is_flag=True, help="Sort by cumulative value instead of flat.")
def top(file: Path, count: int, sample_index: str | None, cum: bool) -> None:
    """Top functions of a pprof file, flat and cumulative."""
    from agent.tools.report import format_top

    profile = load_profile(file)
    click.echo(format_top(profile, sample_index=sample_index, count=count, by_cum=cum), nl=False)


@cli.command()
@click.option(
    "-c",
    "--config",
    "config_path",
    type=click.Path(path_type=Path),
    help="TOML config (default: /etc/bpfprof/config.toml if present).",
)
@click.option("-i", "--interval", type=FINITE, help="Seconds per reported profile (default 10).")
@click.option(
    "-F",
    "--frequency",
    type=int,
    help=f"{registry.FREQUENCY.help.rstrip('.')} (default {registry.FREQUENCY.default}).",
)
@click.option("--endpoint", help="OTLP collector (default: none, write local pprof files).")
@click.option("--protocol", help="OTLP transport: grpc (default) or http/protobuf.")
@click.option("--insecure", is_flag=True, default=None, help="gRPC without TLS.")
@click.option(
    "--output-dir",
    type=click.Path(path_type=Path),
    help="Rolling pprof files when there is no endpoint (default /var/lib/bpfprof/profiles).",
)
@click.option("--spool-dir", type=click.Path(path_type=Path), help="Where unsent requests wait.")
@click.option("--status-file", type=click.Path(path_type=Path), help="Where status is written.")
@click.option(
    "--command-line", is_flag=True, default=None, help="Add process.command_line to resources."
)
def run(config_path: Path | None, **flags: object) -> None:
    """Profile the whole host continuously (the systemd service).

    Config: the TOML file, then the OTEL_EXPORTER_OTLP_* variables, then these
    flags. SIGHUP reloads the config; SIGTERM flushes the last interval and exits.
    """
    from agent.daemon import runconfig
    from agent.daemon.runner import run as do_run

    if logging.getLogger().level > logging.INFO:
        # One line per interval at info; per-binary symbolization problems are
        # counted in the status and shown with -v (a host has many of them).
        logging.getLogger().setLevel(logging.INFO)
        logging.getLogger("bpfprof.symbolizer").setLevel(logging.ERROR)
    overrides = runconfig.flag_overrides(flags)
    sys.exit(do_run(lambda: runconfig.load(config_path, flags=overrides)))


@cli.command()
@click.option(
    "--status-file",
    type=click.Path(path_type=Path),
    default=Path("/run/bpfprof/status.json"),
    show_default=True,
    help="The file `bpfprof run` writes.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the raw JSON.")
def status(status_file: Path, as_json: bool) -> None:
    """Show the running agent's counters (from its status file)."""
    import json

    from agent.daemon.telemetry import format_status, read_status

    data = read_status(status_file)
    click.echo(
        json.dumps(data, indent=1, sort_keys=True) if as_json else format_status(data),
        nl=as_json,
    )


@cli.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path),
    default=Path("flamegraph.html"),
    show_default=True,
    help="Output file: .html (interactive) or .svg (static).",
)
@click.option("--diff", is_flag=True, help="Draw what changed from BASE to NEW (two files).")
@click.option(
    "--sample-index", help="Sample type shown first (name or index; default: the profile's)."
)
@click.option("--title", help="Title of the graph (default: from the file names).")
def flamegraph(
    files: tuple[Path, ...], output: Path, diff: bool, sample_index: str | None, title: str | None
) -> None:
    """Flame graph of a pprof FILE, or with --diff of BASE NEW: what changed."""
    from agent.errors import UsageError
    from agent.tools.flamegraph import output_format, write_flamegraph

    want = 2 if diff else 1
    if len(files) != want:
        usage = "--diff BASE NEW" if diff else "FILE (or --diff BASE NEW)"
        raise UsageError(f"flamegraph takes {usage}, got {len(files)} files")
    output_format(output)
    profiles = [load_profile(f) for f in files]
    if title is None:
        names = [f.name for f in files]
        title = f"Change from {names[0]} to {names[1]}" if diff else f"Flame graph of {names[0]}"
    graph = write_flamegraph(profiles, output, title, sample_index)
    if graph.empty:
        click.echo("bpfprof: note: the profile has no samples; the graph says so", err=True)
    click.echo(f"bpfprof: wrote flame graph to {output}", err=True)


@cli.command()
@click.argument("base", type=click.Path(path_type=Path))
@click.argument("new", type=click.Path(path_type=Path))
@click.option(
    "-n", "count", type=int, default=10, show_default=True, help="How many functions to show."
)
@click.option(
    "--sample-index", help="Sample type to compare (name or index; default: the new profile's)."
)
@click.option("--cum", is_flag=True, help="Compare cumulative shares instead of flat ones.")
def diff(base: Path, new: Path, count: int, sample_index: str | None, cum: bool) -> None:
    """The functions whose share changed most from BASE to NEW."""
    from agent.tools.flamegraph.diff import format_diff

    before, after = load_profile(base), load_profile(new)
    click.echo(format_diff(before, after, sample_index, count=count, by_cum=cum), nl=False)


@cli.command()
@click.option(
    "--print-bpf", is_flag=True, help="Print a BPF program as it would be compiled, and exit."
)
@type_option("With --print-bpf: which profile type's program.")
def check(print_bpf: bool, profile_type: str) -> None:
    """Diagnose this host: kernel, BPF, BTF, headers, BCC, tracefs, capabilities."""
    if print_bpf:
        from agent.registry import render_program

        click.echo(render_program(profile_type, RecordConfig().source_options()))
        return
    from agent.tools.check import format_report, run_checks

    results = run_checks()
    click.echo(format_report(results), nl=False)
    sys.exit(0 if all(r.ok for r in results) else 1)


def load_profile(path: Path) -> Profile:
    """Read and decode a pprof file; errors name the file."""
    from agent.exporters.pprof import decode

    data = read_input(path)
    try:
        return decode(data)
    except InputError as e:
        raise InputError(f"{path}: {e}") from None


@cli.command()
@click.option("--elf", "elf", type=str, help="Symbolize file virtual addresses of this ELF file.")
@click.option("--pid", "pid", type=int, help="Symbolize addresses of this running process.")
@click.option("--json", "as_json", is_flag=True, help="One JSON array instead of text.")
@click.option(
    "--debug-dir",
    "debug_dirs",
    multiple=True,
    help="Where separate debug files live (repeatable; default /usr/lib/debug).",
)
@click.option("--cache-dir", help="Keep parsed symbol tables here, by build ID.")
@click.argument("addresses", nargs=-1)
def symbolize(
    elf: str | None,
    pid: int | None,
    as_json: bool,
    debug_dirs: tuple[str, ...],
    cache_dir: str | None,
    addresses: tuple[str, ...],
) -> None:
    """Function, file:line and inline chain of each ADDRESS (hex 0x... or decimal).

    With --elf, addresses are the file's virtual addresses (as addr2line
    takes them); with --pid, addresses in the process.
    """
    from agent.tools.symbolize import SymbolizeRequest
    from agent.tools.symbolize import symbolize as do_symbolize

    req = SymbolizeRequest(elf, pid, addresses, as_json, debug_dirs, cache_dir)
    click.echo(do_symbolize(req), nl=False)


def read_input(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise InputError(f"{path}: is a directory, not a profile") from None
    except OSError as e:
        raise InputError(f"{path}: cannot read: {e.strerror}") from None


def main(argv: list[str] | None = None) -> None:
    """Entry point: every failure becomes one line on stderr and an exit code."""
    try:
        rv = cli.main(args=argv, prog_name="bpfprof", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("bpfprof: interrupted", err=True)
        sys.exit(130)
    except click.ClickException as e:
        click.echo(f"bpfprof: error: {e.format_message()}", err=True)
        sys.exit(e.exit_code)
    except BpfprofError as e:
        click.echo(f"bpfprof: error: {e}", err=True)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        click.echo("bpfprof: interrupted", err=True)
        sys.exit(130)
    except Exception as e:  # a bug: still one line, the traceback only with -vv
        log.debug("internal error", exc_info=True)
        click.echo(
            f"bpfprof: internal error: {type(e).__name__}: {e} (run with -vv for details)", err=True
        )
        sys.exit(70)
    sys.exit(rv if isinstance(rv, int) else 0)
