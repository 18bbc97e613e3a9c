"""The messages between the agent and its loader child, with their fds.

Over a SOCK_SEQPACKET socket pair (message boundaries kept): the agent sends
one JSON request; the child answers with one JSON reply that says how many
file descriptors follow, then the descriptors in messages of at most
`FDS_PER_MESSAGE` (the kernel takes at most 253 per SCM_RIGHTS message).
A reply's maps, functions and attachments name their fd by its index in
that sequence.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
from typing import Any

FDS_PER_MESSAGE = 200
MAX_MESSAGE = 4 << 20  # the request carries the program text (~100 KiB)


class HandoffError(RuntimeError):
    """The other end broke the protocol or went away."""


def socket_pair() -> tuple[socket.socket, socket.socket]:
    return socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)


def send_json(sock: socket.socket, message: dict[str, Any]) -> None:
    sock.sendall(json.dumps(message).encode())


def recv_json(sock: socket.socket) -> dict[str, Any]:
    data, _, flags, _ = sock.recvmsg(MAX_MESSAGE)
    if not data:
        raise HandoffError("the other end closed the connection")
    if flags & socket.MSG_TRUNC:
        raise HandoffError("message truncated")
    message = json.loads(data)
    if not isinstance(message, dict):
        raise HandoffError("not a JSON object")
    return message


def send_reply(sock: socket.socket, reply: dict[str, Any], fds: list[int]) -> None:
    """The reply, then its fds in batches."""
    send_json(sock, {**reply, "fd_count": len(fds)})
    for start in range(0, len(fds), FDS_PER_MESSAGE):
        socket.send_fds(sock, [b"F"], fds[start : start + FDS_PER_MESSAGE])


def recv_reply(sock: socket.socket) -> tuple[dict[str, Any], list[int]]:
    """A reply and the fds it announced (owned by the caller from here)."""
    reply = recv_json(sock)
    want = int(reply.get("fd_count", 0))
    fds: list[int] = []
    try:
        while len(fds) < want:
            data, got, flags, _ = socket.recv_fds(sock, 16, FDS_PER_MESSAGE)
            fds.extend(got)
            if not data or flags & socket.MSG_CTRUNC:
                raise HandoffError(f"received {len(fds)} of {want} file descriptors")
    except BaseException:
        close_all(fds)
        raise
    return reply, fds


def close_all(fds: list[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):  # closed already: nothing to do
            os.close(fd)
