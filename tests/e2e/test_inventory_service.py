"""InventoryService through the client SDK: every RPC, every status code, visibility per role."""

from __future__ import annotations

import uuid

import grpc
import pytest
from storefront.v1 import identity_service_pb2
from storefront.v1 import inventory_service_pb2 as pb
from storefront_client import StorefrontClient, error_info

from server.db import utcnow
from server.domain import idempotency, inventory
from server.domain.principal import Role
from server.models.idempotency_key import IdempotencyKey
from tests.conftest import insert_product
from tests.e2e.conftest import Running, rpc_error, violated_fields

StatusCode = grpc.StatusCode
ANONYMOUS = "anonymous"


def service_client(running: Running) -> StorefrontClient:
    """Returns a client authenticated as a new service account."""
    admin = running.login(Role.ADMIN)
    created = admin.identity.CreateServiceAccount(
        identity_service_pb2.CreateServiceAccountRequest(display_name="inventory-test")
    )
    client = running.client()
    client.use_service_credentials(created.service_account.client_id, created.client_secret)
    return client


def client_for(running: Running, caller: str | Role) -> StorefrontClient:
    if caller == ANONYMOUS:
        return running.client()
    if caller is Role.SERVICE:
        return service_client(running)
    return running.login(Role(caller))


def adjust_request(product_id: str, delta: int, **fields: object) -> pb.AdjustStockRequest:
    values: dict[str, object] = {"reason": "delivery", "request_id": str(uuid.uuid4())}
    values.update(fields)
    return pb.AdjustStockRequest(product_id=product_id, delta=delta, **values)  # type: ignore[arg-type]


# --- GetStockLevel, BatchGetStockLevels: visibility -------------------------------------------


@pytest.mark.parametrize(
    ("caller", "all_terms"),
    [
        (ANONYMOUS, False),
        (Role.CUSTOMER, False),
        (Role.STAFF, True),
        (Role.ADMIN, True),
        (Role.SERVICE, True),
    ],
    ids=str,
)
def test_stock_terms_are_shown_by_role(
    running: Running, caller: str | Role, all_terms: bool
) -> None:
    product_id = insert_product(on_hand=7, reserved=2)
    stub = client_for(running, caller).inventory

    level = stub.GetStockLevel(pb.GetStockLevelRequest(product_id=product_id)).stock_level
    batch = stub.BatchGetStockLevels(pb.BatchGetStockLevelsRequest(product_ids=[product_id]))

    for shown in (level, batch.stock_levels[0]):
        assert shown.product_id == product_id
        assert shown.available == 5
        assert shown.update_time.seconds > 0
        assert shown.HasField("on_hand") is all_terms
        assert shown.HasField("reserved") is all_terms
        if all_terms:
            assert (shown.on_hand, shown.reserved) == (7, 2)


def test_get_stock_level_of_an_archived_product_is_found(running: Running) -> None:
    product_id = insert_product(on_hand=3, state="ARCHIVED")
    level = running.client().inventory.GetStockLevel(pb.GetStockLevelRequest(product_id=product_id))
    assert level.stock_level.available == 3


def test_get_stock_level_of_an_unknown_product_is_not_found(running: Running) -> None:
    stub = running.client().inventory
    err = rpc_error(
        lambda: stub.GetStockLevel(pb.GetStockLevelRequest(product_id=str(uuid.uuid4())))
    )
    assert err.code() == StatusCode.NOT_FOUND
    assert error_info(err)[0] == "PRODUCT_NOT_FOUND"


@pytest.mark.parametrize("product_id", ["", "not-a-uuid", str(uuid.uuid4()).upper()])
def test_get_stock_level_with_a_malformed_id_is_invalid(running: Running, product_id: str) -> None:
    stub = running.client().inventory
    err = rpc_error(lambda: stub.GetStockLevel(pb.GetStockLevelRequest(product_id=product_id)))
    assert err.code() == StatusCode.INVALID_ARGUMENT
    assert violated_fields(err) == {"product_id"}


def test_batch_get_keeps_the_order_and_lists_missing_ids(running: Running) -> None:
    a, b = insert_product(on_hand=1), insert_product(on_hand=2)
    missing = str(uuid.uuid4())
    response = running.client().inventory.BatchGetStockLevels(
        pb.BatchGetStockLevelsRequest(product_ids=[b, missing, a])
    )
    assert [(s.product_id, s.available) for s in response.stock_levels] == [(b, 2), (a, 1)]
    assert list(response.missing_product_ids) == [missing]


