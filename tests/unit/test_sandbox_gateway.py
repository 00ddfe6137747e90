"""The sandbox gateway: documented test tokens, idempotency per key, refunds bounded by captures."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from server.errors import FailedPrecondition, Unavailable
from server.payments import (
    TEST_TOKENS,
    Charge,
    ChargeStatus,
    PaymentDeclined,
    PaymentGateway,
    PaymentOutcomeUnknown,
    PaymentProviderError,
    PaymentProviderUnavailable,
    RefundExceedsCharge,
    SandboxGateway,
)
from server.payments.gateway import clean_decline_code, looks_like_card_number, payment_declined


@pytest.fixture
def gateway() -> SandboxGateway:
    return SandboxGateway()


def charge(gateway: PaymentGateway, method: str = "tok_visa", **overrides: Any) -> Charge:
    arguments: dict[str, Any] = {
        "idempotency_key": "order:1",
        "amount_minor": 1250,
        "currency": "EUR",
        "payment_method_token": method,
        "description": "Order 1",
    }
    return gateway.charge(**(arguments | overrides))


# token -> what charge() does (a status or an exception and its decline code) and what
# find_charge() sees afterwards.
TOKEN_OUTCOMES = [
    ("tok_visa", ChargeStatus.SUCCEEDED, None, ChargeStatus.SUCCEEDED),
    ("tok_mastercard", ChargeStatus.SUCCEEDED, None, ChargeStatus.SUCCEEDED),
    ("tok_declined", PaymentDeclined, "card_declined", ChargeStatus.DECLINED),
    ("tok_insufficient_funds", PaymentDeclined, "insufficient_funds", ChargeStatus.DECLINED),
    (
        "tok_unknown_to_the_sandbox",
        PaymentDeclined,
        "invalid_payment_method",
        ChargeStatus.DECLINED,
    ),
    ("tok_timeout", PaymentOutcomeUnknown, None, ChargeStatus.SUCCEEDED),
    ("tok_timeout_declined", PaymentOutcomeUnknown, None, ChargeStatus.DECLINED),
    ("tok_provider_down", PaymentProviderUnavailable, None, None),
]


@pytest.mark.parametrize(
    ("token", "outcome", "decline_code", "found"),
    TOKEN_OUTCOMES,
    ids=[row[0] for row in TOKEN_OUTCOMES],
)
def test_each_test_token_has_its_documented_outcome(
    gateway: SandboxGateway,
    token: str,
    outcome: ChargeStatus | type[Exception],
    decline_code: str | None,
    found: ChargeStatus | None,
) -> None:
    if isinstance(outcome, ChargeStatus):
        result = charge(gateway, token)
        assert (result.status, result.amount_minor, result.currency) == (outcome, 1250, "EUR")
        assert result.id.startswith("ch_")
    else:
        with pytest.raises(outcome) as caught:
            charge(gateway, token)
        if decline_code is not None:
            assert isinstance(caught.value, PaymentDeclined)
            assert caught.value.code == decline_code
            assert caught.value.metadata == {"decline_code": decline_code}
    reconciled = gateway.find_charge(idempotency_key="order:1")
    assert (reconciled.status if reconciled else None) is found


def test_every_documented_token_is_in_the_table() -> None:
    assert set(TEST_TOKENS) <= {row[0] for row in TOKEN_OUTCOMES}


def test_payment_errors_are_the_domain_errors_checkout_lets_through() -> None:
    assert issubclass(PaymentDeclined, FailedPrecondition)
    assert PaymentDeclined("x").reason == "PAYMENT_DECLINED"
    assert issubclass(RefundExceedsCharge, FailedPrecondition)
    assert issubclass(PaymentProviderUnavailable, Unavailable)
    assert PaymentProviderUnavailable("x").reason == "PAYMENT_PROVIDER_UNAVAILABLE"
    assert PaymentOutcomeUnknown("x").reason == "PAYMENT_OUTCOME_UNKNOWN"


def test_the_same_key_returns_the_same_charge(gateway: SandboxGateway) -> None:
    first = charge(gateway)
    assert charge(gateway) == first
    assert gateway.find_charge(idempotency_key="order:1") == first
    assert gateway.list_charges() == [first]
    assert charge(gateway, idempotency_key="order:2").id != first.id


def test_a_declined_key_stays_declined(gateway: SandboxGateway) -> None:
    for _ in range(2):
        with pytest.raises(PaymentDeclined):
            charge(gateway, "tok_declined")
    assert len(gateway.list_charges()) == 1


def test_the_timeout_token_records_one_charge_however_often_it_is_retried(
    gateway: SandboxGateway,
) -> None:
    for _ in range(3):
        with pytest.raises(PaymentOutcomeUnknown) as caught:
            charge(gateway, "tok_timeout")
        assert caught.value.idempotency_key == "order:1"
    assert [c.status for c in gateway.list_charges()] == [ChargeStatus.SUCCEEDED]


def test_a_key_reused_with_other_arguments_is_refused(gateway: SandboxGateway) -> None:
    charge(gateway)
    with pytest.raises(PaymentProviderError, match="other arguments"):
        charge(gateway, amount_minor=999)
    assert len(gateway.list_charges()) == 1


def test_concurrent_charges_with_one_key_make_one_charge(gateway: SandboxGateway) -> None:
    start = threading.Barrier(40)
    ids: list[str] = []
    lock = threading.Lock()

    def call() -> None:
        start.wait()
        result = charge(gateway)
        with lock:
            ids.append(result.id)

    threads = [threading.Thread(target=call) for _ in range(40)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(ids) == 40
    assert len(set(ids)) == 1
    assert len(gateway.list_charges()) == 1


def test_refunds_add_up_to_the_captured_amount_and_no_further(gateway: SandboxGateway) -> None:
    captured = charge(gateway)
    first = gateway.refund(idempotency_key="refund:1", charge_id=captured.id, amount_minor=1000)
    assert (first.charge_id, first.amount_minor) == (captured.id, 1000)
    with pytest.raises(RefundExceedsCharge) as caught:
        gateway.refund(idempotency_key="refund:2", charge_id=captured.id, amount_minor=251)
    assert caught.value.metadata["captured_minor"] == "1250"
    assert caught.value.metadata["refunded_minor"] == "1000"
    gateway.refund(idempotency_key="refund:2", charge_id=captured.id, amount_minor=250)
    assert gateway.refunded_minor(captured.id) == 1250
    with pytest.raises(RefundExceedsCharge):
        gateway.refund(idempotency_key="refund:3", charge_id=captured.id, amount_minor=1)


def test_a_repeated_refund_key_refunds_once(gateway: SandboxGateway) -> None:
    captured = charge(gateway)
    first = gateway.refund(idempotency_key="refund:1", charge_id=captured.id, amount_minor=700)
    again = gateway.refund(idempotency_key="refund:1", charge_id=captured.id, amount_minor=700)
    assert again == first
    assert gateway.refunded_minor(captured.id) == 700
    with pytest.raises(PaymentProviderError, match="other arguments"):
        gateway.refund(idempotency_key="refund:1", charge_id=captured.id, amount_minor=1)


def test_a_declined_charge_has_nothing_to_refund(gateway: SandboxGateway) -> None:
    with pytest.raises(PaymentDeclined):
        charge(gateway, "tok_declined")
    declined = gateway.find_charge(idempotency_key="order:1")
    assert declined is not None
    with pytest.raises(RefundExceedsCharge):
        gateway.refund(idempotency_key="refund:1", charge_id=declined.id, amount_minor=1)


def test_refunding_an_unknown_charge_is_a_bug(gateway: SandboxGateway) -> None:
    with pytest.raises(PaymentProviderError, match="no charge"):
        gateway.refund(idempotency_key="refund:1", charge_id="ch_nope", amount_minor=1)


def test_find_charge_without_a_charge_is_none(gateway: SandboxGateway) -> None:
    assert gateway.find_charge(idempotency_key="order:never") is None


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"idempotency_key": ""}, "idempotency_key"),
        ({"idempotency_key": "has space"}, "idempotency_key"),
        ({"idempotency_key": "k" * 201}, "idempotency_key"),
        ({"amount_minor": 0}, "amount_minor"),
        ({"amount_minor": -5}, "amount_minor"),
        ({"currency": "eur"}, "currency"),
        ({"currency": "EURO"}, "currency"),
        ({"payment_method_token": ""}, "payment_method_token"),
        ({"description": "x" * 501}, "description"),
    ],
)
def test_arguments_no_provider_would_accept_are_refused(
    gateway: SandboxGateway, overrides: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        charge(gateway, **overrides)
    assert gateway.list_charges() == []


@pytest.mark.parametrize(
    "number", ["4242424242424242", "4242 4242 4242 4242", "5555-5555-5555-4444"]
)
def test_a_card_number_is_refused_without_being_echoed(
    gateway: SandboxGateway, number: str
) -> None:
    with pytest.raises(ValueError, match="card number") as caught:
        charge(gateway, number)
    assert number not in str(caught.value)
    assert "4242" not in str(caught.value) and "5555" not in str(caught.value)


@pytest.mark.parametrize(
    "token", ["4242_4242_4242_4242", "4242.4242.4242.4242", "4242 4242-4242_4242"]
)
def test_card_numbers_with_other_separators_are_recognised(token: str) -> None:
    assert looks_like_card_number(token)


@pytest.mark.parametrize(
    ("raw", "kept"),
    [
        ("insufficient_funds", "insufficient_funds"),
        ("do_not_honor", "do_not_honor"),
        ("", "card_declined"),
        ("x" * 65, "card_declined"),
        ("Card Declined!", "card_declined"),
        ("lost_card\n<script>", "card_declined"),
        (None, "card_declined"),
        (42, "card_declined"),
    ],
)
def test_only_plain_decline_codes_are_kept(raw: object, kept: str) -> None:
    assert clean_decline_code(raw) == kept
    if isinstance(raw, str):
        assert payment_declined(raw).code == kept
