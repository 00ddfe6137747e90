"""Hot-path reads (PreparedSelect, listing.instances) answer as Peewee's own queries do, on
both engines.

Each case runs the prepared statement at least twice: the first run renders the SQL, the later
ones reuse it with new values.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import peewee
import pytest

from server.db import PreparedSelect, database, utcnow
from server.domain import listing, sessions, users
from server.domain.principal import Principal, Role
from server.domain.sessions import SessionPolicy
from server.errors import Unauthenticated
from server.models import user as user_model
from server.models.product import Product
from server.models.session import Session
from server.models.stock import StockMovement
from server.models.user import User
from tests.conftest import insert_product

PASSWORD = "correct horse battery staple"


def signed_in(email: str, policy: SessionPolicy) -> Principal:
    """Registers and signs in `email`; returns the principal its access token names."""
    users.register(email=email, password=PASSWORD, display_name="", passwords=policy.passwords)
    _, tokens = sessions.login(email=email, password=PASSWORD, policy=policy)
    return policy.tokens.verify(tokens.access.token)


def refused(principal: Principal) -> bool:
    try:
        sessions.authorize(principal)
    except Unauthenticated as exc:
        assert exc.reason == "SESSION_REVOKED"
        return True
    return False


def test_the_session_check_follows_revocation_expiry_disabling_and_role(
    db: peewee.Database, policy: SessionPolicy
) -> None:
    ann = signed_in("ann@example.com", policy)
    bob = signed_in("bob@example.com", policy)
    assert sessions.authorize(ann) == ann
    assert sessions.authorize(bob) == bob

    # A role change shows at once.
    User.update(role=Role.STAFF.value).where(User.id == ann.subject).execute()
    assert sessions.authorize(ann).role is Role.STAFF
    # Another user's session id under ann's subject is not ann's session.
    assert refused(Principal(ann.subject, ann.role, ann.token_id, bob.session_id))
    # Disabled, expired, revoked: each refuses, and undoing it lets the call through again.
    User.update(disabled=True).where(User.id == ann.subject).execute()
    assert refused(ann)
    User.update(disabled=False).where(User.id == ann.subject).execute()
    assert not refused(ann)
    Session.update(expire_time=utcnow() - dt.timedelta(seconds=1)).where(
        Session.id == bob.session_id
    ).execute()
    assert refused(bob)
    Session.update(expire_time=utcnow() + dt.timedelta(hours=1)).where(
        Session.id == bob.session_id
    ).execute()
    assert not refused(bob)
    sessions.logout(principal=bob, all_sessions=False)
    assert refused(bob)


def test_the_prepared_user_read_is_the_user_row(db: peewee.Database, policy: SessionPolicy) -> None:
    ann = signed_in("ann@example.com", policy)
    signed_in("bob@example.com", policy)
    for user in User.select():
        read = user_model.get(user.id)
        assert read is not None
        assert read.__data__ == User.get_by_id(user.id).__data__
    assert user_model.get("00000000-0000-4000-8000-000000000000") is None
    assert users.get_or_raise(ann.subject).email == "ann@example.com"


def test_a_prepared_query_whose_values_bind_out_of_order_is_refused(db: peewee.Database) -> None:
    crossed = PreparedSelect(
        lambda email, user_id: User.select(User.id).where(
            (User.id == user_id) & (User.email == email)
        )
    )
    with database.connection_context(), pytest.raises(ValueError, match="binds"):
        crossed.first_row("ann@example.com", "00000000-0000-4000-8000-000000000000")


def assert_built_as_peewee_does(query: peewee.ModelSelect[Any]) -> None:
    expected = list(query)
    built = listing.instances(query)
    assert len(built) == len(expected) > 0
    assert [row.__data__ for row in built] == [row.__data__ for row in expected]
    assert [type(row) for row in built] == [type(row) for row in expected]
    assert all(not row.is_dirty() for row in built)


def test_list_pages_build_the_same_instances_as_peewee(db: peewee.Database) -> None:
    product_ids = [insert_product(on_hand=5) for _ in range(3)]
    for product_id in product_ids:
        StockMovement.create(
            product=product_id,
            kind="ADJUSTMENT",
            on_hand_delta=5,
            reserved_delta=0,
            on_hand_after=5,
            reserved_after=0,
            reason="restock",
            actor="test",
        )
    assert_built_as_peewee_does(Product.select().order_by(Product.id))
    # A foreign key among the columns:
    assert_built_as_peewee_does(StockMovement.select().order_by(StockMovement.id))
    # An instance from a page can be changed and saved like any other.
    first = listing.instances(Product.select().where(Product.id == product_ids[0]))[0]
    first.name = "Renamed"
    assert first.dirty_fields == [Product.name]
    first.save()
    assert Product.get_by_id(product_ids[0]).name == "Renamed"
