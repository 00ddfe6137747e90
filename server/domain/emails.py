"""Order e-mails to customers: confirmed (paid), shipped, cancelled and refunded.

The dispatcher's fan-out renders one message per order event that has a template (text and HTML
parts, HTML escaped by jinja2's autoescape) into `email_messages`, in its transaction; the send
step claims due messages (work leases across processes) and hands them to the mailer outside
any transaction. The Message-ID is derived from the event id, so a message sent twice after a
crash is recognisably the same one. A transient failure (no connection, a 4xx answer) is retried
on the delivery schedule, at its last pause for as long as it takes: an SMTP outage delays an
e-mail, never loses it. A permanent refusal (5xx) parks the message.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from email.message import EmailMessage as MimeMessage
from pathlib import Path

import jinja2
import peewee

from server.db import database, utcnow
from server.domain import money, work_leases
from server.mail.transport import Mailer, PermanentFailure
from server.models.email_message import EmailMessage
from server.models.order import Order, OrderLine
from server.models.outbox_event import OutboxEvent
from server.models.user import User

PENDING = "PENDING"
SENT = "SENT"
PARKED = "PARKED"
LEASE_KIND = "email"
SEND_BATCH = 20
ERROR_MAX_LENGTH = 500

# Event type -> (template, subject); {number} is the order's short number.
TEMPLATES = {
    "order.payment_captured": ("order_confirmed", "Your order {number} is confirmed"),
    "order.shipped": ("order_shipped", "Your order {number} is on its way"),
    "order.cancelled": ("order_cancelled", "Your order {number} is cancelled"),
    "order.refund_succeeded": ("order_refunded", "A refund for your order {number}"),
}

_templates = jinja2.Environment(
    loader=jinja2.FileSystemLoader(Path(__file__).resolve().parent.parent / "mail" / "templates"),
    # Escapes every value in .html templates (a product named <script> arrives as text); the
    # .txt ones are plain text and stay as they are.
    autoescape=jinja2.select_autoescape(enabled_extensions=("html",), default=False),
    undefined=jinja2.StrictUndefined,
    keep_trailing_newline=True,
)


def shown(amount_minor: int, currency: str) -> str:
    """Formats minor units for people: 12345 EUR -> "123.45 EUR"."""
    return f"{money.decimal_text(amount_minor, currency)} {currency}"


@dataclass(frozen=True)
class Rendered:
    """A message ready to store."""

    recipient: str
    subject: str
    text: str
    html: str


def render(event_type: str, order: Order, customer: User) -> Rendered:
    """Renders the e-mail of an order event (a type in TEMPLATES)."""
    template, subject = TEMPLATES[event_type]
    lines = list(OrderLine.select().where(OrderLine.order == order.id).order_by(OrderLine.position))
    currency = order.currency
    context = {
        "customer_name": customer.display_name or customer.email,
        "order": {
            "number": order.id[:8].upper(),
            "lines": [
                {
                    "quantity": line.quantity,
                    "name": line.name,
                    "sku": line.sku,
                    "total": shown(line.line_total_minor, currency),
                }
                for line in lines
            ],
            "subtotal": shown(order.subtotal_minor, currency),
            "shipping": shown(order.shipping_minor, currency),
            "tax": shown(order.tax_minor, currency),
            "total": shown(order.total_minor, currency),
            "refunded": shown(order.refunded_minor, currency) if order.refunded_minor else "",
            "carrier": order.carrier,
            "tracking_number": order.tracking_number,
            "address": [
                part
                for part in (
                    order.ship_name,
                    order.ship_line1,
                    order.ship_line2,
                    " ".join(p for p in (order.ship_postal_code, order.ship_city) if p),
                    order.ship_region,
                    order.ship_country,
                )
                if part
            ],
        },
    }
    return Rendered(
        recipient=customer.email,
        subject=subject.format(number=context["order"]["number"]),  # type: ignore[index]
        text=_templates.get_template(f"{template}.txt").render(context),
        html=_templates.get_template(f"{template}.html").render(context),
    )


def add_messages(events: Sequence[OutboxEvent], now: dt.datetime) -> int:
    """Renders and stores the e-mails of these events (in the caller's transaction); returns how
    many. An event already mailed adds nothing."""
    wanted = [e for e in events if e.aggregate_type == "order" and e.type in TEMPLATES]
    if not wanted:
        return 0
    orders = {o.id: o for o in Order.select().where(Order.id.in_([e.aggregate_id for e in wanted]))}
    customers = {
        u.id: u for u in User.select().where(User.id.in_([o.customer_id for o in orders.values()]))
    }
    rows = []
    for event in wanted:
        order = orders.get(event.aggregate_id)
        customer = customers.get(order.customer_id) if order else None
        if order is None or customer is None:
            continue  # a deleted account gets no e-mail
        message = render(event.type, order, customer)
        rows.append(
            {
                "id": str(uuid.uuid4()),
                "event_id": event.id,
                "recipient": message.recipient,
                "subject": message.subject,
                "text_body": message.text,
                "html_body": message.html,
                "state": PENDING,
                "attempts": 0,
                "next_attempt_time": now,
                "create_time": now,
            }
        )
    if rows:
        EmailMessage.insert_many(rows).on_conflict_ignore().execute()
    return len(rows)


def store(
    *,
    message_key: str,
    recipient: str,
    subject: str,
    template: str,
    context: Mapping[str, object],
    now: dt.datetime,
) -> None:
    """Renders an e-mail that no order event makes (an account's) and stores it for the
    dispatcher, in the caller's transaction; `message_key` is unique and names its Message-ID."""
    EmailMessage.insert(
        id=str(uuid.uuid4()),
        event_id=message_key,
        recipient=recipient,
        subject=subject,
        text_body=_templates.get_template(f"{template}.txt").render(context),
        html_body=_templates.get_template(f"{template}.html").render(context),
        state=PENDING,
        attempts=0,
        next_attempt_time=now,
        create_time=now,
    ).execute()


def message_id(event_id: str, sender: str) -> str:
    """The Message-ID of an event's e-mail: the event id at the sender's domain."""
    _, address = email.utils.parseaddr(sender)
    domain = address.rpartition("@")[2] or "storefront.local"
    return f"<{event_id}@{domain}>"


def mime(
    row: EmailMessage, sender: str, expand: Callable[[str], str] = lambda text: text
) -> MimeMessage:
    """Builds the MIME message of a stored e-mail: text, with an HTML alternative; `expand`
    writes in what the stored bodies only mark (an account token)."""
    message = MimeMessage()
    message["From"] = sender
    message["To"] = row.recipient
    message["Subject"] = row.subject
    message["Message-ID"] = message_id(row.event_id, sender)
    message["Date"] = email.utils.format_datetime(row.create_time.replace(tzinfo=dt.UTC))
    message.set_content(expand(row.text_body))
    message.add_alternative(expand(row.html_body), subtype="html")
    return message


@dataclass
class EmailSender:
    """Sends due e-mails through the mailer and records each outcome."""

    mailer: Mailer
    sender: str
    retry_schedule: Sequence[float]
    lease: dt.timedelta
    # Writes account tokens into the bodies that mark them (account_recovery.TokenKey.expand).
    expand: Callable[[str], str] = lambda text: text

    def send_due(self) -> int:
        """Sends up to one batch of due messages, their outcomes written together
        (work_leases.work_through); returns how many were tried."""
        claimed_at = utcnow()
        due = claim_due(SEND_BATCH, self.lease)
        if not due:
            return 0
        return work_leases.work_through(
            due,
            claimed_at=claimed_at,
            lease=self.lease,
            attempt=self.attempt,
            record=lambda outcomes: _record(outcomes, self.retry_schedule),
        )

    def attempt(self, row: EmailMessage) -> Outcome:
        """Tries one message once; returns the outcome (not yet written)."""
        error: str | None = None
        permanent = False
        try:
            self.mailer.send(mime(row, self.sender, self.expand))
        except PermanentFailure as exc:
            error, permanent = f"refused: {exc}", True
        except Exception as exc:  # any failure to hand it over is retried
            error = f"{type(exc).__name__}: {exc}"
        return Outcome(row, error, permanent, utcnow())


@dataclass(frozen=True)
class Outcome:
    """One message's attempt: the error, if any, and whether it is final."""

    row: EmailMessage
    error: str | None
    permanent: bool
    time: dt.datetime


def _record(outcomes: Sequence[Outcome], schedule: Sequence[float]) -> None:
    """Stores the attempts' outcomes in one transaction."""
    if not outcomes:
        return
    with database.atomic():
        for outcome in outcomes:
            EmailMessage.update(_changes(outcome, schedule)).where(
                (EmailMessage.id == outcome.row.id) & (EmailMessage.state == PENDING)
            ).execute()


def _changes(outcome: Outcome, schedule: Sequence[float]) -> dict[peewee.Field, object]:
    attempts = int(outcome.row.attempts) + 1
    error = outcome.error
    changes: dict[peewee.Field, object] = {
        EmailMessage.attempts: attempts,
        EmailMessage.last_error: error[:ERROR_MAX_LENGTH] if error else None,
    }
    if error is None:
        changes[EmailMessage.state] = SENT
        changes[EmailMessage.sent_time] = outcome.time
    elif outcome.permanent:
        changes[EmailMessage.state] = PARKED
    else:
        pause = schedule[min(attempts, len(schedule)) - 1]
        changes[EmailMessage.next_attempt_time] = outcome.time + dt.timedelta(seconds=pause)
    return changes


def claim_due(limit: int, lease: dt.timedelta) -> list[EmailMessage]:
    """Leases up to `limit` PENDING messages whose time has come."""
    now = utcnow()
    candidates = (
        EmailMessage.select()
        .where((EmailMessage.state == PENDING) & (EmailMessage.next_attempt_time <= now))
        .order_by(EmailMessage.next_attempt_time)
    )
    return work_leases.claim(
        LEASE_KIND, candidates, EmailMessage.id, lease=lease, limit=limit, now=now
    )
