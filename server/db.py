"""The one deferred database object, the model base class, and initialisation from a URL."""

from __future__ import annotations

import datetime as dt
import fcntl
import itertools
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlparse

import peewee
from playhouse import db_url
from playhouse.pool import PooledSqliteDatabase

database = peewee.DatabaseProxy()
ModelT = TypeVar("ModelT", bound=peewee.Model)

# WAL lets readers run beside the one writer; busy_timeout makes writers queue instead of failing;
# synchronous=normal is durable across process crashes in WAL mode (only an OS crash can lose the
# last commits); foreign keys are off by default in SQLite.
SQLITE_BUSY_TIMEOUT_MS = 10_000
SQLITE_PRAGMAS = {
    "journal_mode": "wal",
    "busy_timeout": SQLITE_BUSY_TIMEOUT_MS,
    "synchronous": "normal",
    "foreign_keys": 1,
}


# SQL functions written in Python that queries call on SQLite, by name: (function, arguments).
_SQLITE_FUNCTIONS: dict[str, tuple[Callable[..., Any], int]] = {}
F = TypeVar("F", bound=Callable[..., Any])


def sqlite_function(name: str, num_params: int) -> Callable[[F], F]:
    """Makes the decorated function callable as `name(...)` in SQL on every SQLite connection
    opened from then on (deterministic: SQLite may use it in indexes and reuse its results).

    Registered once per connection as it opens, not per query: creating a function on the
    connection each time was a measurable share of a search.
    """

    def register(function: F) -> F:
        _SQLITE_FUNCTIONS[name] = (function, num_params)
        return function

    return register


class BaseModel(peewee.Model):
    """Base of every model: names the shared database."""

    class Meta:
        database = database
        legacy_table_names = False


class PreparedSelect:
    """A Peewee SELECT whose SQL is built once per engine, then run again with new values.

    Peewee renders a query's SQL anew on every execution, which for a join with a few
    conditions costs more CPU than SQLite takes to answer it; the reads made on every call
    (the session check, the current user) reuse the text instead. `build(*values)` returns the
    query using each value once, in the order given: the first run checks that Peewee's
    parameters are exactly those values in that order, so a later run can bind new ones by
    position. Values must be in their database form (`Field.db_value`, booleans as such).
    """

    def __init__(self, build: Callable[..., peewee.SelectBase]) -> None:
        self._build = build
        self._sql: dict[type, str] = {}  # by engine: placeholders and quoting differ
        self._columns: list[Any] = []  # what the query selects, in order
        self._model: type | None = None  # the model first_model checked the columns against

    def _statement(self, values: Sequence[object]) -> str:
        engine = type(database.obj)
        sql = self._sql.get(engine)
        if sql is None:
            query = self._build(*values)
            sql, params = query.sql()
            if list(params) != list(values):
                raise ValueError(f"prepared query binds {params!r}, not {list(values)!r}")
            self._columns = list(getattr(query, "_returning", ()))
            self._sql[engine] = sql
        return sql

    def first_row(self, *values: object) -> tuple[Any, ...] | None:
        """The first row as a tuple, or None."""
        row: tuple[Any, ...] | None = database.execute_sql(
            self._statement(values), values
        ).fetchone()
        return row

    def first_model(self, model: type[ModelT], *values: object) -> ModelT | None:
        """The first row as a `model` instance (the query must select only `model`'s fields),
        each value converted as Peewee would (`Field.python_value`)."""
        row = self.first_row(*values)
        if row is None:
            return None
        fields = self._columns
        if self._model is not model:
            if not all(isinstance(f, peewee.Field) and f.model is model for f in fields):
                raise ValueError(f"prepared query selects more than fields of {model.__name__}")
            self._model = model
        pairs = zip(fields, row, strict=True)
        return instance_of(model, {field.name: field.python_value(value) for field, value in pairs})


def instance_of(model: type[ModelT], data: dict[str, Any]) -> ModelT:
    """A clean `model` instance holding `data` (field name -> Python value), as Peewee makes
    one from a row, without `Model(**data)` and a descriptor call per field (which cost more
    CPU than reading the row)."""
    instance = model.__new__(model)
    instance.__data__ = data
    instance._dirty = set()  # type: ignore[attr-defined]  # (untyped in the stubs)
    instance.__rel__ = {}
    return instance


