"""List RPC support: page size, an AIP-160 filter subset, order_by and signed keyset page tokens."""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import enum
import functools
import hashlib
import hmac
import json
import operator
import re
import uuid
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeAlias, TypeVar

import peewee

from server.errors import FieldViolation, InvalidArgument, Validator

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 100
MAX_FILTER_LENGTH = 1000
MAX_FILTER_TERMS = 20
MAX_ORDER_BY_LENGTH = 500
# Generous: a token grows with the sort values of the last row, which the server itself chose.
MAX_PAGE_TOKEN_LENGTH = 16_384

CursorValue: TypeAlias = bool | int | str | dt.datetime | uuid.UUID | None
Row = TypeVar("Row")
M = TypeVar("M", bound=peewee.Model)

OPERATORS: Mapping[str, Callable[[Any, Any], Any]] = {
    "=": operator.eq,
    "!=": operator.ne,
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}
_EQUALITY = frozenset({"=", "!="})

_TOKEN_VERSION = 1
_MAC_SIZE = hashlib.sha256().digest_size
# Keeps page-token MACs apart from anything else the same secret might sign.
_MAC_CONTEXT = b"storefront.listing.page_token\x00"
_BASE64URL = re.compile(r"[A-Za-z0-9_-]+")
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_INTEGER = re.compile(r"-?[0-9]+")
_RFC3339 = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?"
    r"(?:([Zz])|([+-])(\d{2}):(\d{2}))"
)
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_CONTROL_CHARACTERS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


class FieldKind(enum.StrEnum):
    """The type of a filterable field, which decides the literals it accepts."""

    STRING = "string"  # "double-quoted"
    INT = "int"  # 42, -7
    BOOL = "bool"  # true, false
    TIMESTAMP = "timestamp"  # "2026-01-01T00:00:00Z" (RFC 3339, compared as naive UTC)
    ENUM = "enum"  # ROLE_STAFF (an identifier declared in enum_values)


@dataclass(frozen=True, eq=False)  # eq=False: peewee columns overload == to build SQL
class FilterField:
    """A field clients may filter on: the column or expression it maps to, its kind, operators."""

    column: Any
    kind: FieldKind
    # None: = and != for bool and enum fields, every operator for the others.
    operators: Collection[str] | None = None
    # Enum identifier -> the value stored in the column, e.g. {"ROLE_STAFF": "staff"}.
    enum_values: Mapping[str, CursorValue] = field(default_factory=dict)

    def __post_init__(self) -> None:
        unknown = set(self.allowed_operators) - OPERATORS.keys()
        if unknown:
            raise ValueError(f"unknown filter operators: {sorted(unknown)}")
        if (self.kind is FieldKind.ENUM) != bool(self.enum_values):
            raise ValueError("enum_values is required for enum fields and only for them")
        for name, value in self.enum_values.items():
            if not _IDENTIFIER.fullmatch(name) or name in ("true", "false", "AND", "OR", "NOT"):
                raise ValueError(f"enum identifier {name!r} is not a plain identifier")
            _encode_value(value)

    @property
    def allowed_operators(self) -> frozenset[str]:
        """The operators this field accepts."""
        if self.operators is not None:
            return frozenset(self.operators)
        if self.kind in (FieldKind.BOOL, FieldKind.ENUM):
            return _EQUALITY
        return frozenset(OPERATORS)


@dataclass(frozen=True, eq=False)
class ListSpec:
    """What one List RPC allows: its name, model, filterable fields, order fields, default order."""

    name: str  # part of every page token's binding, e.g. "users"
    model: type[peewee.Model]  # its single-column primary key is the final sort tiebreaker
    filter_fields: Mapping[str, FilterField]
    # Model fields the query selects; nullable ones sort NULLs last ascending, first descending.
    order_fields: Mapping[str, peewee.Field]
    default_order: str  # used when order_by is empty, e.g. "create_time desc"

    def __post_init__(self) -> None:
        for name in self.filter_fields:
            if not _IDENTIFIER.fullmatch(name):
                raise ValueError(f"filter field name {name!r} is not a plain identifier")
        # A broken default is a programming error; surface it at import, not in the first request.
        try:
            parse_order_by(self, self.default_order)
        except InvalidArgument as exc:
            raise ValueError(f"invalid default_order for {self.name}: {exc.message}") from exc


