"""Three replicas on PostgreSQL behind nginx (grpc_pass): every call goes through nginx.

Stock, idempotency and payments hold across replicas; a replica killed or stopped under load
costs no acknowledged work; PostgreSQL restarting turns every replica NOT_SERVING and back.
"""

from __future__ import annotations

import difflib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2
from storefront.v1 import cart_service_pb2 as cart_pb
from storefront.v1 import checkout_service_pb2 as checkout_pb
from storefront.v1 import identity_service_pb2 as identity_pb
from storefront_client import StorefrontClient, error_info

from deploy import cluster
from server.domain.orders import payment_key
from server.payments.http_gateway import charge_idempotency_header
from tests.cluster.conftest import (
    CALL_TIMEOUT,
    PASSWORD,
    WAIT_SECONDS,
    Customer,
    Load,
    PrivatePostgres,
    Shop,
    Store,
    Tally,
    all_at_once,
    handled,
    in_flight,
    in_parallel,
    outcome_of,
    replica_variables,
    require_nginx,
)
from tests.e2e.test_checkout_concurrency import order_request
from tests.e2e.test_workers import poll

BUYERS = 200
STOCK = 50
DUPLICATES = 50
LOAD_STOCK = 1_000_000
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def charge_key(order_id: str) -> str:
    """The Idempotency-Key the replicas send to the provider for the order's charge."""
    return charge_idempotency_header(payment_key(order_id))


def assert_each_order_paid_and_charged_once(shop: Shop, order_ids: set[str], before: int) -> None:
    """Every order is PAID, with exactly one charge at the provider, and nothing else was charged
    since the provider had `before` charges."""
    assert shop.provider is not None
    orders = shop.store.orders()
    assert {orders[order_id][2] for order_id in order_ids} <= {"PAID"}
    assert {shop.provider.charges_created(charge_key(order_id)) for order_id in order_ids} <= {1}
    assert shop.provider.total_charges_created() - before == len(order_ids)


def assert_one_order_per_request(shop: Shop, tally: Tally, orders_before: set[str]) -> set[str]:
    """The orders made since `orders_before` are exactly those acknowledged, one per request_id
    and customer; returns their ids."""
    made = {
        order_id: (customer, request_id)
        for order_id, (customer, request_id, _) in shop.store.orders().items()
        if order_id not in orders_before
    }
    acknowledged = {
        order_id: (tally.buyers[request_id], request_id)
        for request_id, order_id in tally.orders.items()
    }
    assert made == acknowledged
    return set(made)


def logged_checkouts(replica: cluster.Replica) -> int:
    """PlaceOrder calls the replica has logged as finished, whatever their code."""
    return replica.log_path.read_text().count('"grpc.method": "PlaceOrder"')


def place(customer: Customer, request: checkout_pb.PlaceOrderRequest | None = None) -> str:
    """Places an order (a new request unless `request` is given); returns its id."""
    request = request or order_request()
    return customer.client.checkout.PlaceOrder(request, timeout=CALL_TIMEOUT).order.id


# --- the config ----------------------------------------------------------------------------------