def utcnow() -> dt.datetime:
    """Returns the current UTC time as a naive datetime, the form every timestamp column stores."""
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


def rfc3339(stored: dt.datetime) -> str:
    """A stored (naive UTC) time as RFC 3339 text, e.g. 2026-12-05T18:20:11.123456Z."""
    return stored.replace(tzinfo=dt.UTC).isoformat().replace("+00:00", "Z")


class _FileTurn:
    """An exclusive flock(2) on a file beside the database: the writer turn among processes.

    Each process opens the file itself (a forked child reopens it): a descriptor inherited
    across fork shares its lock with the parent. The kernel drops the lock of a process that
    dies, so a killed writer never blocks the others.
    """

    # Waiting polls with short sleeps, doubling up to the last: a turn passes on within about a
    # millisecond of its release, where SQLite's busy handler sleeps up to 100 ms.
    _SLEEPS = (0.0002, 0.0005, 0.001, 0.002)

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd: int | None = None
        self._pid = 0

    def acquire(self, timeout: float) -> bool:
        """Takes the turn; False if another process kept it for `timeout` seconds."""
        fd = self._descriptor()
        deadline = time.monotonic() + timeout
        for attempt in itertools.count():
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    return False
                time.sleep(self._SLEEPS[min(attempt, len(self._SLEEPS) - 1)])
        raise AssertionError("unreachable")

    def release(self) -> None:
        """Gives the turn back."""
        if self._fd is not None and self._pid == os.getpid():
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def _descriptor(self) -> int:
        if self._fd is None or self._pid != os.getpid():
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            self._pid = os.getpid()
        return self._fd


class _SqliteDatabase(PooledSqliteDatabase):  # type: ignore[misc]
    """Pooled SQLite whose write transactions take turns: on a lock in the process, then on a
    file lock among processes (`serve --workers N`, the CLI beside a server).

    SQLite admits one writer; the others wait in its busy handler, which polls with sleeps of up
    to 100 ms, so under load a waiting writer often sleeps long after the lock came free (the
    tail latency of checkouts; with several processes, throughput fell as processes were added).
    A threading.Lock hands the turn over at once within a process; among processes only the one
    thread holding it waits on the file lock, which passes on within a millisecond. A writer
    that does not use this class (sqlite3 by hand) is still covered by busy_timeout.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._writer = threading.Lock()
        self._holding = threading.local()
        path = str(self.database)
        self._file_turn = _FileTurn(f"{path}-writer.lock") if path and path != ":memory:" else None
        # As long as SQLite's own busy timeout, and failing the same way, so that a writer stuck
        # for good cannot hang every other writer of the process.
        self.turn_timeout_seconds = SQLITE_BUSY_TIMEOUT_MS / 1000

    def _take_turn(self) -> None:
        """Waits for this process's turn, then for the turn among processes."""
        deadline = time.monotonic() + self.turn_timeout_seconds
        if not self._writer.acquire(timeout=self.turn_timeout_seconds):
            raise peewee.OperationalError("database is locked")
        if self._file_turn is not None and not self._file_turn.acquire(
            max(0.0, deadline - time.monotonic())
        ):
            self._writer.release()
            raise peewee.OperationalError("database is locked")
        self._holding.held = True

    def _release_writer(self) -> None:
        if getattr(self._holding, "held", False):
            self._holding.held = False
            try:
                if self._file_turn is not None:
                    self._file_turn.release()
            finally:
                self._writer.release()

    def begin(self, lock_type: str | None = None) -> None:
        """Waits for the writer turn (see the class), then BEGINs (IMMEDIATE)."""
        if getattr(self._holding, "held", False):
            # A second BEGIN on this thread would wait for its own turn.
            raise peewee.OperationalError("a write transaction is already open on this thread")
        self._take_turn()
        try:
            super().begin(lock_type)
        except BaseException:
            self._release_writer()
            raise

    def commit(self) -> None:
        """Commits; the turn passes on only if it worked (a failed commit is rolled back)."""
        super().commit()
        self._release_writer()

    def rollback(self) -> None:
        """Rolls back and passes the turn on, even if the rollback itself fails."""
        try:
            super().rollback()
        finally:
            self._release_writer()

    def _add_conn_hooks(self, conn: sqlite3.Connection) -> None:
        super()._add_conn_hooks(conn)
        for name, (function, num_params) in _SQLITE_FUNCTIONS.items():
            conn.create_function(name, num_params, function, deterministic=True)

    def _close(self, conn: Any, close_conn: bool = False) -> None:
        """Returns (or closes) the connection; a turn still held by this thread goes with it."""
        try:
            super()._close(conn, close_conn)
        finally:
            self._release_writer()