@pytest.mark.parametrize(
    ("product_ids", "fields"),
    [
        ([], {"product_ids"}),
        ([str(uuid.uuid4()) for _ in range(101)], {"product_ids"}),
        ([str(uuid.uuid4()), "nope"], {"product_ids[1]"}),
    ],
    ids=["none", "101", "malformed"],
)
def test_batch_get_with_too_many_or_malformed_ids_is_invalid(
    running: Running, product_ids: list[str], fields: set[str]
) -> None:
    stub = running.client().inventory
    err = rpc_error(
        lambda: stub.BatchGetStockLevels(pb.BatchGetStockLevelsRequest(product_ids=product_ids))
    )
    assert err.code() == StatusCode.INVALID_ARGUMENT
    assert violated_fields(err) == fields


# --- AdjustStock --------------------------------------------------------------------------------


def test_adjust_stock_returns_the_new_level_and_the_ledger_entry(running: Running) -> None:
    product_id = insert_product(on_hand=4, reserved=1)
    staff = running.login(Role.STAFF)
    me = staff.identity.GetCurrentUser(identity_service_pb2.GetCurrentUserRequest()).user

    response = staff.inventory.AdjustStock(adjust_request(product_id, 10, reason="delivery 7"))

    level, movement = response.stock_level, response.movement
    assert (level.available, level.on_hand, level.reserved) == (13, 14, 1)
    assert movement.id and movement.product_id == product_id
    assert movement.kind == pb.STOCK_MOVEMENT_KIND_ADJUSTMENT
    assert (movement.on_hand_delta, movement.reserved_delta) == (10, 0)
    assert (movement.on_hand_after, movement.reserved_after) == (14, 1)
    assert (movement.reason, movement.actor) == ("delivery 7", me.id)
    assert movement.create_time.seconds > 0


def test_a_retried_adjustment_returns_the_first_response_and_changes_stock_once(
    running: Running,
) -> None:
    product_id = insert_product(on_hand=5)
    staff = running.login(Role.STAFF)
    request = adjust_request(product_id, -2)

    first = staff.inventory.AdjustStock(request)
    again = staff.inventory.AdjustStock(request)

    assert again == first
    assert again.movement.id == first.movement.id
    level = staff.inventory.GetStockLevel(pb.GetStockLevelRequest(product_id=product_id))
    assert level.stock_level.on_hand == 3
    movements = staff.inventory.ListStockMovements(
        pb.ListStockMovementsRequest(product_id=product_id)
    ).movements
    assert [m.id for m in movements] == [first.movement.id]


def test_the_same_request_id_from_another_caller_is_a_new_request(running: Running) -> None:
    product_id = insert_product()
    request = adjust_request(product_id, 1)
    first = running.login(Role.STAFF).inventory.AdjustStock(request)
    second = running.login(Role.ADMIN).inventory.AdjustStock(request)
    assert second.movement.id != first.movement.id
    assert second.stock_level.on_hand == 2


def test_a_request_id_reused_for_a_different_request_is_a_failed_precondition(
    running: Running,
) -> None:
    product_id = insert_product()
    staff = running.login(Role.STAFF)
    request = adjust_request(product_id, 1)
    staff.inventory.AdjustStock(request)
    changed = adjust_request(product_id, 2, request_id=request.request_id)
    err = rpc_error(lambda: staff.inventory.AdjustStock(changed))
    assert err.code() == StatusCode.FAILED_PRECONDITION
    assert error_info(err)[0] == "IDEMPOTENCY_KEY_REUSED"


def test_a_duplicate_of_an_adjustment_in_flight_is_aborted(running: Running) -> None:
    product_id = insert_product()
    staff = running.login(Role.STAFF)
    me = staff.identity.GetCurrentUser(identity_service_pb2.GetCurrentUserRequest()).user
    request = adjust_request(product_id, 1)
    fields = pb.AdjustStockRequest()
    fields.CopyFrom(request)
    fields.ClearField("request_id")
    now = utcnow()
    # The first call's claim, as it stands while that call runs.
    with running.db.connection_context():
        IdempotencyKey.create(
            principal=me.id,
            key=request.request_id,
            operation=inventory.ADJUST_STOCK_OPERATION,
            request_hash=idempotency.request_hash(
                inventory.ADJUST_STOCK_OPERATION, fields.SerializeToString(deterministic=True)
            ),
            state=idempotency.IN_FLIGHT,
            create_time=now,
            expire_time=now + idempotency.KEY_TTL,
        )
    err = rpc_error(lambda: staff.inventory.AdjustStock(request))
    assert err.code() == StatusCode.ABORTED
    assert error_info(err)[0] == "REQUEST_IN_FLIGHT"
    level = staff.inventory.GetStockLevel(pb.GetStockLevelRequest(product_id=product_id))
    assert level.stock_level.on_hand == 0