@dataclass(frozen=True)
class Comparison:
    """One parsed filter term; `value` is already converted to what the column stores."""

    field: str
    operator: str
    value: CursorValue


@dataclass(frozen=True, eq=False)
class OrderTerm:
    """One ORDER BY key: its public name, column and direction."""

    name: str
    column: peewee.Field
    descending: bool


@dataclass(frozen=True, eq=False)
class ListRequest:
    """A validated List request: page size, filter, total order and the cursor to resume after."""

    spec: ListSpec
    page_size: int
    filter: tuple[Comparison, ...]
    order: tuple[OrderTerm, ...]
    after: tuple[CursorValue, ...] | None
    fingerprint: bytes
    secret: bytes = field(repr=False)

    def where(self) -> Any:
        """Returns the filter as a Peewee expression (values bound as parameters), or None."""
        return filter_expression(self.spec, self.filter)


@dataclass(frozen=True)
class Page(Generic[Row]):
    """One page of rows and the token for the next page ("" when there are no more)."""

    items: list[Row]
    next_page_token: str


def page_size_or_default(page_size: int) -> int:
    """Returns the effective page size: 0 -> 50, above 100 -> 100; raises if negative."""
    validator = Validator()
    size = _check_page_size(validator, page_size)
    validator.raise_if_any()
    return size


def parse_list_request(
    spec: ListSpec,
    *,
    page_size: int,
    page_token: str,
    filter_text: str,
    order_by: str,
    secret: bytes,
    scope: str = "",
) -> ListRequest:
    """Validates a List request's paging, filter and order fields; raises InvalidArgument."""
    if not secret:
        raise ValueError("a page token secret is required")
    validator = Validator()
    size = _check_page_size(validator, page_size)
    comparisons: tuple[Comparison, ...] = ()
    order: tuple[OrderTerm, ...] = ()
    try:
        comparisons = parse_filter(spec, filter_text)
    except InvalidArgument as exc:
        validator.violations.extend(exc.violations)
    try:
        order = parse_order_by(spec, order_by)
    except InvalidArgument as exc:
        validator.violations.extend(exc.violations)
    validator.raise_if_any()

    fingerprint = query_fingerprint(
        spec.name, _normalize_filter(comparisons), _normalize_order(order), scope
    )
    after = None
    if page_token:
        after = decode_page_token(page_token, secret=secret, fingerprint=fingerprint)
        if len(after) != len(order):
            raise _token_error()
    return ListRequest(spec, size, comparisons, order, after, fingerprint, secret)


def fetch_page(query: peewee.ModelSelect[M], request: ListRequest) -> Page[M]:
    """Runs `query` (model rows) filtered, ordered and resumed after the cursor; returns a page."""
    where = request.where()
    if where is not None:
        query = query.where(where)
    if request.after is not None:
        query = query.where(_after_cursor(request.order, request.after))
    orderings = [_ordering(term) for term in request.order]
    # One extra row says whether another page exists without a COUNT.
    rows = list(query.order_by(*orderings).limit(request.page_size + 1))
    if len(rows) <= request.page_size:
        return Page(rows, "")
    rows = rows[: request.page_size]
    last = rows[-1].__data__  # raw column values; a foreign key gives its id, not a fetch
    values = tuple(last[term.column.name] for term in request.order)
    token = encode_page_token(values, secret=request.secret, fingerprint=request.fingerprint)
    return Page(rows, token)


def list_page(
    spec: ListSpec,
    query: peewee.ModelSelect[M],
    *,
    page_size: int,
    page_token: str,
    filter_text: str,
    order_by: str,
    secret: bytes,
    scope: str = "",
) -> Page[M]:
    """Validates a List request and returns the page of `query` it asks for."""
    request = parse_list_request(
        spec,
        page_size=page_size,
        page_token=page_token,
        filter_text=filter_text,
        order_by=order_by,
        secret=secret,
        scope=scope,
    )
    return fetch_page(query, request)


