"""Start a COMMAND held at the door until the probes are attached.

The child is forked first and waits on a pipe; only once the BPF program is
attached and the child's pid is in the target set does the parent release
it to exec the command. So the profile sees the command from its first
instruction, and the pid is known before anything runs.

The command's life is what its profile's duration is: `released` is when
it was let go, `ended` when it exited, stamped by a thread blocked in
waitpid (the recording loop only looks every 100 ms or so).
"""

from __future__ import annotations

import os
import shutil
import signal
import threading
import time

from agent.errors import TargetError
from agent.kernel import held


class HeldCommand:
    def __init__(self, argv: tuple[str, ...]) -> None:
        if not argv:
            raise TargetError("no command given")
        if shutil.which(argv[0]) is None:
            raise TargetError(f"command not found: {argv[0]}")
        read_end, self._release_fd = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child only waits, then execs
            _child(read_end, self._release_fd, argv)
        os.close(read_end)
        held.hold(pid)  # not announced as the copy of us it is until it execs
        self.pid = pid
        self.status: int | None = None
        self.released: float | None = None  # time.time() when let go
        self.ended: float | None = None  # time.time() when it exited
        self._exited = threading.Event()
        threading.Thread(target=self._reap, name=f"wait-{pid}", daemon=True).start()

    def _reap(self) -> None:
        _, status = os.waitpid(self.pid, 0)
        self.ended = time.time()
        self.status = os.waitstatus_to_exitcode(status)
        self._exited.set()

    def release(self) -> None:
        """Let the command run."""
        self.released = time.time()
        os.write(self._release_fd, b"go")
        os.close(self._release_fd)
        self._release_fd = -1

    def abandon(self) -> None:
        """Never run it: closing the pipe makes the held child exit."""
        if self._release_fd >= 0:
            os.close(self._release_fd)
            self._release_fd = -1
        self.wait(None)

    def poll(self) -> int | None:
        """The exit status once the command has ended, else None."""
        return self.wait(0)

    def wait(self, timeout: float | None) -> int | None:
        """Wait up to `timeout` seconds (None: for ever) for the command."""
        self._exited.wait(timeout)
        return self.status if self._exited.is_set() else None


def _child(read_end: int, release_fd: int, argv: tuple[str, ...]) -> None:  # pragma: no cover
    try:
        held.name_self()
        os.close(release_fd)
        if os.read(read_end, 2) != b"go":
            os._exit(125)  # the parent gave up before releasing us
        os.close(read_end)
        # Python ignores SIGPIPE and SIGXFSZ; the command expects defaults.
        for sig in (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGINT):
            signal.signal(sig, signal.SIG_DFL)
        os.execvp(argv[0], list(argv))
    except BaseException:
        os._exit(127)