def test_a_decrease_beyond_what_is_available_is_a_failed_precondition(running: Running) -> None:
    product_id = insert_product(on_hand=5, reserved=3)
    staff = running.login(Role.STAFF)
    request = adjust_request(product_id, -3)
    err = rpc_error(lambda: staff.inventory.AdjustStock(request))
    assert err.code() == StatusCode.FAILED_PRECONDITION
    assert error_info(err) == ("INSUFFICIENT_STOCK", {"product_id": product_id, "available": "2"})
    # Not stored: once stock arrives, the same request succeeds.
    staff.inventory.AdjustStock(adjust_request(product_id, 1))
    assert staff.inventory.AdjustStock(request).stock_level.on_hand == 3


def test_adjusting_an_unknown_product_is_not_found(running: Running) -> None:
    staff = running.login(Role.STAFF)
    err = rpc_error(lambda: staff.inventory.AdjustStock(adjust_request(str(uuid.uuid4()), 1)))
    assert err.code() == StatusCode.NOT_FOUND


@pytest.mark.parametrize(
    ("fields", "violations"),
    [
        ({"delta": 0}, {"delta"}),
        ({"delta": 1_000_001}, {"delta"}),
        ({"delta": -1_000_001}, {"delta"}),
        ({"reason": ""}, {"reason"}),
        ({"reason": "x" * 201}, {"reason"}),
        ({"request_id": ""}, {"request_id"}),
        ({"request_id": "not-a-uuid"}, {"request_id"}),
        ({"product_id": "nope"}, {"product_id"}),
        ({"delta": 0, "reason": "", "request_id": "x"}, {"delta", "reason", "request_id"}),
    ],
    ids=lambda value: str(value)[:40],
)
def test_adjust_stock_with_invalid_fields_is_invalid_and_stores_nothing(
    running: Running, fields: dict[str, object], violations: set[str]
) -> None:
    product_id = insert_product()
    staff = running.login(Role.STAFF)
    values: dict[str, object] = {"product_id": product_id, "delta": 1}
    values.update(fields)
    request = adjust_request(**values)  # type: ignore[arg-type]
    err = rpc_error(lambda: staff.inventory.AdjustStock(request))
    assert err.code() == StatusCode.INVALID_ARGUMENT
    assert violated_fields(err) == violations
    with running.db.connection_context():
        assert IdempotencyKey.select().count() == 0


@pytest.mark.parametrize(
    ("caller", "code"),
    [(ANONYMOUS, StatusCode.UNAUTHENTICATED), (Role.CUSTOMER, StatusCode.PERMISSION_DENIED)],
    ids=str,
)
def test_only_staff_and_admins_adjust_stock_or_list_movements(
    running: Running, caller: str | Role, code: grpc.StatusCode
) -> None:
    product_id = insert_product()
    stub = client_for(running, caller).inventory
    assert rpc_error(lambda: stub.AdjustStock(adjust_request(product_id, 1))).code() == code
    listing = pb.ListStockMovementsRequest(product_id=product_id)
    assert rpc_error(lambda: stub.ListStockMovements(listing)).code() == code


# --- BatchAdjustStock --------------------------------------------------------------------------


def batch_request(*changes: tuple[str, int], **fields: object) -> pb.BatchAdjustStockRequest:
    values: dict[str, object] = {"reason": "stocktake", "request_id": str(uuid.uuid4())}
    values.update(fields)
    return pb.BatchAdjustStockRequest(
        adjustments=[pb.StockAdjustment(product_id=p, delta=d) for p, d in changes],
        **values,  # type: ignore[arg-type]
    )


def on_hand(staff: StorefrontClient, *product_ids: str) -> list[int]:
    levels = staff.inventory.BatchGetStockLevels(
        pb.BatchGetStockLevelsRequest(product_ids=list(product_ids))
    ).stock_levels
    return [level.on_hand for level in levels]


