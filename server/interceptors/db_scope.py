"""Database connection scope: the connection a call opened is closed when the call ends."""

from __future__ import annotations

import peewee

from server.interceptors.base import Call, ScopeInterceptor


class DatabaseScopeInterceptor(ScopeInterceptor):
    """Closes (or returns to the pool) the worker thread's connection after every call.

    The connection opens lazily on the call's first query, so calls that never touch the
    database (health, reflection, JWKS) never take one.
    """

    def __init__(self, db: peewee.Database) -> None:
        self.db = db

    def exit(self, call: Call, error: BaseException | None) -> None:
        if not self.db.is_closed():
            self.db.close()
