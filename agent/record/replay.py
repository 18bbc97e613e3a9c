"""`bpfprof replay DIR`: a capture through resolve -> build, as record would.

The same stages record runs after the kernel (Aggregator, StackResolver,
build_profile with the type's registry spec), fed by a ReplaySource and a
Symbolizer that reads nothing of this host: maps text from the capture,
files from the capture's copies, kernel symbols from its kallsyms, Python
frames' names from its python.jsonl. So it
runs without root, and a capture made on one host replays the same on
another.
"""

from __future__ import annotations

from pathlib import Path

from agent import registry
from agent.model import Profile, RawKey
from agent.pipeline.aggregate import Aggregator
from agent.pipeline.builder import build_profile
from agent.pipeline.resolve import StackResolver
from agent.record.replaysource import ReplaySource, load
from symbolizer import Symbolizer
from symbolizer.cpython.names import PythonNames


def replay(directory: Path) -> Profile:
    """The profile a capture's recording would have written."""
    captured = load(directory)
    absent = str(directory / "absent")  # no /proc, no notes: nothing of this host
    symbolizer = Symbolizer(
        proc_root=absent,
        kallsyms_path=str(directory / "kallsyms"),
        notes_path=absent,
        opener=captured.open_file,
    )
    source = ReplaySource(captured)
    processes = captured.processes

    def observe(pid: int) -> None:
        for text in processes[pid].maps:
            symbolizer.observe(pid, maps_text=text)

    source.poll(0, observe)
    python = PythonNames(proc_root=absent)  # names as the capture saved them
    for pid, (target, codes) in captured.python.items():
        python.load(pid, target, codes)
    aggregator = Aggregator()
    aggregator.add(source.drain())
    aggregator.add(source.live_heap())

    def process_name(key: RawKey) -> str:
        proc = processes.get(key.pid)
        return proc.name if proc else ""

    def container_id(pid: int) -> str:
        proc = processes.get(pid)
        return proc.container_id if proc else ""

    return build_profile(
        aggregator.take(),
        registry.spec_for(captured.profile_type, captured.options),
        StackResolver(symbolizer, python),
        process_name,
        time_nanos=captured.time_nanos,
        duration_nanos=captured.duration_nanos,
        container_id=container_id,
    )
