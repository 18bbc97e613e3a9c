"""One exception root for bpfprof.

Only the CLI turns these into exit codes and one-line messages; inside the
agent loop a failure for one pid, binary or export is caught, counted and
logged, and the loop goes on.
"""


class BpfprofError(Exception):
    """Root of every error bpfprof reports to a user.

    The message is one line saying what is wrong and, where there is one, the
    fix. `exit_code` is what the CLI exits with.
    """

    exit_code = 1


class UsageError(BpfprofError):
    """A bad option or argument."""

    exit_code = 2


class InputError(BpfprofError):
    """An input file that cannot be read or is not what it should be."""

    exit_code = 65  # EX_DATAERR


class TargetError(BpfprofError):
    """A process to profile does not exist or cannot be started."""

    exit_code = 3


class PrivilegeError(BpfprofError):
    """The user lacks the privileges BPF needs."""

    exit_code = 77  # EX_NOPERM


class SetupError(BpfprofError):
    """The host lacks something BPF needs: BCC, kernel headers, tracefs."""

    exit_code = 69  # EX_UNAVAILABLE


class InvalidProfile(BpfprofError):
    """A Profile that breaks the model's invariants (a bug, or a bad input file)."""

    exit_code = 65


class ConfigError(UsageError):
    """A bad key or value in the agent's configuration (file, env or flag).

    The message starts with where the value came from (`config.toml:
    export.protocol`, `OTEL_EXPORTER_OTLP_PROTOCOL`, `--protocol`), so the
    user knows which of the three places to fix.
    """
