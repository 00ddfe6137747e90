"""The HTTP payment gateway against a fake provider served over real HTTP on 127.0.0.1."""

from __future__ import annotations

import json
import logging
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from server.logs import JsonFormatter
from server.payments import (
    Charge,
    ChargeStatus,
    CircuitBreaker,
    CircuitState,
    HttpPaymentGateway,
    PaymentDeclined,
    PaymentGateway,
    PaymentOutcomeUnknown,
    PaymentProviderError,
    PaymentProviderUnavailable,
    RefundExceedsCharge,
)
from server.payments.http_gateway import charge_idempotency_header, refund_idempotency_header
from tests.fakes.payment_provider import SECRET_KEY, FakePaymentProvider

# Short enough that a hang costs a fraction of a second, long enough for a loaded CI machine
# to answer a healthy request on loopback.
TIMEOUT = 0.2
KEY = "order:7f3c"
HEADER = charge_idempotency_header(KEY)


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Harness:
    """A gateway wired to the fake, with recorded sleeps and a clock the test moves."""

    def __init__(self, provider: FakePaymentProvider) -> None:
        self.provider = provider
        self.clock = FakeClock()
        self.sleeps: list[float] = []
        self.transitions: list[CircuitState] = []
        self.breaker = CircuitBreaker(
            failure_threshold=3,
            reset_seconds=30,
            clock=self.clock,
            on_state_change=self.transitions.append,
        )

    def gateway(self, **overrides: Any) -> HttpPaymentGateway:
        settings: dict[str, Any] = {
            "base_url": self.provider.base_url,
            "secret_key": SECRET_KEY,
            "connect_timeout": TIMEOUT,
            "read_timeout": TIMEOUT,
            "max_retries": 2,
            "breaker": self.breaker,
            "sleep": self.sleeps.append,
            "jitter": lambda: 0.5,
        }
        return HttpPaymentGateway(**(settings | overrides))


@pytest.fixture
def provider() -> Iterator[FakePaymentProvider]:
    with FakePaymentProvider() as running:
        running.hang_seconds = 2.0
        yield running


@pytest.fixture
def harness(provider: FakePaymentProvider) -> Harness:
    return Harness(provider)


@pytest.fixture
def gateway(harness: Harness) -> HttpPaymentGateway:
    return harness.gateway()


def charge(gateway: PaymentGateway, method: str = "tok_visa", **overrides: Any) -> Charge:
    arguments: dict[str, Any] = {
        "idempotency_key": KEY,
        "amount_minor": 4200,
        "currency": "USD",
        "payment_method_token": method,
        "description": "Order 7f3c",
    }
    return gateway.charge(**(arguments | overrides))


def test_a_charge_succeeds_with_one_request(
    gateway: HttpPaymentGateway, provider: FakePaymentProvider, harness: Harness
) -> None:
    result = charge(gateway)
    assert (result.status, result.amount_minor, result.currency) == (
        ChargeStatus.SUCCEEDED,
        4200,
        "USD",
    )
    assert result.idempotency_key == KEY
    [request] = provider.requests
    assert (request.method, request.path, request.idempotency_key, request.authorized) == (
        "POST",
        "/v1/charges",
        HEADER,
        True,
    )
    assert provider.charges_created(HEADER) == 1
    assert provider.charge(result.id)["description"] == "Order 7f3c"
    assert harness.sleeps == []


@pytest.mark.parametrize(
    ("token", "code"),
    [
        ("tok_declined", "card_declined"),
        ("tok_insufficient_funds", "insufficient_funds"),
        ("tok_stolen_elsewhere", "invalid_payment_method"),
    ],
)
def test_a_decline_is_final_and_never_retried(
    gateway: HttpPaymentGateway,
    provider: FakePaymentProvider,
    harness: Harness,
    token: str,
    code: str,
) -> None:
    with pytest.raises(PaymentDeclined) as caught:
        charge(gateway, token)
    assert caught.value.code == code
    assert len(provider.requests) == 1
    assert harness.sleeps == []
    assert harness.breaker.state is CircuitState.CLOSED
    found = gateway.find_charge(idempotency_key=KEY)
    assert found is not None
    assert (found.status, found.decline_code) == (ChargeStatus.DECLINED, code)


@pytest.mark.parametrize("status", [500, 502, 503, 504, 429])
def test_server_errors_are_retried_under_one_key_and_charge_once(
    gateway: HttpPaymentGateway, provider: FakePaymentProvider, harness: Harness, status: int
) -> None:
    provider.fail_next(2, status=status)
    result = charge(gateway)
    assert result.status is ChargeStatus.SUCCEEDED
    assert [r.idempotency_key for r in provider.requests] == [HEADER] * 3
    assert provider.charges_created(HEADER) == 1
    # Exponential (0.25 s then 0.5 s ceilings), half jittered: jitter 0.5 gives 3/4 of each.
    assert harness.sleeps == pytest.approx([0.1875, 0.375])


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (503, PaymentProviderUnavailable),  # refused unprocessed: safe to release the order
        (429, PaymentProviderUnavailable),
        (500, PaymentOutcomeUnknown),  # may have been processed: reconcile
        (502, PaymentOutcomeUnknown),
    ],
)
def test_when_retries_run_out_the_error_says_whether_money_may_have_moved(
    gateway: HttpPaymentGateway,
    provider: FakePaymentProvider,
    status: int,
    error: type[Exception],
) -> None:
    provider.fail_next(3, status=status)
    with pytest.raises(error):
        charge(gateway)
    assert len(provider.requests) == 3
    assert provider.charges_created(HEADER) == 0


