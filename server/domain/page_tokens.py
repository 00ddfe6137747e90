"""Signed keyset page tokens: opaque, URL-safe, and bound to one list query."""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import hmac
import json
import re
import uuid
from collections.abc import Sequence
from typing import Any, TypeAlias

from server.errors import FieldViolation, InvalidArgument

# Generous: a token grows with the sort values of the last row, which the server itself chose.
MAX_PAGE_TOKEN_LENGTH = 16_384

CursorValue: TypeAlias = bool | int | str | dt.datetime | uuid.UUID | None

_TOKEN_VERSION = 1
_MAC_SIZE = hashlib.sha256().digest_size
# Keeps page-token MACs apart from anything else the same secret might sign.
_MAC_CONTEXT = b"storefront.listing.page_token\x00"
_BASE64URL = re.compile(r"[A-Za-z0-9_-]+")


class PageTokenSigner:
    """Signs and reads the page tokens of every List call with one secret, made once at start-up."""

    def __init__(self, secret: bytes) -> None:
        if not secret:
            raise ValueError("a page token secret is required")
        self.__secret = secret

    def sign(self, values: Sequence[CursorValue], *, fingerprint: bytes) -> str:
        """Returns a token carrying `values`, bound to `fingerprint`."""
        return encode_page_token(values, secret=self.__secret, fingerprint=fingerprint)

    def read(self, token: str, *, fingerprint: bytes) -> tuple[CursorValue, ...]:
        """Returns the values in a token it signed for `fingerprint`; raises InvalidArgument."""
        return decode_page_token(token, secret=self.__secret, fingerprint=fingerprint)


def query_fingerprint(name: str, filter_text: str, order_by: str, scope: str) -> bytes:
    """Returns the digest a page token is bound to: the list, normalized filter/order, scope."""
    canonical = json.dumps([_TOKEN_VERSION, name, filter_text, order_by, scope])
    return hashlib.sha256(canonical.encode()).digest()


def encode_page_token(values: Sequence[CursorValue], *, secret: bytes, fingerprint: bytes) -> str:
    """Returns an opaque URL-safe token carrying `values`, signed and bound to `fingerprint`."""
    payload = json.dumps([encode_value(v) for v in values], separators=(",", ":")).encode()
    body = bytes([_TOKEN_VERSION]) + payload
    mac = hmac.new(secret, _MAC_CONTEXT + fingerprint + body, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(body + mac).rstrip(b"=").decode("ascii")


def decode_page_token(token: str, *, secret: bytes, fingerprint: bytes) -> tuple[CursorValue, ...]:
    """Returns the values in a token made by encode_page_token for `fingerprint`, or raises."""
    if len(token) > MAX_PAGE_TOKEN_LENGTH or not _BASE64URL.fullmatch(token):
        raise token_error()
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    except (binascii.Error, ValueError):
        raise token_error() from None
    # Only the canonical spelling is accepted: base64 can hide changes in unused trailing bits.
    if base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii") != token:
        raise token_error()
    body, mac = raw[:-_MAC_SIZE], raw[-_MAC_SIZE:]
    if len(body) < 1 or body[0] != _TOKEN_VERSION:
        raise token_error()
    expected = hmac.new(secret, _MAC_CONTEXT + fingerprint + body, hashlib.sha256).digest()
    if not hmac.compare_digest(mac, expected):
        raise token_error()
    try:
        items = json.loads(body[1:])
        if not isinstance(items, list):
            raise ValueError("not a list")
        return tuple(_decode_value(item) for item in items)
    except (ValueError, TypeError, OverflowError):
        raise token_error() from None


def encode_value(value: CursorValue) -> Any:
    """Returns a cursor value as JSON; raises TypeError for a type a token cannot carry."""
    # JSON keeps None/bool/int/str apart; datetimes and UUIDs are tagged objects.
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, dt.datetime):
        return {"t": value.isoformat()}
    if isinstance(value, uuid.UUID):
        return {"u": str(value)}
    raise TypeError(f"cannot put a {type(value).__name__} in a page token")


def _decode_value(item: Any) -> CursorValue:
    if item is None or isinstance(item, bool | int | str):
        return item
    if isinstance(item, dict) and len(item) == 1:
        ((tag, text),) = item.items()
        if tag == "t" and isinstance(text, str):
            return dt.datetime.fromisoformat(text)
        if tag == "u" and isinstance(text, str):
            return uuid.UUID(text)
    raise ValueError("unknown cursor value")


def token_error() -> InvalidArgument:
    """Returns the INVALID_ARGUMENT error for a page token that is bad or made for another query."""
    description = "is invalid, or belongs to a different query (filter, order_by or parent)"
    return InvalidArgument(
        f"Invalid page_token: {description}.",
        violations=[FieldViolation("page_token", description)],
    )