def test_the_local_nginx_config_is_the_deploy_config_with_local_addresses(tmp_path: Path) -> None:
    require_nginx()
    template = cluster.NGINX_CONF.read_text()
    # What deploy/compose.yaml relies on.
    assert re.search(r"^\s*listen 8080 http2;", template, re.MULTILINE)
    assert re.findall(r"^\s*server (storefront-\d):50051 ", template, re.MULTILINE) == [
        "storefront-1",
        "storefront-2",
        "storefront-3",
    ]

    rendered = cluster.render_nginx_config(
        template,
        listen="127.0.0.1:18080",
        upstreams=["127.0.0.1:15001", "127.0.0.1:15002"],
        directory=tmp_path,
    )
    diff = list(difflib.ndiff(template.splitlines(), rendered.splitlines()))
    removed = {line[2:].split()[0] for line in diff if line.startswith("- ")}
    added = {line[2:].strip() for line in diff if line.startswith("+ ")}
    assert removed == {"server", "listen", "pid", "error_log", "access_log"}
    assert {
        "listen 127.0.0.1:18080 http2;",
        "server 127.0.0.1:15001 max_fails=1 fail_timeout=5s;",
        "server 127.0.0.1:15002 max_fails=1 fail_timeout=5s;",
        f"pid {tmp_path}/nginx.pid;",
        f"grpc_bind {cluster.NGINX_SOURCE_ADDRESS};",
    } <= added
    assert all(str(tmp_path) in line or "127.0.0." in line for line in added)

    (tmp_path / "temp").mkdir()
    (tmp_path / "nginx.conf").write_text(rendered)
    executable = cluster.nginx_executable()
    assert executable is not None
    checked = subprocess.run(
        [executable, "-t", "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert checked.returncode == 0, checked.stderr


def test_the_cluster_command_serves_through_nginx_until_ctrl_c_then_stops_everything(
    cluster_database_url: str, tmp_path: Path
) -> None:
    require_nginx()
    url = cluster.with_database(
        cluster_database_url, cluster.database_name(cluster_database_url) + "_cmd"
    )
    listen = f"127.0.0.1:{cluster.free_port()}"
    command = subprocess.Popen(
        [
            sys.executable,
            str(cluster.ROOT / "deploy" / "cluster.py"),
            f"--database-url={url}",
            f"--listen={listen}",
            f"--directory={tmp_path}",
        ],
        env={k: v for k, v in os.environ.items() if not k.startswith("STOREFRONT_")},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        assert command.stdout is not None
        lines = []
        for line in command.stdout:
            lines.append(line)
            if line.startswith("Ctrl-C"):
                break
        printed = "".join(lines)
        assert f"gRPC (nginx)  {listen}" in printed, printed
        replicas = re.findall(r"replica-\d +(127\.0\.0\.1:\d+) +metrics (http://\S+)", printed)
        assert len(replicas) == 3, printed
        assert cluster.health_status(listen) == SERVING
        for address, metrics_url in replicas:
            assert cluster.health_status(address) == SERVING
            assert metrics_url.endswith("/metrics")

        # Ctrl-C in a terminal signals the whole foreground process group.
        os.killpg(command.pid, signal.SIGINT)
        output, _ = command.communicate(timeout=WAIT_SECONDS)
        assert command.returncode == 0, printed + output
        assert "cluster: stopped" in output
        for address in [listen, *(address for address, _ in replicas)]:
            assert cluster.health_status(address, timeout=1) is None, f"{address} still answers"
        for name in ("replica-1", "replica-2", "replica-3"):
            assert "signal SIGTERM: draining" in (tmp_path / f"{name}.log").read_text()
    finally:
        if command.poll() is None:
            os.killpg(command.pid, signal.SIGKILL)
            command.wait()
        cluster.drop_database(url)


# --- stock, idempotency and payments across replicas ---------------------------------------------


def test_200_buyers_racing_for_50_units_over_3_replicas_get_exactly_50_orders(
    serving_shop: Shop,
) -> None:
    shop = serving_shop
    assert shop.provider is not None
    [product_id] = shop.store.create_products(1, on_hand=STOCK)
    buyers = shop.customers(BUYERS)
    add = cart_pb.AddCartItemRequest(product_id=product_id, quantity=1)
    in_parallel([partial(buyer.client.cart.AddCartItem, add) for buyer in buyers])
    charges_before = shop.provider.total_charges_created()
    calls_before = [handled(replica, "PlaceOrder") for replica in shop.cluster.replicas]

    seen: list[tuple[int, int]] = []
    racing = threading.Event()

    def watch() -> None:
        while racing.is_set():
            seen.append(shop.store.stock(product_id))

    racing.set()
    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        outcomes = all_at_once([partial(outcome_of, partial(place, buyer)) for buyer in buyers])
    finally:
        racing.clear()
        watcher.join()

    placed = {order_id for code, order_id in outcomes if code == "OK"}
    assert len(placed) == STOCK
    assert Counter(outcome for outcome in outcomes if outcome[0] != "OK") == {
        ("FAILED_PRECONDITION", "OUT_OF_STOCK"): BUYERS - STOCK
    }
    assert seen, "the watcher saw the stock at least once"
    assert all(0 <= reserved <= on_hand <= STOCK for on_hand, reserved in seen)
    assert shop.store.stock(product_id) == (0, 0)
    assert_each_order_paid_and_charged_once(shop, placed, charges_before)
    calls = [
        handled(replica, "PlaceOrder") - before
        for replica, before in zip(shop.cluster.replicas, calls_before, strict=True)
    ]
    assert sum(calls) == BUYERS and min(calls) > 0, calls


def test_50_duplicates_of_one_request_over_the_replicas_make_one_order_and_one_charge(
    serving_shop: Shop,
) -> None:
    shop = serving_shop
    assert shop.provider is not None
    [customer] = shop.customers(1)
    [product_id] = shop.store.create_products(1, on_hand=10)
    customer.client.cart.AddCartItem(cart_pb.AddCartItemRequest(product_id=product_id, quantity=2))
    request = order_request()
    charges_before = shop.provider.total_charges_created()
    calls_before = [handled(replica, "PlaceOrder") for replica in shop.cluster.replicas]

    duplicate = partial(outcome_of, partial(place, customer, request))
    outcomes = all_at_once([duplicate] * DUPLICATES)

    [order_id] = [
        order_id for order_id, (owner, _, _) in shop.store.orders().items() if owner == customer.id
    ]
    answers = Counter(outcomes)
    assert set(answers) <= {("OK", order_id), ("ABORTED", "REQUEST_IN_FLIGHT")}
    assert answers[("OK", order_id)] >= 1
    assert_each_order_paid_and_charged_once(shop, {order_id}, charges_before)
    assert shop.store.stock(product_id) == (8, 0)
    # Every replica answered some of them, and nginx passed each on exactly once.
    calls = [
        handled(replica, "PlaceOrder") - before
        for replica, before in zip(shop.cluster.replicas, calls_before, strict=True)
    ]
    assert sum(calls) == DUPLICATES and min(calls) > 0, calls

    # A retry after they finished returns the same order; nothing more is charged.
    assert duplicate() == ("OK", order_id)
    assert shop.provider.total_charges_created() == charges_before + 1


def test_replicas_count_the_caller_behind_nginx_by_address_and_ignore_a_forged_one(
    serving_shop: Shop,
) -> None:
    shop = serving_shop
    [(_, email)] = shop.store.create_users(1)
    # Five wrong passwords straight to a replica, from 127.0.0.1, lock the account for that
    # address (the correct password included) ...
    with StorefrontClient(shop.cluster.replicas[0].address) as direct:
        for _ in range(5):
            err = outcome_of(lambda: direct.login(email, "not the password at all").id)
            assert err == ("UNAUTHENTICATED", "INVALID_CREDENTIALS")
    # ... and through nginx the replicas see the same caller: nginx's own address (the peer)
    # is trusted, so its x-forwarded-for names the client; a hop the client forged is not.
    through_nginx = shop.client()
    login = identity_pb.LoginRequest(email=email, password=PASSWORD)
    for forged in ((), (("x-forwarded-for", "203.0.113.7"),)):
        try:
            through_nginx.identity.Login(login, metadata=forged, timeout=CALL_TIMEOUT)
        except grpc.RpcError as err:
            assert (err.code(), error_info(err)[0]) == (
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                "LOGIN_THROTTLED",
            )
        else:
            raise AssertionError(f"signed in through nginx (forged: {forged})")


# --- replicas lost under load --------------------------------------------------------------------


@dataclass
class LoadBaseline:
    """Eight buyers, each with a product of their own, and what existed before the load."""

    buyers: list[Customer]
    products: list[str]
    orders_before: set[str]
    charges_before: int


def eight_buyers_with_slow_charges(shop: Shop, charge_delay: float) -> LoadBaseline:
    """Prepares a load of eight buyers whose charges take `charge_delay` seconds, so that a
    replica stopped under it is in the middle of at least one checkout."""
    assert shop.provider is not None
    buyers = shop.customers(8)
    products = shop.store.create_products(8, on_hand=LOAD_STOCK)
    baseline = LoadBaseline(
        buyers, products, set(shop.store.orders()), shop.provider.total_charges_created()
    )
    shop.provider.delay(charge_delay)
    return baseline


def test_a_replica_killed_under_load_loses_no_read_and_no_checkout(serving_shop: Shop) -> None:
    shop = serving_shop
    base = eight_buyers_with_slow_charges(shop, 0.3)
    buyers, products = base.buyers, base.products
    victim = shop.cluster.replicas[1]

    with Load(
        shop, readers=4, buyers=list(zip(buyers, products, strict=True)), settle_seconds=20.0
    ) as load:
        assert poll(lambda: load.orders_placed() >= 6)
        assert poll(lambda: in_flight(victim, "PlaceOrder") >= 1)
        victim.kill()
        placed_at_kill = load.orders_placed()
        # The load goes on over the two others.
        assert poll(lambda: load.orders_placed() >= placed_at_kill + 8)
    tally = load.tally

    attempted = tally.reads + len(tally.read_failures)
    assert tally.reads / attempted >= 0.995, Counter(tally.read_failures)
    # Every checkout ended in an order: some after retries with the same request_id (the
    # killed replica's claims are taken over once it is known to be dead).
    assert tally.failures == [], tally.repeated
    placed = assert_one_order_per_request(shop, tally, base.orders_before)
    assert_each_order_paid_and_charged_once(shop, placed, base.charges_before)
    # One unit per order left each buyer's stock, and nothing stays reserved.
    sold = Counter(tally.buyers.values())
    for buyer, product_id in zip(buyers, products, strict=True):
        assert shop.store.stock(product_id) == (LOAD_STOCK - sold[buyer.id], 0)


def test_a_replica_drained_out_of_nginx_under_load_fails_no_call(serving_shop: Shop) -> None:
    shop = serving_shop
    # Slow charges: checkouts are in progress on the replica when it is taken out.
    base = eight_buyers_with_slow_charges(shop, 0.5)
    buyers, products = base.buyers, base.products
    victim = shop.cluster.replicas[2]

    with Load(
        shop, readers=4, buyers=list(zip(buyers, products, strict=True)), settle_seconds=0
    ) as load:
        assert poll(lambda: load.orders_placed() >= 6)
        logged: list[int] = []

        def checkout_in_progress() -> bool:
            # Counted before the metrics are read: the call in progress is not in it yet.
            logged[:] = [logged_checkouts(victim)]
            return in_flight(victim, "PlaceOrder") >= 1

        assert poll(checkout_in_progress)
        assert shop.cluster.drain(victim) == 0
        placed_at_exit = load.orders_placed()
        assert poll(lambda: load.orders_placed() >= placed_at_exit + 8)
    tally = load.tally

    # No call failed, with nothing but the SDK's own retries of UNAVAILABLE (settle_seconds=0).
    assert tally.read_failures == []
    assert tally.failures == []
    placed = assert_one_order_per_request(shop, tally, base.orders_before)
    assert_each_order_paid_and_charged_once(shop, placed, base.charges_before)
    # The checkouts in progress when nginx let go of the replica were finished there.
    assert logged_checkouts(victim) > logged[0]
    assert "signal SIGTERM: draining" in victim.log_path.read_text()


def test_sigterm_alone_finishes_the_calls_in_progress_and_cancels_only_unstarted_ones(
    serving_shop: Shop,
) -> None:
    shop = serving_shop
    # Slow charges: checkouts are in progress on the replica when it is told to stop.
    base = eight_buyers_with_slow_charges(shop, 0.5)
    buyers, products = base.buyers, base.products
    victim = shop.cluster.replicas[2]

    assert shop.provider is not None
    with Load(
        shop, readers=4, buyers=list(zip(buyers, products, strict=True)), settle_seconds=0
    ) as load:
        assert poll(lambda: load.orders_placed() >= 6)
        # Charges wait at the provider until the victim drains: a checkout it started before
        # the signal is certainly still in progress when the signal comes.
        shop.provider.hold()
        try:
            assert poll(lambda: in_flight(victim, "PlaceOrder") >= 1)
            victim.signal(signal.SIGTERM)
            assert poll(lambda: "signal SIGTERM: draining" in victim.log_path.read_text())
        finally:
            shop.provider.release()
        assert victim.wait(timeout=WAIT_SECONDS) == 0
        placed_at_exit = load.orders_placed()
        assert poll(lambda: load.orders_placed() >= placed_at_exit + 8)
    tally = load.tally

    # nginx keeps sending calls until the replica stops listening; grpc cancels the few that had
    # arrived but not reached a handler at that instant (hence Cluster.drain). Nothing else fails.
    assert set(tally.read_failures) <= {"CANCELLED"}
    assert {outcome[0] for _, _, outcome in tally.failures} <= {"CANCELLED"}
    assert len(tally.read_failures) + len(tally.failures) <= 12  # at most one per caller
    # A cancelled checkout never ran: every order is one acknowledged request, paid once.
    placed = assert_one_order_per_request(shop, tally, base.orders_before)
    assert_each_order_paid_and_charged_once(shop, placed, base.charges_before)
    # The checkouts in progress when the signal came were finished, not cut.
    log = victim.log_path.read_text()
    drained = log[log.rindex("signal SIGTERM: draining") :]
    assert re.search(r'"grpc.method": "PlaceOrder".*"grpc.code": "OK"', drained), drained[-2000:]


# --- PostgreSQL restarted ------------------------------------------------------------------------


def test_postgres_restarted_turns_every_replica_not_serving_then_serving_and_loses_nothing(
    private_postgres: PrivatePostgres, tmp_path: Path
) -> None:
    require_nginx()
    url = private_postgres.url("storefront")
    cluster.create_database(url)
    with cluster.running_cluster(url, tmp_path, variables=replica_variables()) as running:
        shop = Shop(running, Store(url), provider=None)
        try:
            buyers = shop.customers(4)
            products = shop.store.create_products(4, on_hand=LOAD_STOCK)
            shop.store.close()
            with Load(
                shop, readers=2, buyers=list(zip(buyers, products, strict=True)), settle_seconds=0
            ) as load:
                assert poll(lambda: load.orders_placed() >= 8)
                private_postgres.stop("immediate")  # as a crash would: recovery at the start
                went_down: set[str] = set()

                def all_not_serving() -> bool:
                    for replica in running.replicas:
                        if cluster.health_status(replica.address) == NOT_SERVING:
                            went_down.add(replica.name)
                    return len(went_down) == len(running.replicas)

                assert poll(all_not_serving), f"NOT_SERVING while the database is down: {went_down}"
                acknowledged_before = load.acknowledged()
                private_postgres.start()
                back = time.monotonic()
                serving_after: dict[str, float] = {}

                def all_serving() -> bool:
                    for replica in running.replicas:
                        if replica.name not in serving_after and (
                            cluster.health_status(replica.address) == SERVING
                        ):
                            serving_after[replica.name] = time.monotonic() - back
                    return len(serving_after) == len(running.replicas)

                assert poll(all_serving, timeout=15.0)
                assert max(serving_after.values()) <= 10.0, serving_after
                # Calls succeed again, not only health.
                placed_when_back = load.orders_placed()
                assert poll(lambda: load.orders_placed() >= placed_when_back + 4)
            tally = load.tally
        finally:
            shop.close()

    # Every order acknowledged, before, during or after the restart, is there and paid.
    after = Store(url)
    try:
        orders = after.orders()
    finally:
        after.close()
    acknowledged = set(tally.orders.values())
    assert acknowledged_before <= acknowledged
    assert acknowledged <= set(orders)
    assert {orders[order_id][2] for order_id in acknowledged} == {"PAID"}