def test_a_batch_applies_every_adjustment_in_the_order_asked(running: Running) -> None:
    first, second, third = (insert_product(on_hand=n) for n in (5, 0, 9))
    staff = running.login(Role.STAFF)
    request = batch_request((third, -4), (first, 10), (second, 3), reason="stocktake 12")

    response = staff.inventory.BatchAdjustStock(request)

    assert [level.product_id for level in response.stock_levels] == [third, first, second]
    assert [level.on_hand for level in response.stock_levels] == [5, 15, 3]
    assert [m.product_id for m in response.movements] == [third, first, second]
    assert [m.on_hand_delta for m in response.movements] == [-4, 10, 3]
    assert {m.reason for m in response.movements} == {"stocktake 12"}
    assert on_hand(staff, first, second, third) == [15, 3, 5]
    # A retry answers the same and changes nothing again.
    assert staff.inventory.BatchAdjustStock(request) == response
    assert on_hand(staff, first, second, third) == [15, 3, 5]


@pytest.mark.parametrize("failing", ["insufficient", "unknown"])
def test_a_batch_with_one_failing_adjustment_changes_nothing(
    running: Running, failing: str
) -> None:
    first, last = insert_product(on_hand=5), insert_product(on_hand=5, reserved=4)
    staff = running.login(Role.STAFF)
    bad = (last, -2) if failing == "insufficient" else (str(uuid.uuid4()), 1)
    request = batch_request((first, 7), bad)

    err = rpc_error(lambda: staff.inventory.BatchAdjustStock(request))

    if failing == "insufficient":
        assert err.code() == StatusCode.FAILED_PRECONDITION
        assert error_info(err) == ("INSUFFICIENT_STOCK", {"product_id": last, "available": "1"})
    else:
        assert err.code() == StatusCode.NOT_FOUND
        assert error_info(err) == ("PRODUCT_NOT_FOUND", {"product_id": bad[0]})
    assert on_hand(staff, first, last) == [5, 5]
    movements = staff.inventory.ListStockMovements(pb.ListStockMovementsRequest(product_id=first))
    assert not movements.movements
    # Nothing stored under the key: fixed, the same request_id goes through.
    fixed = batch_request((first, 7), request_id=request.request_id)
    assert staff.inventory.BatchAdjustStock(fixed).stock_levels[0].on_hand == 12


def test_a_batch_request_id_reused_for_another_batch_is_a_failed_precondition(
    running: Running,
) -> None:
    product_id = insert_product()
    staff = running.login(Role.STAFF)
    request = batch_request((product_id, 1))
    staff.inventory.BatchAdjustStock(request)
    changed = batch_request((product_id, 2), request_id=request.request_id)
    err = rpc_error(lambda: staff.inventory.BatchAdjustStock(changed))
    assert err.code() == StatusCode.FAILED_PRECONDITION
    assert error_info(err)[0] == "IDEMPOTENCY_KEY_REUSED"


def test_a_batch_duplicate_in_flight_is_aborted(running: Running) -> None:
    product_id = insert_product()
    staff = running.login(Role.STAFF)
    me = staff.identity.GetCurrentUser(identity_service_pb2.GetCurrentUserRequest()).user
    request = batch_request((product_id, 1))
    fields = pb.BatchAdjustStockRequest()
    fields.CopyFrom(request)
    fields.ClearField("request_id")
    now = utcnow()
    with running.db.connection_context():
        IdempotencyKey.create(
            principal=me.id,
            key=request.request_id,
            operation=inventory.BATCH_ADJUST_STOCK_OPERATION,
            request_hash=idempotency.request_hash(
                inventory.BATCH_ADJUST_STOCK_OPERATION,
                fields.SerializeToString(deterministic=True),
            ),
            state=idempotency.IN_FLIGHT,
            create_time=now,
            expire_time=now + idempotency.KEY_TTL,
        )
    err = rpc_error(lambda: staff.inventory.BatchAdjustStock(request))
    assert err.code() == StatusCode.ABORTED
    assert error_info(err)[0] == "REQUEST_IN_FLIGHT"
    assert on_hand(staff, product_id) == [0]


