"""A small CPU profile with every shape the encoders must handle.

One user binary with an inlined call (`inner` inlined into `work`) and a
frame that could not be symbolized, plus an unsymbolized kernel frame:

    main -> work/inner -> [kernel]    3 samples, 30.3ms
    main -> work/inner                2 samples, 20.2ms
    main -> app+0x4345                1 sample,  10.1ms
"""

from __future__ import annotations

from agent.model import (
    KERNEL_MAPPING_NAME,
    Frame,
    Location,
    Mapping,
    Profile,
    Sample,
    ValueType,
)

PERIOD = 10_101_010  # 99 Hz
KERNEL = Mapping(0xFFFFFFFF81000000, 0xFFFFFFFF83000000, 0, KERNEL_MAPPING_NAME)
SYSCALL = Location(0xFFFFFFFF81001000, KERNEL, (), "kernel")


def app_mapping(file: str = "/usr/bin/app") -> Mapping:
    return Mapping(0x400000, 0x500000, 0x1000, file, "b1d0")


def cpu_profile(app_file: str = "/usr/bin/app") -> Profile:
    """GIVEN a 99 Hz CPU profile of one process (pid 42, thread 43)."""
    app = app_mapping(app_file)
    main = Location(0x401000, app, (Frame("main", "app.c", 10, 5),))
    work = Location(
        0x402000,
        app,
        (Frame("inner", "app.c", 30, 28), Frame("work", "app.c", 20, 18)),
    )
    unknown = Location(0x403345, app, ())
    labels = {"comm": "app-worker", "process": "app"}
    ids = {"pid": 42, "tid": 43}
    return Profile(
        sample_types=(ValueType("samples", "count"), ValueType("cpu", "nanoseconds")),
        samples=[
            Sample((SYSCALL, work, main), (3, 3 * PERIOD), labels, ids),
            Sample((work, main), (2, 2 * PERIOD), labels, ids),
            Sample((unknown, main), (1, PERIOD), labels, ids),
        ],
        period_type=ValueType("cpu", "nanoseconds"),
        period=PERIOD,
        time_nanos=1_700_000_000_000_000_000,
        duration_nanos=10_000_000_000,
        default_sample_type="cpu",
        comments=("bpfprof test",),
    )