def test_a_hang_then_an_answer_charges_once(
    gateway: HttpPaymentGateway, provider: FakePaymentProvider
) -> None:
    provider.hang_next(1)  # the charge is made, its answer never arrives
    result = charge(gateway)
    assert result.status is ChargeStatus.SUCCEEDED
    assert [r.idempotency_key for r in provider.requests] == [HEADER, HEADER]
    assert provider.charges_created(HEADER) == 1


def test_hangs_make_the_outcome_unknown_and_find_charge_reconciles_it(
    gateway: HttpPaymentGateway, provider: FakePaymentProvider, harness: Harness
) -> None:
    provider.hang_next(3)
    with pytest.raises(PaymentOutcomeUnknown) as caught:
        charge(gateway)
    assert caught.value.idempotency_key == KEY
    assert len(provider.requests) == 3
    # Three failures opened the breaker; reconciliation runs once it lets a call through.
    harness.clock.now += 30
    found = gateway.find_charge(idempotency_key=KEY)
    assert found is not None
    assert (found.status, found.amount_minor) == (ChargeStatus.SUCCEEDED, 4200)
    # Charging again with the same key is another way to reconcile: the provider replays.
    assert charge(gateway).id == found.id
    assert provider.charges_created(HEADER) == 1


def test_a_request_lost_before_processing_reconciles_to_no_charge(
    gateway: HttpPaymentGateway, provider: FakePaymentProvider, harness: Harness
) -> None:
    provider.hang_next(3, processed=False)
    with pytest.raises(PaymentOutcomeUnknown):
        charge(gateway)
    harness.clock.now += 30
    assert gateway.find_charge(idempotency_key=KEY) is None
    assert provider.total_charges_created() == 0


def test_a_slow_answer_within_the_timeout_is_fine(
    gateway: HttpPaymentGateway, provider: FakePaymentProvider
) -> None:
    provider.delay(TIMEOUT / 4)
    assert charge(gateway).status is ChargeStatus.SUCCEEDED
    assert len(provider.requests) == 1


def test_an_outage_opens_the_breaker_which_fails_fast_then_recovers(
    gateway: HttpPaymentGateway, provider: FakePaymentProvider, harness: Harness
) -> None:
    provider.fail_next(3, status=503)
    with pytest.raises(PaymentProviderUnavailable):
        charge(gateway)
    assert harness.breaker.state is CircuitState.OPEN
    assert len(provider.requests) == 3

    sleeps = len(harness.sleeps)
    for _ in range(5):
        with pytest.raises(PaymentProviderUnavailable):
            charge(gateway, idempotency_key="order:other")
    assert len(provider.requests) == 3  # no network traffic while open
    assert len(harness.sleeps) == sleeps  # and no waiting either

    harness.clock.now += 30
    result = charge(gateway)  # the one trial call
    assert result.status is ChargeStatus.SUCCEEDED
    assert harness.transitions == [CircuitState.OPEN, CircuitState.HALF_OPEN, CircuitState.CLOSED]
    assert len(provider.requests) == 4
    assert provider.charges_created(HEADER) == 1


def test_a_failed_trial_opens_the_breaker_again(
    gateway: HttpPaymentGateway, provider: FakePaymentProvider, harness: Harness
) -> None:
    provider.fail_next(4, status=503)
    with pytest.raises(PaymentProviderUnavailable):
        charge(gateway)
    harness.clock.now += 30
    with pytest.raises(PaymentProviderUnavailable):
        charge(gateway)
    assert harness.transitions == [CircuitState.OPEN, CircuitState.HALF_OPEN, CircuitState.OPEN]
    assert len(provider.requests) == 4  # only the trial went out; the retry met an open breaker


