"""PostgreSQL LISTEN/NOTIFY: a committed change wakes dispatchers and watchers in every process.

A writer calls `notify(topic)` inside its transaction; PostgreSQL delivers it at commit (never
after a rollback) to every listening process, this one included. Topics carry ids only
("order:<id>", "positions"); a listener reads what changed from the tables. They are hints: one
lost while a listener reconnects is made up for by a wake-up of everything after the reconnect
and by the pollers' own intervals. SQLite has no such thing: `notify` does nothing there and
processes poll.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

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
    raises is logged. A lost connection is reopened every `reconnect_seconds`.
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
        # Set while a LISTEN is in place (tests wait for it).
        self.listening = threading.Event()

    def start(self) -> None:
        """Starts listening on a daemon thread."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="pg-listener", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        """Stops listening (within about a second) and waits up to `timeout` for the thread."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                self._listen()
            except psycopg.Error as exc:
                log.warning(
                    "notification listener lost its connection; reconnecting",
                    extra={"error": {"type": type(exc).__name__}},
                )
            self.listening.clear()
            self._stopping.wait(self._reconnect_seconds)

    def _listen(self) -> None:
        params = {"connect_timeout": 5, **self._db.connect_params}
        with psycopg.connect(dbname=self._db.database, autocommit=True, **params) as connection:
            connection.execute(f"LISTEN {CHANNEL}")
            self.listening.set()
            self._deliver(EVERYTHING)
            while not self._stopping.is_set():
                # The timeout bounds how long `stop` waits for this thread.
                for notification in connection.notifies(timeout=1.0):
                    self._deliver(notification.payload)

    def _deliver(self, topic: str) -> None:
        try:
            self._on_topic(topic)
        except Exception:
            log.exception("notification handler failed on %r", topic)
