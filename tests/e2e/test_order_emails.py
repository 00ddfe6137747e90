"""Order e-mails through a real SMTP server on loopback (aiosmtpd), or into .eml files."""

from __future__ import annotations

import email
import email.policy
import socket
import threading
import uuid
from collections.abc import Callable, Iterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from storefront.v1 import (
    common_pb2,
    order_pb2,
    order_service_pb2,
)

from server.domain import emails
from server.domain.principal import Role
from server.models.email_message import EmailMessage as StoredMessage
from server.models.outbox_event import OutboxEvent
from tests.e2e.conftest import Running, place_paid_order, wait_for

PRODUCT_NAME = '<script>alert("x")</script> Mug'


class Inbox:
    """An SMTP server on 127.0.0.1 that keeps what it receives; stop and start it at will."""

    def __init__(self) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port: int = probe.getsockname()[1]
        self.messages: list[tuple[list[str], EmailMessage]] = []
        self._lock = threading.Lock()
        self._controller: Controller | None = None

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        with self._lock:
            self.messages.append((list(envelope.rcpt_tos), message))
        return "250 OK"

    def start(self) -> None:
        self._controller = Controller(self, hostname="127.0.0.1", port=self.port)
        self._controller.start()

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    def received(self) -> list[tuple[list[str], EmailMessage]]:
        with self._lock:
            return list(self.messages)


@pytest.fixture
def inbox() -> Iterator[Inbox]:
    started = Inbox()
    yield started
    started.stop()


def smtp_server(server_factory: Callable[..., Running], inbox: Inbox) -> Running:
    return server_factory(
        email_transport="smtp",
        smtp_host="127.0.0.1",
        smtp_port=inbox.port,
        smtp_security="none",
        dispatch_interval_seconds=0.05,
        delivery_retry_schedule=(0.05, 0.1),
        webhook_timeout_seconds=2.0,
    )


def buy(running: Running) -> tuple[order_pb2.Order, str]:
    """A new customer buys 2 units of a product with an unsafe name; returns the order and the
    customer's email."""
    purchase = place_paid_order(running, quantity=2, product_name=PRODUCT_NAME)
    return purchase.order, purchase.email


def event_id(running: Running, order_id: str, event_type: str) -> str:
    with running.db.connection_context():
        return str(
            OutboxEvent.get(
                (OutboxEvent.aggregate_id == order_id) & (OutboxEvent.type == event_type)
            ).id
        )


def parts(message: EmailMessage) -> tuple[str, str]:
    text = message.get_body(preferencelist=("plain",))
    html = message.get_body(preferencelist=("html",))
    assert text is not None and html is not None
    return text.get_content(), html.get_content()


def test_order_emails_arrive_with_recipient_subject_and_escaped_html(
    server_factory: Callable[..., Running], inbox: Inbox
) -> None:
    inbox.start()
    running = smtp_server(server_factory, inbox)
    order, customer_email = buy(running)

    assert wait_for(lambda: len(inbox.received()) == 1)
    ((recipients, confirmed),) = inbox.received()
    assert recipients == [customer_email]
    assert confirmed["To"] == customer_email
    assert confirmed["Subject"] == f"Your order {order.id[:8].upper()} is confirmed"
    paid_event = event_id(running, order.id, "order.payment_captured")
    assert confirmed["Message-ID"] == f"<{paid_event}@storefront.local>"
    text, html = parts(confirmed)
    assert f"2 x {PRODUCT_NAME}" in text  # plain text stays as typed
    assert "<script>" not in html
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt; Mug" in html
    total = f"{order.total.amount_minor // 100}.{order.total.amount_minor % 100:02d} EUR"
    assert total in text and total in html

    staff = running.login(Role.STAFF)
    staff.orders.ShipOrder(
        order_service_pb2.ShipOrderRequest(
            order_id=order.id, request_id=str(uuid.uuid4()), carrier="DHL", tracking_number="JJD42"
        )
    )
    staff.orders.RefundOrder(
        order_service_pb2.RefundOrderRequest(
            order_id=order.id,
            request_id=str(uuid.uuid4()),
            amount=common_pb2.Money(currency_code="EUR", amount_minor=500),
        )
    )
    assert wait_for(lambda: len(inbox.received()) == 3)
    subjects = [message["Subject"] for _, message in inbox.received()]
    assert subjects[1].endswith("is on its way") and "JJD42" in parts(inbox.received()[1][1])[0]
    assert subjects[2].startswith("A refund for your order")
    assert "5.00 EUR of this order has been refunded" in parts(inbox.received()[2][1])[0]


