"""BPF C sources of bpfprof, shipped as package data (see agent/sources)."""

from importlib.resources import files


def source(name: str) -> str:
    """The text of one BPF source file shipped in this package."""
    return (files(__name__) / name).read_text()


def include_dir() -> str:
    """A directory holding the shared headers, for the compiler's -I."""
    return str(files(__name__))
