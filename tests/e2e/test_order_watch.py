"""OrderService.WatchOrder on a real server: the order as it is, then its events as they happen."""

from __future__ import annotations

import queue
import threading
import time
import uuid
from collections.abc import Callable, Iterator

import grpc
import pytest
from storefront.v1 import order_pb2
from storefront.v1 import order_service_pb2 as pb
from storefront_client import StorefrontClient, error_info

from server.domain.principal import Role
from tests.e2e.conftest import Running, place_paid_order, rpc_error, wait_for

StatusCode = grpc.StatusCode
WAIT_SECONDS = 10.0


def place_order(running: Running) -> tuple[StorefrontClient, order_pb2.Order]:
    purchase = place_paid_order(running)
    return purchase.customer, purchase.order


class Watch:
    """A WatchOrder stream read on a thread of its own into a queue."""

    def __init__(self, client: StorefrontClient, order_id: str, after_sequence: int = 0) -> None:
        self.call = client.orders.WatchOrder(
            pb.WatchOrderRequest(order_id=order_id, after_sequence=after_sequence), timeout=60
        )
        self.updates: queue.Queue[pb.WatchOrderResponse | grpc.RpcError] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        try:
            for update in self.call:
                self.updates.put(update)
        except grpc.RpcError as err:
            self.updates.put(err)

    def next(self) -> pb.WatchOrderResponse:
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


@pytest.fixture
def watches() -> Iterator[list[Watch]]:
    opened: list[Watch] = []
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
    running: Running, watches: list[Watch]
) -> None:
    customer, order = place_order(running)
    watch = Watch(customer, order.id)
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
    running: Running, watches: list[Watch]
) -> None:
    customer, order = place_order(running)
    ship(running, order.id)
    watch = Watch(customer, order.id, after_sequence=1)
    watches.append(watch)
    updates = [watch.next(), watch.next()]
    assert [(u.sequence, u.event_type) for u in updates] == [
        (2, "order.payment_captured"),
        (3, "order.shipped"),
    ]
    assert watch.quiet()


def test_staff_may_watch_any_order_and_other_customers_none(
    running: Running, watches: list[Watch]
) -> None:
    _, order = place_order(running)
    staff_watch = Watch(running.login(Role.STAFF), order.id)
    watches.append(staff_watch)
    assert staff_watch.next().sequence == 2

    stranger = Watch(running.login(Role.CUSTOMER), order.id)
    err = stranger.error()
    assert (err.code(), error_info(err)[0]) == (StatusCode.NOT_FOUND, "ORDER_NOT_FOUND")
    invalid = Watch(running.login(Role.CUSTOMER), order.id, after_sequence=-1)
    assert invalid.error().code() == StatusCode.INVALID_ARGUMENT


def test_beyond_the_stream_cap_watches_are_refused_and_unary_calls_still_served(
    server_factory: Callable[..., Running], watches: list[Watch]
) -> None:
    running = server_factory(max_open_streams=2, worker_threads=2)
    customer, order = place_order(running)
    for _ in range(2):
        watch = Watch(customer, order.id)
        watches.append(watch)
        assert watch.next().sequence == 2
    refused = Watch(customer, order.id)
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
        again = Watch(customer, order.id)
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
