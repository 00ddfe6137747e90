"""Request keys stored before idempotency moved into the domain still match, and replay.

Before, the servicers claimed request_ids themselves: the operation was the full method name and
the fingerprint the request message without its request_id. A key stored then must be judged
the same request after the move (a replay, not IDEMPOTENCY_KEY_REUSED), and AdjustStock's
stored replies (whole serialised responses) are rewritten by migration 7 to replay unchanged.
"""

from __future__ import annotations

import uuid

from google.protobuf.message import Message
from storefront.v1 import cart_service_pb2 as cart_pb
from storefront.v1 import identity_service_pb2 as identity_pb
from storefront.v1 import inventory_service_pb2 as inventory_pb
from storefront_client import StorefrontClient

from server.db import utcnow
from server.domain import idempotency
from server.domain.principal import Role
from server.migrations import m0007_adjust_stock_replies
from server.models.idempotency_key import IdempotencyKey
from tests.conftest import insert_product
from tests.e2e.conftest import Running


def store_as_before(
    running: Running, principal: str, method: str, request: Message, response: bytes
) -> None:
    """Stores a finished request_id exactly as the servicers did before the reshape."""
    fields = type(request)()
    fields.CopyFrom(request)
    fields.ClearField("request_id")
    now = utcnow()
    with running.db.connection_context():
        IdempotencyKey.create(
            principal=principal,
            key=request.request_id,  # type: ignore[attr-defined]
            operation=method,
            request_hash=idempotency.request_hash(
                method, fields.SerializeToString(deterministic=True)
            ),
            state=idempotency.DONE,
            response=response,
            create_time=now,
            expire_time=now + idempotency.KEY_TTL,
        )


def _my_id(client: StorefrontClient) -> str:
    return str(client.identity.GetCurrentUser(identity_pb.GetCurrentUserRequest()).user.id)


def test_an_add_to_cart_stored_before_replays_after(running: Running) -> None:
    customer = running.login(Role.CUSTOMER)
    with running.db.connection_context():
        product_id = insert_product(on_hand=5)
    request = cart_pb.AddCartItemRequest(
        product_id=product_id, quantity=2, request_id=str(uuid.uuid4())
    )
    store_as_before(
        running,
        _my_id(customer),
        "/storefront.v1.CartService/AddCartItem",
        request,
        b"the-first-line-id",
    )
    replayed = customer.cart.AddCartItem(request)
    assert replayed.line_id == "the-first-line-id"
    assert not replayed.cart.lines  # nothing was added again


def test_an_adjustment_stored_before_replays_the_same_response_after_migration(
    running: Running,
) -> None:
    staff = running.login(Role.STAFF)
    with running.db.connection_context():
        product_id = insert_product(on_hand=3)
    request = inventory_pb.AdjustStockRequest(
        product_id=product_id, delta=4, reason="delivery", request_id=str(uuid.uuid4())
    )
    first = staff.inventory.AdjustStock(request)
    # As the key looked before: the whole serialised response stored under the request_id.
    key = (IdempotencyKey.key == request.request_id) & (IdempotencyKey.principal == _my_id(staff))
    with running.db.connection_context():
        IdempotencyKey.update(response=first.SerializeToString(deterministic=True)).where(
            key
        ).execute()
        with running.db.atomic():
            m0007_adjust_stock_replies.up(running.db)
        stored = IdempotencyKey.get(key)
    assert stored.response is not None and bytes(stored.response) == first.movement.id.encode()

    staff.inventory.AdjustStock(
        inventory_pb.AdjustStockRequest(
            product_id=product_id, delta=1, reason="later", request_id=str(uuid.uuid4())
        )
    )
    assert staff.inventory.AdjustStock(request) == first  # not the level of now


def test_a_stored_reply_without_a_ledger_entry_is_dropped_by_the_migration(
    running: Running,
) -> None:
    with running.db.connection_context():
        now = utcnow()
        IdempotencyKey.create(
            principal="someone",
            key=str(uuid.uuid4()),
            operation=m0007_adjust_stock_replies.OPERATION,
            request_hash="0" * 64,
            state=idempotency.DONE,
            response=b"not a response",
            create_time=now,
            expire_time=now + idempotency.KEY_TTL,
        )
        with running.db.atomic():
            m0007_adjust_stock_replies.up(running.db)
        assert not IdempotencyKey.select().where(IdempotencyKey.principal == "someone").exists()