def connect_url(url: str, *, pool_size: int = 20, **connect_params: object) -> peewee.Database:
    """Returns an (unconnected) database for `url`: sqlite:///path or psycopg3+pool://..."""
    scheme = urlparse(url).scheme
    if scheme == "sqlite":
        path = url.removeprefix("sqlite:///")
        if path and path != ":memory:":
            directory = Path(path).parent
            try:
                directory.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise OSError(
                    f"database unreachable: cannot create the directory {directory} of the "
                    f"SQLite file: {exc.strerror}"
                ) from None
        # IMMEDIATE: every explicit transaction takes the write lock at BEGIN, so a read-then-write
        # transaction never fails with "database is locked" when it upgrades to a write.
        # Pooled: opening a connection and applying the pragmas costs ~0.9 ms, more than a typical
        # RPC's queries; a pooled connection is reused by whichever worker thread takes it next.
        return _SqliteDatabase(
            path,
            pragmas=SQLITE_PRAGMAS,
            timeout=10,
            lock_type="IMMEDIATE",
            check_same_thread=False,
            max_connections=pool_size,
            stale_timeout=300,
        )
    if scheme in ("postgres", "postgresql", "psycopg3"):
        url = "psycopg3+pool" + url[len(scheme) :]
    if url.startswith("psycopg3+pool:"):
        # timeout: how long an RPC waits for a free pooled connection before failing.
        return db_url.connect(
            url, max_connections=pool_size, stale_timeout=300, timeout=10, **connect_params
        )
    raise ValueError(f"unsupported database URL scheme: {scheme}")


def init_database(url: str, *, pool_size: int = 20, **connect_params: object) -> peewee.Database:
    """Points the shared proxy at the database for `url` and returns it."""
    db = connect_url(url, pool_size=pool_size, **connect_params)
    database.initialize(db)
    return db


def is_sqlite() -> bool:
    """Whether the shared database is SQLite (some SQL differs per engine)."""
    return isinstance(database.obj, peewee.SqliteDatabase)


def lock_transaction_on(key: str) -> None:
    """Serialises transactions that name the same key, until the current transaction ends.

    PostgreSQL takes an advisory lock on the key; SQLite needs nothing, as its IMMEDIATE
    transactions already run one at a time.
    """
    if not is_sqlite():
        database.execute_sql("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (key,))


def try_lock_transaction_on(key: str) -> bool:
    """Like `lock_transaction_on`, but returns False at once when another transaction holds it."""
    if is_sqlite():
        return True
    row = database.execute_sql(
        "SELECT pg_try_advisory_xact_lock(hashtextextended(%s, 0))", (key,)
    ).fetchone()
    return bool(row[0])


def database_reachable(db: peewee.Database) -> bool:
    """Whether a new connection to `db` can be opened and answers a query.

    SQLite is checked with a fresh connection that may not create the file, since a pooled one
    would keep answering from a database file that has been moved or deleted.
    """
    try:
        if isinstance(db, peewee.SqliteDatabase):
            uri = f"{Path(db.database).resolve().as_uri()}?mode=rw"
            fresh = sqlite3.connect(uri, uri=True, timeout=1)
            try:
                fresh.execute("SELECT 1").fetchone()
            finally:
                fresh.close()
        else:
            with db.connection_context():
                db.execute_sql("SELECT 1")
    except (peewee.PeeweeException, sqlite3.Error, OSError):
        return False
    return True


def close_idle_connections(db: peewee.Database) -> None:
    """Closes the pool's idle connections, if `db` is pooled."""
    close_idle = getattr(db, "close_idle", None)
    if close_idle is not None:
        close_idle()


def close_database() -> None:
    """Closes this thread's connection and, for a pool, every idle pooled connection."""
    db = database.obj
    if db is None:
        return
    if not db.is_closed():
        db.close()
    close_all = getattr(db, "close_all", None)
    if close_all is not None:
        close_all()
