"""JSON log lines: one object per line, structured fields merged in at the top level."""

from __future__ import annotations

import json
import logging
import os
import sys
import time
import traceback
from typing import Any

_STANDARD_ATTRS = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON object; extra={...} fields become top-level keys."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": utc_text(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD_ATTRS and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["error.stack"] = "".join(traceback.format_exception(*record.exc_info))
        return json.dumps(entry, default=str, ensure_ascii=False)


# The text of the last whole second formatted: every call's log line asks for the time.
_second: tuple[int, str] = (-1, "")


def utc_text(created: float) -> str:
    """A Unix time as RFC 3339 UTC text to the millisecond: 2026-12-06T04:05:06.789Z."""
    global _second
    whole = int(created)
    second = _second  # one read: another thread may replace it meanwhile
    if second[0] != whole:
        second = (whole, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)))
        _second = second
    return f"{second[1]}.{int((created - whole) * 1000):03d}Z"


class LineHandler(logging.Handler):
    """Writes each record as one line with one write(2) to a file descriptor (stderr).

    Every RPC logs a line, from many worker threads. logging.StreamHandler holds its lock while
    it formats, encodes, writes and flushes each line, so the others queue behind all of that.
    Here the line is formatted and encoded first, and the lock is held only around the write.
    (It cannot go: a line longer than PIPE_BUF, a stack trace, may reach a pipe in pieces, and
    another thread's line must not land between them.)
    """

    terminator = b"\n"

    def __init__(self, fd: int) -> None:
        super().__init__()
        self.fd = fd

    def handle(self, record: logging.LogRecord) -> bool:
        # Handler.handle would hold the lock around all of emit; emit holds it for the write.
        if not self.filter(record):
            return False
        self.emit(record)
        return True

    def emit(self, record: logging.LogRecord) -> None:
        try:
            data = self.format(record).encode("utf-8", "backslashreplace") + self.terminator
            with self.lock:  # type: ignore[union-attr]
                self._write(data)
        except Exception:
            self.handleError(record)

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self.fd, view) :]


def configure(level: str = "INFO") -> None:
    """Sends every log record to stderr as JSON lines at `level`."""
    handler: logging.Handler
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # replaced by something without one (tests)
        handler = logging.StreamHandler(sys.stderr)
    else:
        sys.stderr.flush()  # what was written before goes first
        handler = LineHandler(fd)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
