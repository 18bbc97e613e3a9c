"""Text that another party chose, made safe to put in the agent's log.

A collector's error message, a redirect's Location, a gRPC status's details:
the agent logs them because they tell the operator what went wrong, but
their bytes are the peer's. Raw, they could forge log lines (a newline and
a fake "interval" line), rewrite the operator's terminal (ESC sequences),
hide text (bidi overrides) or fill the journal (megabytes per line). So
every non-printable character is escaped as Python's repr escapes it, and
the result is cut to a length a log line can carry.
"""

from __future__ import annotations

LOG_TEXT_CHARS = 200


def printable(text: str | bytes, limit: int = LOG_TEXT_CHARS) -> str:
    """`text` with control and format characters escaped (`\\x1b`, `\\n`,
    `\\u202e`; a byte that is not UTF-8 becomes U+FFFD) and cut to at most
    `limit` characters, with "..." marking the cut."""
    if isinstance(text, bytes):
        text = text[: limit * 4].decode("utf-8", errors="replace")
    out: list[str] = []
    size = 0
    for ch in text:
        piece = ch if ch.isprintable() else repr(ch)[1:-1]
        if size + len(piece) > limit:
            return "".join(out) + "..."
        out.append(piece)
        size += len(piece)
    return "".join(out)
