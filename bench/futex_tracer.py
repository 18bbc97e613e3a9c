"""A plain futex tracer, the baseline for the lock benchmark: what any tool
that times every futex call from sys_enter to sys_exit (no stacks, no
filtering by operation) costs. Prints "attached", then runs until SIGINT
and prints how many calls it saw.

usage: futex_tracer.py PID
"""

from __future__ import annotations

import signal
import sys

TEXT = """
BPF_HASH(start, u32, u64, 65536);
BPF_HISTOGRAM(hist, int, 64);
TRACEPOINT_PROBE(syscalls, sys_enter_futex)
{
    u64 id = bpf_get_current_pid_tgid();
    if ((id >> 32) != PID)
        return 0;
    u32 tid = id;
    u64 ts = bpf_ktime_get_ns();
    start.update(&tid, &ts);
    return 0;
}
TRACEPOINT_PROBE(syscalls, sys_exit_futex)
{
    u32 tid = bpf_get_current_pid_tgid();
    u64 *ts = start.lookup(&tid);
    if (!ts)
        return 0;
    hist.increment(bpf_log2l(bpf_ktime_get_ns() - *ts));
    start.delete(&tid);
    return 0;
}
"""


def main() -> int:
    import bcc

    program = bcc.BPF(text=TEXT, cflags=[f"-DPID={int(sys.argv[1])}"])
    stop = []
    signal.signal(signal.SIGINT, lambda *_: stop.append(1))
    print("attached", flush=True)
    while not stop:
        signal.pause()
    calls = sum(v.value for v in program["hist"].values())
    print(f"calls {calls}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
