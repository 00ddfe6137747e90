"""OrderService.WatchOrder on a real server: the order as it is, then its events as they happen."""

from __future__ import annotations

import queue
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

import grpc
import pytest
from storefront.v1 import order_pb2
from storefront.v1 import order_service_pb2 as pb
from storefront_client import StorefrontClient, error_info, field_violations

from server.domain.principal import Role
from tests.e2e.conftest import Running, place_paid_order, rpc_error, wait_for

StatusCode = grpc.StatusCode
WAIT_SECONDS = 10.0
Message = TypeVar("Message")


def place_order(running: Running) -> tuple[StorefrontClient, order_pb2.Order]:
    purchase = place_paid_order(running)
    return purchase.customer, purchase.order


class Watch(Generic[Message]):
    """A server stream read on a thread of its own into a queue."""

    def __init__(self, call: Any) -> None:
        self.call = call
        self.updates: queue.Queue[Message | grpc.RpcError] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        try:
            for update in self.call:
                self.updates.put(update)
        except grpc.RpcError as err:
            self.updates.put(err)

    def next(self) -> Message:
        update = self.updates.get(timeout=WAIT_SECONDS)
        if isinstance(update, grpc.RpcError):
            raise update
        return update

    def error(self) -> grpc.RpcError:
        update = self.updates.get(timeout=WAIT_SECONDS)
        assert isinstance(update, grpc.RpcError), update
        return update

    def quiet(self, seconds: float = 0.5) -> bool:
        time.sleep(seconds)
        return self.updates.empty()


def watch_order(
    client: StorefrontClient, order_id: str, after_sequence: int = 0
) -> Watch[pb.WatchOrderResponse]:
    return Watch(
        client.orders.WatchOrder(
            pb.WatchOrderRequest(order_id=order_id, after_sequence=after_sequence), timeout=60
        )
    )


def watch_orders(
    client: StorefrontClient,
    *states: order_pb2.OrderState.ValueType,
    after_position: int = 0,
) -> Watch[pb.WatchOrdersResponse]:
    return Watch(
        client.orders.WatchOrders(
            pb.WatchOrdersRequest(states=states, after_position=after_position), timeout=60
        )
    )


@pytest.fixture
def watches() -> Iterator[list[Watch[Any]]]:
    opened: list[Watch[Any]] = []
    yield opened
    for watch in opened:
        watch.call.cancel()


def ship(running: Running, order_id: str) -> None:
    running.login(Role.STAFF).orders.ShipOrder(
        pb.ShipOrderRequest(
            order_id=order_id, request_id=str(uuid.uuid4()), carrier="DHL", tracking_number="T1"
        )
    )


def test_a_watch_starts_with_the_order_and_then_streams_its_events(
    running: Running, watches: list[Watch[Any]]
) -> None:
    customer, order = place_order(running)
    watch = watch_order(customer, order.id)
    watches.append(watch)

    first = watch.next()
    assert (first.order_id, first.sequence, first.event_type) == (order.id, 2, "")
    assert first.state == order_pb2.ORDER_STATE_PAID
    assert first.order.id == order.id and first.order.total == order.total

    ship(running, order.id)
    shipped = watch.next()
    assert (shipped.sequence, shipped.event_type) == (3, "order.shipped")
    assert shipped.state == order_pb2.ORDER_STATE_SHIPPED
    assert not shipped.HasField("order")
    assert watch.quiet()


def test_a_resumed_watch_gets_the_rest_without_gap_or_duplicate(
    running: Running, watches: list[Watch[Any]]
) -> None:
    customer, order = place_order(running)
    ship(running, order.id)
    watch = watch_order(customer, order.id, after_sequence=1)
    watches.append(watch)
    updates = [watch.next(), watch.next()]
    assert [(u.sequence, u.event_type) for u in updates] == [
        (2, "order.payment_captured"),
        (3, "order.shipped"),
    ]
    assert watch.quiet()


def test_staff_may_watch_any_order_and_other_customers_none(
    running: Running, watches: list[Watch[Any]]
) -> None:
    _, order = place_order(running)
    staff_watch = watch_order(running.login(Role.STAFF), order.id)
    watches.append(staff_watch)
    assert staff_watch.next().sequence == 2

    stranger = watch_order(running.login(Role.CUSTOMER), order.id)
    err = stranger.error()
    assert (err.code(), error_info(err)[0]) == (StatusCode.NOT_FOUND, "ORDER_NOT_FOUND")
    invalid = watch_order(running.login(Role.CUSTOMER), order.id, after_sequence=-1)
    assert invalid.error().code() == StatusCode.INVALID_ARGUMENT


