"""SQLite write transactions take turns on a lock in the process, and always give it back."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import peewee
import pytest

from server import db as dbmod


@pytest.fixture
def sqlite(tmp_path: Path) -> Iterator[peewee.Database]:
    db = dbmod.connect_url(f"sqlite:///{tmp_path / 'turns.db'}", pool_size=8)
    with db.connection_context():
        db.execute_sql("CREATE TABLE counter (id INTEGER PRIMARY KEY, n INTEGER NOT NULL)")
        db.execute_sql("INSERT INTO counter (id, n) VALUES (1, 0)")
    yield db
    db.close_all()  # type: ignore[attr-defined]


def _count(db: peewee.Database) -> int:
    with db.connection_context():
        return int(db.execute_sql("SELECT n FROM counter WHERE id = 1").fetchone()[0])


def _increment(db: peewee.Database) -> None:
    """A read-modify-write: only correct if transactions really run one at a time."""
    with db.connection_context(), db.atomic():
        n = db.execute_sql("SELECT n FROM counter WHERE id = 1").fetchone()[0]
        db.execute_sql("UPDATE counter SET n = ? WHERE id = 1", (n + 1,))


def test_concurrent_writers_all_finish_without_a_lost_update(sqlite: peewee.Database) -> None:
    """Turns and SQLite's own lock together: no deadlock, no write lost (the turn's effect on
    latency is measured in make bench, not here)."""
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(lambda _: _increment(sqlite), range(400)))
    assert _count(sqlite) == 400


def test_a_failed_transaction_gives_the_turn_back(sqlite: peewee.Database) -> None:
    class Boom(Exception):
        pass

    with pytest.raises(Boom), sqlite.connection_context(), sqlite.atomic():
        sqlite.execute_sql("UPDATE counter SET n = 99 WHERE id = 1")
        raise Boom
    # Another thread can write at once (a held turn would block it until the timeout).
    done = threading.Event()

    def write() -> None:
        _increment(sqlite)
        done.set()

    writer = threading.Thread(target=write)
    writer.start()
    assert done.wait(timeout=10)
    writer.join()
    assert _count(sqlite) == 1


def test_a_failed_begin_gives_the_turn_back(sqlite: peewee.Database) -> None:
    with sqlite.connection_context():
        # BEGIN inside an open transaction fails in SQLite itself.
        sqlite.execute_sql("BEGIN")
        with pytest.raises(peewee.OperationalError), sqlite.atomic():
            pass
        sqlite.execute_sql("ROLLBACK")
    _increment(sqlite)
    assert _count(sqlite) == 1


def test_nested_atomic_blocks_take_one_turn(sqlite: peewee.Database) -> None:
    with sqlite.connection_context(), sqlite.atomic():
        with sqlite.atomic():  # a savepoint, not a second BEGIN: no second turn to wait for
            sqlite.execute_sql("UPDATE counter SET n = n + 1 WHERE id = 1")
        sqlite.execute_sql("UPDATE counter SET n = n + 1 WHERE id = 1")
    _increment(sqlite)
    assert _count(sqlite) == 3


def test_a_writer_that_never_gets_its_turn_fails_like_a_locked_database(
    sqlite: peewee.Database,
) -> None:
    sqlite.turn_timeout_seconds = 0.2  # type: ignore[attr-defined]
    holding, release = threading.Event(), threading.Event()

    def hold_the_turn() -> None:
        with sqlite.connection_context(), sqlite.atomic():
            holding.set()
            assert release.wait(10)

    holder = threading.Thread(target=hold_the_turn)
    holder.start()
    try:
        assert holding.wait(10)
        with pytest.raises(peewee.OperationalError, match="database is locked"):
            _increment(sqlite)
    finally:
        release.set()
        holder.join(10)
    _increment(sqlite)  # the turn is free again, and the refused writer left nothing held
    assert _count(sqlite) == 1


def test_a_second_begin_on_one_thread_fails_at_once(sqlite: peewee.Database) -> None:
    with sqlite.connection_context(), sqlite.atomic():
        with pytest.raises(peewee.OperationalError, match="already open on this thread"):
            sqlite.begin()
        sqlite.execute_sql("UPDATE counter SET n = n + 1 WHERE id = 1")
    _increment(sqlite)  # the first transaction's turn was given back
    assert _count(sqlite) == 2


# A second process: counts how long it waited for its turn, then increments (see _increment).
_OTHER_PROCESS = """
import sys, time
from server import db as dbmod
db = dbmod.connect_url("sqlite:///" + sys.argv[1], pool_size=1)
db.turn_timeout_seconds = float(sys.argv[2])
started = time.monotonic()
try:
    with db.connection_context(), db.atomic():
        waited = time.monotonic() - started
        n = db.execute_sql("SELECT n FROM counter WHERE id = 1").fetchone()[0]
        db.execute_sql("UPDATE counter SET n = ? WHERE id = 1", (n + 1,))
except Exception as exc:
    print("refused", exc)
else:
    print("waited", waited)
"""


def _other_process(db: peewee.Database, timeout: float) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", _OTHER_PROCESS, str(db.database), str(timeout)],
        stdout=subprocess.PIPE,
        text=True,
    )


def test_the_turn_is_shared_with_other_processes(sqlite: peewee.Database) -> None:
    """Another process waits on the turn file, not in SQLite's busy handler: it fails the same
    way after its own timeout, and gets the turn once this transaction ends."""
    with sqlite.connection_context(), sqlite.atomic():
        sqlite.execute_sql("UPDATE counter SET n = n + 1 WHERE id = 1")
        refused = _other_process(sqlite, 0.3)
        assert refused.communicate(timeout=30)[0].startswith("refused database is locked")
        waiting = _other_process(sqlite, 30)
        time.sleep(0.5)  # it is waiting for the turn now (or still starting up)
    out = waiting.communicate(timeout=30)[0]
    assert out.startswith("waited"), out
    assert _count(sqlite) == 2
    assert Path(f"{sqlite.database}-writer.lock").exists()


def test_a_killed_holder_of_the_turn_does_not_block_the_others(sqlite: peewee.Database) -> None:
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\n"
            "from server import db as dbmod\n"
            "db = dbmod.connect_url('sqlite:///' + sys.argv[1], pool_size=1)\n"
            "with db.connection_context(), db.atomic():\n"
            "    db.execute_sql('UPDATE counter SET n = 100 WHERE id = 1')\n"
            "    print('holding', flush=True)\n"
            "    time.sleep(60)\n",
            str(sqlite.database),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None and holder.stdout.readline().strip() == "holding"
    holder.kill()
    holder.wait(timeout=30)
    _increment(sqlite)  # the kernel released the dead process's turn; its write rolled back
    assert _count(sqlite) == 1