@pytest.mark.parametrize(
    ("changes", "fields", "violations"),
    [
        ((), {}, {"adjustments"}),
        ((("P", 1),) * 101, {}, {"adjustments"}),
        ((("P", 1), ("P", 2)), {}, {"adjustments[1].product_id"}),
        (
            (("P", 0), ("nope", 1_000_001)),
            {},
            {"adjustments[0].delta", "adjustments[1].product_id", "adjustments[1].delta"},
        ),
        ((("P", 1),), {"reason": ""}, {"reason"}),
        ((("P", 1),), {"request_id": "not-a-uuid"}, {"request_id"}),
    ],
    ids=["none", "101", "duplicate", "bad-items", "no-reason", "bad-request-id"],
)
def test_a_batch_with_invalid_fields_is_invalid_and_stores_nothing(
    running: Running,
    changes: tuple[tuple[str, int], ...],
    fields: dict[str, object],
    violations: set[str],
) -> None:
    product_id = insert_product(on_hand=3)
    staff = running.login(Role.STAFF)
    request = batch_request(*((product_id if p == "P" else p, d) for p, d in changes), **fields)
    err = rpc_error(lambda: staff.inventory.BatchAdjustStock(request))
    assert err.code() == StatusCode.INVALID_ARGUMENT
    assert violated_fields(err) == violations
    assert on_hand(staff, product_id) == [3]
    with running.db.connection_context():
        assert IdempotencyKey.select().count() == 0


@pytest.mark.parametrize(
    ("caller", "code"),
    [(ANONYMOUS, StatusCode.UNAUTHENTICATED), (Role.CUSTOMER, StatusCode.PERMISSION_DENIED)],
    ids=str,
)
def test_only_staff_and_admins_adjust_stock_in_batches(
    running: Running, caller: str | Role, code: grpc.StatusCode
) -> None:
    request = batch_request((insert_product(), 1))
    stub = client_for(running, caller).inventory
    assert rpc_error(lambda: stub.BatchAdjustStock(request)).code() == code


# --- ListStockMovements -------------------------------------------------------------------------


def test_movements_are_listed_newest_first_page_by_page(running: Running) -> None:
    product_id = insert_product()
    staff = running.login(Role.STAFF)
    for delta in (1, 2, 3):
        staff.inventory.AdjustStock(adjust_request(product_id, delta))

    first = staff.inventory.ListStockMovements(
        pb.ListStockMovementsRequest(product_id=product_id, page_size=2)
    )
    assert [m.on_hand_delta for m in first.movements] == [3, 2]
    assert [m.on_hand_after for m in first.movements] == [6, 3]
    assert first.next_page_token
    second = staff.inventory.ListStockMovements(
        pb.ListStockMovementsRequest(
            product_id=product_id, page_size=2, page_token=first.next_page_token
        )
    )
    assert [m.on_hand_delta for m in second.movements] == [1]
    assert second.next_page_token == ""


def test_listing_movements_of_an_unknown_product_is_not_found(running: Running) -> None:
    staff = running.login(Role.STAFF)
    request = pb.ListStockMovementsRequest(product_id=str(uuid.uuid4()))
    err = rpc_error(lambda: staff.inventory.ListStockMovements(request))
    assert err.code() == StatusCode.NOT_FOUND


@pytest.mark.parametrize(
    ("page_size", "page_token", "field"),
    [(-1, "", "page_size"), (0, "garbage", "page_token")],
)
def test_listing_movements_with_a_bad_page_size_or_token_is_invalid(
    running: Running, page_size: int, page_token: str, field: str
) -> None:
    product_id = insert_product()
    staff = running.login(Role.STAFF)
    request = pb.ListStockMovementsRequest(
        product_id=product_id, page_size=page_size, page_token=page_token
    )
    err = rpc_error(lambda: staff.inventory.ListStockMovements(request))
    assert err.code() == StatusCode.INVALID_ARGUMENT
    assert violated_fields(err) == {field}


def test_a_page_token_is_bound_to_its_product(running: Running) -> None:
    a, b = insert_product(), insert_product()
    staff = running.login(Role.STAFF)
    for _ in range(2):
        staff.inventory.AdjustStock(adjust_request(a, 1))
    token = staff.inventory.ListStockMovements(
        pb.ListStockMovementsRequest(product_id=a, page_size=1)
    ).next_page_token
    request = pb.ListStockMovementsRequest(product_id=b, page_size=1, page_token=token)
    err = rpc_error(lambda: staff.inventory.ListStockMovements(request))
    assert err.code() == StatusCode.INVALID_ARGUMENT