# --- page size ----------------------------------------------------------------------------------


def _check_page_size(validator: Validator, page_size: int) -> int:
    if page_size < 0:
        validator.add("page_size", "must not be negative")
        return DEFAULT_PAGE_SIZE
    if page_size == 0:
        return DEFAULT_PAGE_SIZE
    return min(page_size, MAX_PAGE_SIZE)


# --- order_by -----------------------------------------------------------------------------------


def parse_order_by(spec: ListSpec, text: str) -> tuple[OrderTerm, ...]:
    """Parses "field [asc|desc], ..." (or the default) and appends the primary key tiebreaker."""
    if len(text) > MAX_ORDER_BY_LENGTH:
        raise _order_error(f"must be at most {MAX_ORDER_BY_LENGTH} characters")
    text = text.strip() or spec.default_order
    terms: list[OrderTerm] = []
    for part in text.split(","):
        words = part.split()
        if not words:
            raise _order_error("has an empty term; use a comma only between fields")
        name = words[0]
        if name not in spec.order_fields:
            allowed = ", ".join(spec.order_fields)
            raise _order_error(f"cannot sort by {_quote(name)}; sortable fields are: {allowed}")
        if any(term.name == name for term in terms):
            raise _order_error(f"lists {_quote(name)} more than once")
        if len(words) > 2 or (len(words) == 2 and words[1].lower() not in ("asc", "desc")):
            raise _order_error(f"{_quote(part.strip())}: expected a field, then asc or desc")
        descending = len(words) == 2 and words[1].lower() == "desc"
        terms.append(OrderTerm(name, spec.order_fields[name], descending))

    primary_key = spec.model._meta.primary_key
    if not isinstance(primary_key, peewee.Field):
        raise ValueError(f"{spec.name}: keyset pagination needs a single-column primary key")
    if not any(term.column is primary_key for term in terms):
        # A unique last key makes the order total, so a cursor names exactly one position.
        terms.append(OrderTerm(primary_key.name, primary_key, terms[-1].descending))
    return tuple(terms)


def _normalize_order(order: Sequence[OrderTerm]) -> str:
    return ", ".join(f"{term.name} {'desc' if term.descending else 'asc'}" for term in order)


def _ordering(term: OrderTerm) -> Any:
    # Explicit NULL placement: SQLite and PostgreSQL disagree by default.
    nulls = ("first" if term.descending else "last") if _nullable(term.column) else None
    return term.column.desc(nulls=nulls) if term.descending else term.column.asc(nulls=nulls)


def _nullable(column: peewee.Field) -> bool:
    return bool(getattr(column, "null", False))


def _after_cursor(order: Sequence[OrderTerm], values: Sequence[CursorValue]) -> Any:
    """Returns "row sorts after `values`": (k1 > v1) OR (k1 = v1 AND k2 > v2) OR ..."""
    # Spelled out rather than a row-value comparison so each key can have its own direction.
    disjuncts = []
    ties: list[Any] = []
    for term, value in zip(order, values, strict=True):
        beyond = _beyond(term, value)
        if beyond is not None:
            disjuncts.append(functools.reduce(operator.and_, [*ties, beyond]))
        ties.append(term.column.is_null() if value is None else term.column == value)
    return functools.reduce(operator.or_, disjuncts)


def _beyond(term: OrderTerm, value: CursorValue) -> Any:
    """Returns "key sorts strictly after `value`" for one key, or None if nothing can."""
    column = term.column
    if value is None:
        # NULLs are last ascending (nothing follows them) and first descending.
        return column.is_null(False) if term.descending else None
    if term.descending:
        return column < value
    return (column > value) | column.is_null() if _nullable(column) else column > value


# --- filter -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Token:
    kind: str  # "ident", "string", "int", "op", "end"
    text: str
    position: int  # 1-based, for messages
    value: str | int | None = None


