"""The JSON log lines: whole lines from many threads at once, and their time stamps."""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import select
import threading

from server.logs import JsonFormatter, LineHandler, utc_text


def test_utc_text_is_rfc3339_to_the_millisecond() -> None:
    for created in (0.0, 1_765_000_000.9999, 1_796_529_845.5, 1_796_529_845.0004):
        expected = (
            dt.datetime.fromtimestamp(created, dt.UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z")
        )
        assert utc_text(created) == expected


def test_lines_written_by_many_threads_at_once_stay_whole() -> None:
    read_end, write_end = os.pipe()
    handler = LineHandler(write_end)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("test.lines")
    logger.propagate = False
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    # Lines over PIPE_BUF may reach a pipe in pieces: none may land inside another.
    long_text = "x" * (select.PIPE_BUF * 3)
    chunks: list[bytes] = []
    reader = threading.Thread(
        target=lambda: chunks.extend(iter(lambda: os.read(read_end, 65536), b""))
    )
    reader.start()

    def log_many(thread: int) -> None:
        for index in range(200):
            text = long_text if index % 50 == 0 else "short"
            logger.info("line", extra={"writer": thread, "index": index, "text": text})

    threads = [threading.Thread(target=log_many, args=(n,)) for n in range(8)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        logger.removeHandler(handler)
        os.close(write_end)
        reader.join()
        os.close(read_end)

    lines = b"".join(chunks).decode("utf-8").splitlines()
    entries = [json.loads(line) for line in lines]  # every line is one whole JSON object
    assert sorted((e["writer"], e["index"]) for e in entries) == sorted(
        (thread, index) for thread in range(8) for index in range(200)
    )
    assert {len(e["text"]) for e in entries} == {len("short"), len(long_text)}