def test_beyond_the_stream_cap_watches_are_refused_and_unary_calls_still_served(
    server_factory: Callable[..., Running], watches: list[Watch[Any]]
) -> None:
    running = server_factory(max_open_streams=2, worker_threads=2)
    customer, order = place_order(running)
    for _ in range(2):
        watch = watch_order(customer, order.id)
        watches.append(watch)
        assert watch.next().sequence == 2
    refused = watch_order(customer, order.id)
    err = refused.error()
    assert (err.code(), error_info(err)[0]) == (StatusCode.RESOURCE_EXHAUSTED, "STREAM_LIMIT")
    # Both unary workers are free: calls in parallel still complete.
    results = []
    threads = [
        threading.Thread(
            target=lambda: results.append(
                customer.orders.GetOrder(pb.GetOrderRequest(order_id=order.id), timeout=5)
            )
        )
        for _ in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 4

    watches[0].call.cancel()  # frees its slot at once
    deadline = time.monotonic() + 2
    while True:
        again = watch_order(customer, order.id)
        watches.append(again)
        update = again.updates.get(timeout=WAIT_SECONDS)
        if not isinstance(update, grpc.RpcError):
            assert update.sequence == 2
            break
        assert time.monotonic() < deadline, update
        time.sleep(0.05)


def test_no_stream_is_served_when_the_cap_is_zero(
    server_factory: Callable[..., Running],
) -> None:
    running = server_factory(max_open_streams=0)
    customer, order = place_order(running)
    err = rpc_error(
        lambda: next(iter(customer.orders.WatchOrder(pb.WatchOrderRequest(order_id=order.id))))
    )
    assert err.code() == StatusCode.RESOURCE_EXHAUSTED


def test_the_sdk_watch_resumes_across_a_server_restart_without_gap_or_duplicate(
    server_factory: Callable[..., Running],
) -> None:
    first = server_factory()
    customer, order = place_order(first)
    address = first.target
    received: queue.Queue[pb.WatchOrderResponse | BaseException] = queue.Queue()

    def watch() -> None:
        try:
            for update in customer.watch_order(order.id):
                received.put(update)
        except BaseException as exc:
            received.put(exc)

    threading.Thread(target=watch, daemon=True).start()
    snapshot = received.get(timeout=WAIT_SECONDS)
    assert isinstance(snapshot, pb.WatchOrderResponse) and snapshot.sequence == 2

    first.app.stop(grace=0)  # the stream breaks; the helper retries with backoff
    second = server_factory(grpc_address=address)

    def shipped_through_second() -> bool:
        try:  # the new listener may take a moment to accept connections
            ship(second, order.id)
        except grpc.RpcError as err:
            assert err.code() == StatusCode.UNAVAILABLE, err
            return False
        return True

    assert wait_for(shipped_through_second, WAIT_SECONDS)
    shipped = received.get(timeout=WAIT_SECONDS * 3)
    assert isinstance(shipped, pb.WatchOrderResponse), shipped
    assert (shipped.sequence, shipped.event_type) == (3, "order.shipped")
    time.sleep(0.5)
    assert received.empty()  # the resumed stream started after 2: no snapshot, no repeat


# WatchOrders: every order's events, shop-wide, by position.


def shop_updates(watch: Watch[pb.WatchOrdersResponse], count: int) -> list[tuple[Any, ...]]:
    """The next `count` messages as (position, order id, sequence, event type, state)."""
    found = []
    for _ in range(count):
        message = watch.next()
        update = message.update
        found.append(
            (message.position, update.order_id, update.sequence, update.event_type, update.state)
        )
    return found


def test_staff_see_every_orders_events_once_each_order_in_sequence(
    running: Running, watches: list[Watch[Any]]
) -> None:
    staff = running.login(Role.STAFF)
    watch = watch_orders(staff)
    watches.append(watch)
    start = watch.next()
    assert not start.HasField("update")

    first = place_paid_order(running).order
    second = place_paid_order(running).order
    ship(running, first.id)
    seen = shop_updates(watch, 5)
    positions = [position for position, *_ in seen]
    assert positions == sorted(positions) and len(set(positions)) == 5
    assert positions[0] > start.position
    by_order = {
        order_id: [
            (sequence, event_type, state)
            for _, oid, sequence, event_type, state in seen
            if oid == order_id
        ]
        for order_id in (first.id, second.id)
    }
    assert by_order[first.id] == [
        (1, "order.placed", order_pb2.ORDER_STATE_PENDING_PAYMENT),
        (2, "order.payment_captured", order_pb2.ORDER_STATE_PAID),
        (3, "order.shipped", order_pb2.ORDER_STATE_SHIPPED),
    ]
    assert [sequence for sequence, *_ in by_order[second.id]] == [1, 2]
    assert watch.quiet()


def test_a_state_filter_and_a_resume_give_exactly_the_events_asked_for(
    running: Running, watches: list[Watch[Any]]
) -> None:
    staff = running.login(Role.STAFF)
    everything = watch_orders(staff)
    shipped_only = watch_orders(staff, order_pb2.ORDER_STATE_SHIPPED)
    watches += [everything, shipped_only]
    everything.next()
    shipped_only.next()

    order = place_paid_order(running).order
    ship(running, order.id)
    seen = shop_updates(everything, 3)
    [(position, order_id, sequence, _, state)] = shop_updates(shipped_only, 1)
    assert (position, order_id, sequence, state) == (
        seen[2][0],
        order.id,
        3,
        order_pb2.ORDER_STATE_SHIPPED,
    )
    assert shipped_only.quiet()

    # Reconnecting after the first event gets the other two, then nothing more.
    resumed = watch_orders(staff, after_position=seen[0][0])
    watches.append(resumed)
    assert resumed.next().position == seen[0][0]
    assert shop_updates(resumed, 2) == seen[1:]
    assert resumed.quiet()


def test_customers_may_not_watch_every_order_and_bad_requests_are_named(
    running: Running,
) -> None:
    customer_watch = watch_orders(running.login(Role.CUSTOMER))
    assert customer_watch.error().code() == StatusCode.PERMISSION_DENIED
    staff = running.login(Role.STAFF)
    negative = watch_orders(staff, after_position=-1).error()
    assert negative.code() == StatusCode.INVALID_ARGUMENT
    assert [name for name, _ in field_violations(negative)] == ["after_position"]
    unspecified = watch_orders(
        staff, order_pb2.ORDER_STATE_PAID, order_pb2.ORDER_STATE_UNSPECIFIED
    ).error()
    assert unspecified.code() == StatusCode.INVALID_ARGUMENT
    assert field_violations(unspecified) == [("states[1]", "must be a known order state")]


def test_shop_watches_share_the_stream_cap(
    server_factory: Callable[..., Running], watches: list[Watch[Any]]
) -> None:
    running = server_factory(max_open_streams=1)
    staff = running.login(Role.STAFF)
    first = watch_orders(staff)
    watches.append(first)
    first.next()
    err = watch_orders(staff).error()
    assert (err.code(), error_info(err)[0]) == (StatusCode.RESOURCE_EXHAUSTED, "STREAM_LIMIT")


def test_a_commit_through_another_server_wakes_its_watchers_at_once(
    server_factory: Callable[..., Running], watches: list[Watch[Any]]
) -> None:
    # Neither the streams' own poll nor the dispatcher's interval comes round within the test:
    # only PostgreSQL's notification or SQLite's outbox poller can wake the watcher's server.
    # Started second, the other server's in-process outbox consumers replace the first one's,
    # so nothing in this process wakes the watcher's streams directly.
    slow = {"watch_poll_seconds": 60.0, "dispatch_interval_seconds": 60.0}
    watching = server_factory(**slow)
    changing = server_factory(**slow)
    assert watching.app.listener is not None
    assert watching.app.listener.listening.wait(WAIT_SECONDS)
    order = place_paid_order(changing).order
    staff = watching.login(Role.STAFF)
    one = watch_order(staff, order.id)
    shop = watch_orders(staff)
    watches += [one, shop]
    assert one.next().sequence == 2
    shop.next()

    ship(changing, order.id)
    shipped = one.next()
    assert (shipped.sequence, shipped.event_type) == (3, "order.shipped")
    [(_, order_id, sequence, event_type, _)] = shop_updates(shop, 1)
    assert (order_id, sequence, event_type) == (order.id, 3, "order.shipped")


def test_the_sdk_shop_watch_resumes_across_a_server_restart_without_gap_or_duplicate(
    server_factory: Callable[..., Running],
) -> None:
    first = server_factory()
    order = place_paid_order(first).order
    staff = first.login(Role.STAFF)
    received: queue.Queue[pb.WatchOrdersResponse | BaseException] = queue.Queue()
    opened = threading.Event()

    def watch() -> None:
        try:
            updates = staff.watch_orders(order_pb2.ORDER_STATE_SHIPPED, order_pb2.ORDER_STATE_PAID)
            opened.set()
            for update in updates:
                received.put(update)
        except BaseException as exc:
            received.put(exc)

    threading.Thread(target=watch, daemon=True).start()
    assert opened.wait(WAIT_SECONDS)
    ship(first, order.id)
    shipped = received.get(timeout=WAIT_SECONDS)
    assert isinstance(shipped, pb.WatchOrdersResponse), shipped
    assert (shipped.update.order_id, shipped.update.sequence) == (order.id, 3)

    address = first.target
    first.app.stop(grace=0)  # the stream breaks; the helper retries with backoff
    second = server_factory(grpc_address=address)
    other = place_paid_order(second).order  # PLACED (filtered out), then PAID
    paid = received.get(timeout=WAIT_SECONDS * 3)
    assert isinstance(paid, pb.WatchOrdersResponse), paid
    assert (paid.update.order_id, paid.update.sequence) == (other.id, 2)
    assert paid.position > shipped.position
    time.sleep(0.5)
    assert received.empty()  # resumed after the shipped event: nothing repeated


def test_a_stopping_server_ends_its_streams_with_unavailable_shutting_down(
    server_factory: Callable[..., Running],
) -> None:
    running = server_factory()
    customer, order = place_order(running)
    one = watch_order(customer, order.id)
    shop = watch_orders(running.login(Role.STAFF))
    one.next()
    shop.next()
    running.app.stop()
    for watch in (one, shop):
        err = watch.error()
        assert (err.code(), error_info(err)[0]) == (StatusCode.UNAVAILABLE, "SHUTTING_DOWN")