def parse_filter(spec: ListSpec, text: str) -> tuple[Comparison, ...]:
    """Parses `field OP value` terms joined by AND (no OR, NOT or parentheses) into comparisons."""
    # The AIP-160 subset: OP is one of = != < <= > >= (each field allows some); values are
    # "double-quoted strings" (escapes \" \\ \n \t \r), 64-bit integers, true/false, RFC 3339
    # timestamps written as strings, and bare identifiers for enum fields. Functions, the has
    # operator (:), OR, NOT and parentheses are refused rather than guessed at.
    if len(text) > MAX_FILTER_LENGTH:
        raise filter_error(f"must be at most {MAX_FILTER_LENGTH} characters")
    if _CONTROL_CHARACTERS.search(text):
        # PostgreSQL cannot even compare text with a NUL byte; no field needs control characters.
        raise filter_error("must not contain control characters")
    tokens = _tokenize(text)
    if tokens[0].kind == "end":
        return ()
    comparisons: list[Comparison] = []
    index = 0
    while True:
        if len(comparisons) == MAX_FILTER_TERMS:
            raise filter_error(f"may have at most {MAX_FILTER_TERMS} comparisons")
        comparison, index = _parse_comparison(spec, tokens, index)
        comparisons.append(comparison)
        token = tokens[index]
        if token.kind == "end":
            return tuple(comparisons)
        if token.kind == "ident" and token.text == "AND":
            index += 1
            continue
        if token.kind == "ident" and token.text.upper() in ("OR", "NOT", "AND"):
            raise filter_error(
                f"{_quote(token.text)} at position {token.position} is not supported; "
                "join comparisons with AND (uppercase)"
            )
        raise filter_error(
            f"expected AND or the end at position {token.position}, found {_quote(token.text)}"
        )


def filter_expression(spec: ListSpec, comparisons: Sequence[Comparison]) -> Any:
    """Returns the comparisons ANDed as a Peewee expression, or None when there are none."""
    if not comparisons:
        return None
    expressions = [
        OPERATORS[c.operator](spec.filter_fields[c.field].column, c.value) for c in comparisons
    ]
    return functools.reduce(operator.and_, expressions)


def _parse_comparison(
    spec: ListSpec, tokens: Sequence[_Token], index: int
) -> tuple[Comparison, int]:
    name, op, literal = tokens[index : index + 3]
    if name.kind != "ident" or name.text in ("AND", "OR", "NOT"):
        raise filter_error(
            f"expected a field name at position {name.position}, found {_describe(name)}"
        )
    declared = spec.filter_fields.get(name.text)
    if declared is None:
        allowed = ", ".join(spec.filter_fields) or "none"
        raise filter_error(
            f"cannot filter on {_quote(name.text)}; filterable fields are: {allowed}"
        )
    if op.kind != "op":
        raise filter_error(
            f"expected an operator (= != < <= > >=) after {_quote(name.text)}, "
            f"found {_describe(op)}"
        )
    if op.text not in declared.allowed_operators:
        allowed = " ".join(o for o in OPERATORS if o in declared.allowed_operators)
        raise filter_error(f"{_quote(name.text)} supports only: {allowed}")
    value = _convert(name.text, declared, literal)
    return Comparison(name.text, op.text, value), index + 3