def test_a_cancelled_order_is_mailed(server_factory: Callable[..., Running], inbox: Inbox) -> None:
    inbox.start()
    running = smtp_server(server_factory, inbox)
    order, _ = buy(running)
    running.login(Role.STAFF).orders.CancelOrder(
        order_service_pb2.CancelOrderRequest(
            order_id=order.id, request_id=str(uuid.uuid4()), reason="out of stock"
        )
    )
    number = order.id[:8].upper()
    # Cancelling a paid order refunds it: the cancellation, then the refund, are mailed.
    expected = [
        f"Your order {number} is confirmed",
        f"Your order {number} is cancelled",
        f"A refund for your order {number}",
    ]

    def subjects() -> list[str]:
        return [str(message["Subject"]) for _, message in inbox.received()]

    assert wait_for(lambda: subjects() == expected), subjects()
    cancelled_text, _ = parts(inbox.received()[1][1])
    assert "Your order has been cancelled." in cancelled_text


def test_an_smtp_outage_delays_an_email_and_never_loses_it(
    server_factory: Callable[..., Running], inbox: Inbox
) -> None:
    running = smtp_server(server_factory, inbox)  # nothing listens on the SMTP port yet
    order, customer_email = buy(running)
    paid_event = event_id(running, order.id, "order.payment_captured")

    def attempts() -> int:
        with running.db.connection_context():
            row = StoredMessage.get_or_none(StoredMessage.event_id == paid_event)
            return int(row.attempts) if row else 0

    # Past the end of the schedule: still PENDING, retried at its last pause.
    assert wait_for(lambda: attempts() >= 4)
    with running.db.connection_context():
        row = StoredMessage.get(StoredMessage.event_id == paid_event)
        assert row.state == emails.PENDING and "Connection refused" in (row.last_error or "")
    inbox.start()
    assert wait_for(lambda: len(inbox.received()) == 1)
    recipients, message = inbox.received()[0]
    assert recipients == [customer_email]
    assert message["Message-ID"] == f"<{paid_event}@storefront.local>"

    def sent() -> bool:  # recorded just after the SMTP server has it
        with running.db.connection_context():
            return bool(
                StoredMessage.get(StoredMessage.event_id == paid_event).state == emails.SENT
            )

    assert wait_for(sent)


def test_the_file_transport_writes_eml_files_under_the_data_directory(
    server_factory: Callable[..., Running],
) -> None:
    running = server_factory(dispatch_interval_seconds=0.05)  # the default transport: file
    order, customer_email = buy(running)
    paid_event = event_id(running, order.id, "order.payment_captured")
    written = Path(running.app.settings.data_dir) / "mail" / f"{paid_event}.eml"
    assert wait_for(written.exists)
    message = email.message_from_bytes(written.read_bytes(), policy=email.policy.default)
    assert message["To"] == customer_email
    assert message["Subject"].endswith("is confirmed")


@pytest.mark.parametrize(
    ("minor", "currency", "text"),
    [
        (12345, "EUR", "123.45 EUR"),
        (5, "USD", "0.05 USD"),
        (1500, "JPY", "1500 JPY"),
        (-1234, "KWD", "-1.234 KWD"),
    ],
)
def test_amounts_are_shown_in_the_currencys_units(minor: int, currency: str, text: str) -> None:
    assert emails.shown(minor, currency) == text
