"""Migrations on both engines: applied once, recorded, checked at start-up, constraints real."""

from __future__ import annotations

import threading
import uuid
from pathlib import Path

import peewee
import pytest

from server import db as dbmod
from server import migrations
from tests.conftest import POSTGRES_URL


@pytest.fixture(params=["sqlite", "postgres"])
def blank_db(request: pytest.FixtureRequest, tmp_path: Path):
    """An empty database (a fresh SQLite file, or a fresh PostgreSQL schema)."""
    if request.param == "sqlite":
        db = dbmod.connect_url(f"sqlite:///{tmp_path / 'blank.db'}")
        yield db
        db.close()
        return
    request.getfixturevalue("postgres_schema")  # skips or fails as configured
    schema = f"blank_{uuid.uuid4().hex[:10]}"
    admin = dbmod.connect_url(POSTGRES_URL, pool_size=1)
    with admin.connection_context():
        admin.execute_sql(f'CREATE SCHEMA "{schema}"')
    db = dbmod.connect_url(POSTGRES_URL, pool_size=8, options=f"-c search_path={schema}")
    yield db
    db.close_all()  # type: ignore[attr-defined]
    with admin.connection_context():
        admin.execute_sql(f'DROP SCHEMA "{schema}" CASCADE')
    admin.close_all()  # type: ignore[attr-defined]


def test_check_schema_refuses_an_unmigrated_database_and_says_what_to_run(blank_db) -> None:
    with pytest.raises(migrations.SchemaOutOfDate, match="run `storefront migrate`"):
        migrations.check_schema(blank_db)


def test_migrate_applies_everything_once(blank_db) -> None:
    names = [m.name for m in migrations.discover()]
    assert migrations.migrate(blank_db) == names
    assert migrations.migrate(blank_db) == []
    migrations.check_schema(blank_db)
    with blank_db.connection_context():
        assert migrations.applied_versions(blank_db) == set(range(1, len(names) + 1))


def test_concurrent_migrators_apply_each_migration_exactly_once(blank_db) -> None:
    results: list[list[str]] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(4)

    def run() -> None:
        barrier.wait()
        try:
            results.append(migrations.migrate(blank_db))
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    applied = [name for result in results for name in result]
    assert sorted(applied) == sorted(m.name for m in migrations.discover())


def test_a_database_newer_than_the_code_is_refused(blank_db) -> None:
    migrations.migrate(blank_db)
    with blank_db.connection_context():
        blank_db.execute_sql(
            "INSERT INTO schema_migrations (version, name, applied_time) "
            "VALUES (999, 'm0999_future', CURRENT_TIMESTAMP)"
        )
    with pytest.raises(migrations.SchemaOutOfDate, match="newer than this code"):
        migrations.check_schema(blank_db)


def test_role_check_constraint_is_enforced(blank_db) -> None:
    migrations.migrate(blank_db)
    with blank_db.connection_context(), pytest.raises(peewee.IntegrityError):
        blank_db.execute_sql(
            "INSERT INTO users (id, email, display_name, role, password_hash, disabled, "
            "email_verified, version, create_time, update_time) VALUES "
            "('x', 'a@b.c', '', 'ROOT', 'h', false, false, 1, CURRENT_TIMESTAMP, "
            "CURRENT_TIMESTAMP)"
        )


def test_login_failures_gain_a_client_address_keeping_existing_rows(blank_db) -> None:
    earlier = [m for m in migrations.discover() if m.version < 8]
    [m0008] = [m for m in migrations.discover() if m.version == 8]
    with blank_db.connection_context():
        with blank_db.atomic():
            for migration in earlier:
                migration.up(blank_db)
        blank_db.execute_sql(
            "INSERT INTO login_failures (email, attempt_time) VALUES ('a@example.com', "
            "'2026-01-01 00:00:00')"
        )
        with blank_db.atomic():
            m0008.up(blank_db)
        rows = blank_db.execute_sql("SELECT email, client_address FROM login_failures").fetchall()
        assert [tuple(r) for r in rows] == [("a@example.com", "")]
        blank_db.execute_sql(
            "INSERT INTO login_failures (email, client_address, attempt_time) "
            "VALUES ('a@example.com', '203.0.113.1', '2026-01-01 00:00:00')"
        )
        indexed = {tuple(i.columns) for i in blank_db.get_indexes("login_failures")}
        assert ("email", "client_address", "attempt_time") in indexed
        assert ("client_address", "attempt_time") in indexed
