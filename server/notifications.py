"""Commits anywhere wake dispatchers and streams in every process: LISTEN/NOTIFY or a poller.

PostgreSQL: a writer calls `notify(topic)` inside its transaction; PostgreSQL delivers it at
commit (never after a rollback) to every listening process, this one included (`Listener`).
SQLite has no notifications: `notify` does nothing there, and one `Poller` per process reads the
outbox's new rows instead, so a thousand open streams cost one query per poll, not a thousand.
Topics carry ids only ("order:<id>", "positions"); whoever is woken reads what changed from the
tables. They are hints: one lost (a listener reconnecting) is made up for by a wake-up of
everything after the reconnect and by the streams' own slow poll.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import threading
from collections.abc import Callable
from typing import Any

import peewee
import psycopg

from server.db import database, is_sqlite

log = logging.getLogger("storefront.notifications")

CHANNEL = "storefront_events"
# Passed to the listener's callback after each (re)connect: anything may have been missed.
EVERYTHING = "*"


def notify(topic: str) -> None:
    """Publishes `topic` when the current transaction commits (PostgreSQL; nothing on SQLite)."""
    if not is_sqlite():
        database.execute_sql("SELECT pg_notify(%s, %s)", (CHANNEL, topic))


class Listener:
    """A thread with a connection of its own that LISTENs and hands each topic to `on_topic`.

    The callback runs on the listener's thread and must be quick (it sets events); one that
    raises is logged. A lost connection is reopened every `reconnect_seconds`. The thread waits
    on the connection's socket and a pipe of its own, so `stop` ends it at once.
    """

    def __init__(
        self,
        db: peewee.Database,
        on_topic: Callable[[str], None],
        *,
        reconnect_seconds: float = 1.0,
    ) -> None:
        self._db = db
        self._on_topic = on_topic
        self._reconnect_seconds = reconnect_seconds
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        # `stop` writes to it: the listening thread waits on it beside the connection's socket.
        self._wake_read, self._wake_write = -1, -1
        # Set while a LISTEN is in place (tests wait for it).
        self.listening = threading.Event()

    def start(self) -> None:
        """Starts listening on a daemon thread."""
        if self._thread is None:
            self._wake_read, self._wake_write = os.pipe()
            self._thread = threading.Thread(target=self._run, name="pg-listener", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        """Stops listening and waits up to `timeout` for the thread."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        if self._thread is not None:
            with contextlib.suppress(OSError):  # the thread is gone already
                os.write(self._wake_write, b"x")
            self._thread.join(timeout)
            os.close(self._wake_write)

    def _run(self) -> None:
        try:
            while not self._stopping.is_set():
                try:
                    self._listen()
                except (psycopg.Error, OSError, ValueError) as exc:
                    # A lost connection: psycopg's error, or its socket closed under select().
                    log.warning(
                        "notification listener lost its connection; reconnecting",
                        extra={"error": {"type": type(exc).__name__}},
                    )
                self.listening.clear()
                self._stopping.wait(self._reconnect_seconds)
        finally:
            os.close(self._wake_read)

    def _listen(self) -> None:
        params = {"connect_timeout": 5, **self._db.connect_params}
        with psycopg.connect(dbname=self._db.database, autocommit=True, **params) as connection:
            connection.execute(f"LISTEN {CHANNEL}")
            self.listening.set()
            _deliver(self._on_topic, EVERYTHING)
            while not self._stopping.is_set():
                readable, _, _ = select.select([connection.fileno(), self._wake_read], [], [])
                if self._wake_read in readable:
                    return
                for notification in connection.notifies(timeout=0):
                    _deliver(self._on_topic, notification.payload)


class Poller:
    """SQLite's stand-in for `Listener`: a thread that looks for new outbox rows and positions
    every `interval` seconds and hands `on_topic` the same topics a notification would carry.

    SQLite's writers take turns, so rowids grow in commit order: rows above the last rowid seen
    are exactly the new ones.
    """

    def __init__(
        self,
        db: peewee.Database,
        on_topic: Callable[[str], None],
        *,
        interval: float,
        positions_topic: str,
    ) -> None:
        self._db = db
        self._on_topic = on_topic
        self._interval = interval
        self._positions_topic = positions_topic
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self.listening = threading.Event()

    def start(self) -> None:
        """Starts polling on a daemon thread."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="outbox-poller", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        """Stops polling and waits up to `timeout` for the thread."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        last_row, last_position = -1, -1
        while not self._stopping.is_set():
            try:
                with self._db.connection_context():
                    if last_row < 0:
                        last_row, last_position = self._marks()
                        self.listening.set()
                    else:
                        last_row, last_position = self._poll(last_row, last_position)
            except peewee.PeeweeException:
                log.warning("outbox poller could not read the outbox; retrying")
            self._stopping.wait(self._interval)

    def _query(self, sql: str, *params: object) -> list[tuple[Any, ...]]:
        cursor = self._db.execute_sql(sql, params)  # type: ignore[no-untyped-call]
        return list(cursor.fetchall())

    def _marks(self) -> tuple[int, int]:
        [(row, position)] = self._query(
            "SELECT COALESCE(MAX(rowid), 0), COALESCE(MAX(position), 0) FROM outbox_events"
        )
        return int(row), int(position)

    def _poll(self, last_row: int, last_position: int) -> tuple[int, int]:
        rows = self._query(
            "SELECT rowid, aggregate_type, aggregate_id FROM outbox_events WHERE rowid > ? "
            "ORDER BY rowid LIMIT 1000",
            last_row,
        )
        topics = dict.fromkeys(f"{kind}:{aggregate_id}" for _, kind, aggregate_id in rows)
        [(position,)] = self._query("SELECT COALESCE(MAX(position), 0) FROM outbox_events")
        position = int(position)
        for topic in topics:
            _deliver(self._on_topic, topic)
        if position > last_position:
            _deliver(self._on_topic, self._positions_topic)
        return (int(rows[-1][0]) if rows else last_row), position


def _deliver(on_topic: Callable[[str], None], topic: str) -> None:
    """Hands `topic` to `on_topic`; a handler that raises is logged, and the next topic goes on."""
    try:
        on_topic(topic)
    except Exception:
        log.exception("wake-up handler failed on %r", topic)