def _convert(name: str, declared: FilterField, literal: _Token) -> CursorValue:
    """Returns the literal as the value the column stores, or raises if its type is wrong."""
    kind = declared.kind
    if kind is FieldKind.STRING and literal.kind == "string":
        return literal.value
    if kind is FieldKind.INT and literal.kind == "int":
        return literal.value
    if kind is FieldKind.BOOL and literal.kind == "ident" and literal.text in ("true", "false"):
        return literal.text == "true"
    if kind is FieldKind.ENUM and literal.kind == "ident" and literal.text in declared.enum_values:
        return declared.enum_values[literal.text]
    if kind is FieldKind.TIMESTAMP and literal.kind == "string":
        timestamp = _parse_rfc3339(str(literal.value))
        if timestamp is None:
            raise filter_error(
                f"{_quote(name)} expects an RFC 3339 timestamp such as "
                f'"2026-01-01T00:00:00Z", found {_describe(literal)}'
            )
        return timestamp
    expected = {
        FieldKind.STRING: "a double-quoted string",
        FieldKind.INT: "an integer",
        FieldKind.BOOL: "true or false",
        FieldKind.TIMESTAMP: 'a quoted RFC 3339 timestamp such as "2026-01-01T00:00:00Z"',
        FieldKind.ENUM: "one of " + ", ".join(declared.enum_values),
    }[kind]
    raise filter_error(f"{_quote(name)} expects {expected}, found {_describe(literal)}")


def _parse_rfc3339(text: str) -> dt.datetime | None:
    """Returns an RFC 3339 timestamp as naive UTC (sub-microseconds dropped), or None."""
    match = _RFC3339.fullmatch(text)
    if match is None:
        return None
    year, month, day, hour, minute, second = (int(g) for g in match.groups()[:6])
    fraction, zulu, sign, offset_hours, offset_minutes = match.groups()[6:]
    microsecond = int((fraction or "0").ljust(6, "0")[:6])
    try:
        offset = dt.timedelta(0)
        if not zulu:
            offset = dt.timedelta(hours=int(offset_hours), minutes=int(offset_minutes))
            offset = -offset if sign == "-" else offset
        zone = dt.timezone(offset)
        # RFC 3339 allows a leap second (:60); Python does not, so it becomes the next second.
        leap = second == 60
        stamp = dt.datetime(
            year, month, day, hour, minute, 59 if leap else second, microsecond, tzinfo=zone
        )
        if leap:
            stamp += dt.timedelta(seconds=1)
        return stamp.astimezone(dt.UTC).replace(tzinfo=None)
    except (ValueError, OverflowError):
        return None


def _tokenize(text: str) -> list[_Token]:
    tokens: list[_Token] = []
    i, n = 0, len(text)
    while i < n:
        char = text[i]
        start = i
        if char in " \t\r\n":
            i += 1
        elif char == '"':
            value, i = _read_string(text, i)
            tokens.append(_Token("string", text[start:i], start + 1, value))
        elif char.isascii() and (char.isdigit() or char == "-"):
            match = _INTEGER.match(text, i)
            end = match.end() if match else i
            if match is None or (end < n and (text[end].isalnum() or text[end] in "_.")):
                raise filter_error(f"invalid number at position {start + 1}")
            number = int(text[i:end])
            if not _INT64_MIN <= number <= _INT64_MAX:
                raise filter_error(f"number at position {start + 1} is out of range")
            tokens.append(_Token("int", text[i:end], start + 1, number))
            i = end
        elif char.isascii() and (char.isalpha() or char == "_"):
            match = _IDENTIFIER.match(text, i)
            assert match is not None
            i = match.end()
            tokens.append(_Token("ident", text[start:i], start + 1))
        elif text.startswith(("!=", "<=", ">="), i):
            tokens.append(_Token("op", text[i : i + 2], start + 1))
            i += 2
        elif char in "=<>":
            tokens.append(_Token("op", char, start + 1))
            i += 1
        else:
            hint = {
                "'": "; strings use double quotes",
                "(": "; parentheses are not supported",
                ")": "; parentheses are not supported",
                ":": "; the has operator (:) is not supported",
            }.get(char, "")
            raise filter_error(f"unexpected character {_quote(char)} at position {start + 1}{hint}")
    tokens.append(_Token("end", "", n + 1))
    # Padding lets the parser look two tokens ahead without bounds checks.
    tokens.extend([tokens[-1], tokens[-1]])
    return tokens


_ESCAPES = {'"': '"', "\\": "\\", "n": "\n", "t": "\t", "r": "\r"}