def test_a_provider_that_refuses_connections_is_unavailable_not_unknown(
    harness: Harness,
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    gateway = harness.gateway(base_url=f"http://127.0.0.1:{closed_port}")
    with pytest.raises(PaymentProviderUnavailable):
        charge(gateway)
    assert harness.breaker.state is CircuitState.OPEN  # three attempts, three failures


def test_concurrent_charges_with_one_key_charge_once(
    gateway: HttpPaymentGateway, provider: FakePaymentProvider
) -> None:
    start = threading.Barrier(20)
    ids: list[str] = []
    lock = threading.Lock()

    def call() -> None:
        start.wait()
        result = charge(gateway)
        with lock:
            ids.append(result.id)

    threads = [threading.Thread(target=call) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(ids) == 20 and len(set(ids)) == 1
    assert provider.charges_created(HEADER) == 1


def test_refunds_go_up_to_the_captured_amount(
    gateway: HttpPaymentGateway, provider: FakePaymentProvider
) -> None:
    captured = charge(gateway)
    provider.fail_next(1, status=502)
    first = gateway.refund(idempotency_key="refund:1", charge_id=captured.id, amount_minor=4000)
    assert (first.charge_id, first.amount_minor) == (captured.id, 4000)
    refund_keys = [r.idempotency_key for r in provider.requests if r.path == "/v1/refunds"]
    assert refund_keys == [refund_idempotency_header("refund:1")] * 2
    again = gateway.refund(idempotency_key="refund:1", charge_id=captured.id, amount_minor=4000)
    assert again.id == first.id
    with pytest.raises(RefundExceedsCharge):
        gateway.refund(idempotency_key="refund:2", charge_id=captured.id, amount_minor=201)
    gateway.refund(idempotency_key="refund:3", charge_id=captured.id, amount_minor=200)
    assert provider.charge(captured.id)["amount_refunded"] == 4200


def test_a_refund_of_an_unknown_charge_is_a_provider_error(gateway: HttpPaymentGateway) -> None:
    with pytest.raises(PaymentProviderError, match="404"):
        gateway.refund(idempotency_key="refund:1", charge_id="ch_missing", amount_minor=1)


def test_a_key_reused_with_another_amount_is_a_provider_error(
    gateway: HttpPaymentGateway, provider: FakePaymentProvider
) -> None:
    charge(gateway)
    with pytest.raises(PaymentProviderError, match="idempotency_error"):
        charge(gateway, amount_minor=1)
    assert provider.charges_created(HEADER) == 1


def test_a_wrong_secret_key_is_a_clear_error_without_retries(
    harness: Harness, provider: FakePaymentProvider
) -> None:
    gateway = harness.gateway(secret_key="sk_live_wrong_value")
    with pytest.raises(PaymentProviderError, match=r"rejected the secret key \(HTTP 401\)") as e:
        charge(gateway)
    assert "sk_live_wrong_value" not in str(e.value)
    assert [r.authorized for r in provider.requests] == [False]
    assert harness.breaker.state is CircuitState.CLOSED  # the provider is up; we are wrong


def test_the_secret_key_never_reaches_logs_errors_or_reprs(
    harness: Harness, provider: FakePaymentProvider, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    gateway = harness.gateway()
    provider.fail_next(2, status=500)
    charge(gateway)
    provider.hang_next(3)
    problems: list[Exception] = []
    with pytest.raises(PaymentOutcomeUnknown) as unknown:
        charge(gateway, idempotency_key="order:2")
    problems.append(unknown.value)
    harness.clock.now += 30  # the hangs opened the breaker
    with pytest.raises(PaymentProviderError) as refused:
        charge(harness.gateway(secret_key="sk_live_wrong_value"), idempotency_key="order:3")
    problems.append(refused.value)

    assert caplog.records, "the failures above should have been logged"
    formatter = JsonFormatter()
    logged = "\n".join(formatter.format(record) for record in caplog.records)
    everything = "\n".join([logged, repr(gateway), *map(str, problems), *map(repr, problems)])
    for secret in (SECRET_KEY, "sk_live_wrong_value"):
        assert secret not in everything
    assert "Bearer" not in everything
    # The log lines still say what happened.
    lines = [json.loads(line) for line in logged.splitlines() if line.startswith("{")]
    assert any(line.get("payment.idempotency_key") == "order:2" for line in lines)


@pytest.mark.parametrize(
    ("base_url", "message"),
    [
        ("http://payments.example.com", "https"),
        ("ftp://127.0.0.1", "http"),
        ("https://user:pw@payments.example.com", "credentials"),
        ("https://payments.example.com/?x=1", "query"),
        ("not a url", "http"),
    ],
)
def test_unsafe_base_urls_are_refused(base_url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        HttpPaymentGateway(base_url=base_url, secret_key=SECRET_KEY)


@pytest.mark.parametrize("secret", ["", "sk with space", "sk\r\nX-Injected: 1"])
def test_unusable_secret_keys_are_refused(secret: str) -> None:
    with pytest.raises(ValueError, match="secret key") as caught:
        HttpPaymentGateway(base_url="https://payments.example.com", secret_key=secret)
    assert not secret or secret not in str(caught.value)


def test_a_card_number_never_leaves_the_process(
    gateway: HttpPaymentGateway, provider: FakePaymentProvider
) -> None:
    with pytest.raises(ValueError, match="card number"):
        charge(gateway, "4000 0000 0000 0002")
    assert provider.requests == []


def test_both_gateways_satisfy_the_protocol(gateway: HttpPaymentGateway) -> None:
    from server.payments import SandboxGateway

    gateways: list[PaymentGateway] = [gateway, SandboxGateway()]  # mypy checks the protocol
    assert all(g.find_charge(idempotency_key="order:none") is None for g in gateways)