def _read_string(text: str, start: int) -> tuple[str, int]:
    """Reads the double-quoted string at `start`; returns its value and the index after it."""
    chars: list[str] = []
    i = start + 1
    while i < len(text):
        char = text[i]
        if char == '"':
            return "".join(chars), i + 1
        if char == "\\":
            escaped = text[i + 1 : i + 2]
            if not escaped:
                break
            if escaped not in _ESCAPES:
                raise filter_error(
                    f'unknown escape \\{escaped} at position {i + 1}; use \\" \\\\ \\n \\t or \\r'
                )
            chars.append(_ESCAPES[escaped])
            i += 2
        else:
            chars.append(char)
            i += 1
    raise filter_error(f"unterminated string starting at position {start + 1}")


def _normalize_filter(comparisons: Sequence[Comparison]) -> str:
    # Sorted, so the same conditions written in another order or spacing give the same query.
    return " AND ".join(
        sorted(f"{c.field} {c.operator} {json.dumps(_encode_value(c.value))}" for c in comparisons)
    )


# --- page tokens --------------------------------------------------------------------------------


def query_fingerprint(name: str, filter_text: str, order_by: str, scope: str) -> bytes:
    """Returns the digest a page token is bound to: the list, normalized filter/order, scope."""
    canonical = json.dumps([_TOKEN_VERSION, name, filter_text, order_by, scope])
    return hashlib.sha256(canonical.encode()).digest()


def encode_page_token(values: Sequence[CursorValue], *, secret: bytes, fingerprint: bytes) -> str:
    """Returns an opaque URL-safe token carrying `values`, signed and bound to `fingerprint`."""
    payload = json.dumps([_encode_value(v) for v in values], separators=(",", ":")).encode()
    body = bytes([_TOKEN_VERSION]) + payload
    mac = hmac.new(secret, _MAC_CONTEXT + fingerprint + body, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(body + mac).rstrip(b"=").decode("ascii")


def decode_page_token(token: str, *, secret: bytes, fingerprint: bytes) -> tuple[CursorValue, ...]:
    """Returns the values in a token made by encode_page_token for `fingerprint`, or raises."""
    if len(token) > MAX_PAGE_TOKEN_LENGTH or not _BASE64URL.fullmatch(token):
        raise _token_error()
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    except (binascii.Error, ValueError):
        raise _token_error() from None
    # Only the canonical spelling is accepted: base64 can hide changes in unused trailing bits.
    if base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii") != token:
        raise _token_error()
    body, mac = raw[:-_MAC_SIZE], raw[-_MAC_SIZE:]
    if len(body) < 1 or body[0] != _TOKEN_VERSION:
        raise _token_error()
    expected = hmac.new(secret, _MAC_CONTEXT + fingerprint + body, hashlib.sha256).digest()
    if not hmac.compare_digest(mac, expected):
        raise _token_error()
    try:
        items = json.loads(body[1:])
        if not isinstance(items, list):
            raise ValueError("not a list")
        return tuple(_decode_value(item) for item in items)
    except (ValueError, TypeError, OverflowError):
        raise _token_error() from None


def _encode_value(value: CursorValue) -> Any:
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


# --- errors -------------------------------------------------------------------------------------


def filter_error(description: str) -> InvalidArgument:
    """Returns the INVALID_ARGUMENT error for a bad filter, naming the `filter` field."""
    return InvalidArgument(
        f"Invalid filter: {description}.", violations=[FieldViolation("filter", description)]
    )


def _order_error(description: str) -> InvalidArgument:
    return InvalidArgument(
        f"Invalid order_by: {description}.", violations=[FieldViolation("order_by", description)]
    )


def _token_error() -> InvalidArgument:
    description = "is invalid, or belongs to a different query (filter, order_by or parent)"
    return InvalidArgument(
        f"Invalid page_token: {description}.",
        violations=[FieldViolation("page_token", description)],
    )


def _quote(text: str) -> str:
    """Returns user input quoted for a message, shortened so a huge input is not echoed."""
    return repr(text if len(text) <= 40 else text[:37] + "...")


def _describe(token: _Token) -> str:
    return "the end of the filter" if token.kind == "end" else _quote(token.text)
