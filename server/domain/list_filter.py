"""List RPC filters: an AIP-160 subset parsed into typed comparisons and turned into SQL."""

from __future__ import annotations

import datetime as dt
import enum
import functools
import json
import operator
import re
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from server.domain.page_tokens import CursorValue, encode_value
from server.errors import FieldViolation, InvalidArgument

if TYPE_CHECKING:
    from server.domain.listing import ListSpec

MAX_FILTER_LENGTH = 1000
MAX_FILTER_TERMS = 20

OPERATORS: Mapping[str, Callable[[Any, Any], Any]] = {
    "=": operator.eq,
    "!=": operator.ne,
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}
_EQUALITY = frozenset({"=", "!="})

IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
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
            if not IDENTIFIER.fullmatch(name) or name in ("true", "false", "AND", "OR", "NOT"):
                raise ValueError(f"enum identifier {name!r} is not a plain identifier")
            encode_value(value)

    @property
    def allowed_operators(self) -> frozenset[str]:
        """The operators this field accepts."""
        if self.operators is not None:
            return frozenset(self.operators)
        if self.kind in (FieldKind.BOOL, FieldKind.ENUM):
            return _EQUALITY
        return frozenset(OPERATORS)


@dataclass(frozen=True)
class Comparison:
    """One parsed filter term; `value` is already converted to what the column stores."""

    field: str
    operator: str
    value: CursorValue


# --- parsing ------------------------------------------------------------------------------------


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
                f"{quote(token.text)} at position {token.position} is not supported; "
                "join comparisons with AND (uppercase)"
            )
        raise filter_error(
            f"expected AND or the end at position {token.position}, found {quote(token.text)}"
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
        raise filter_error(f"cannot filter on {quote(name.text)}; filterable fields are: {allowed}")
    if op.kind != "op":
        raise filter_error(
            f"expected an operator (= != < <= > >=) after {quote(name.text)}, found {_describe(op)}"
        )
    if op.text not in declared.allowed_operators:
        allowed = " ".join(o for o in OPERATORS if o in declared.allowed_operators)
        raise filter_error(f"{quote(name.text)} supports only: {allowed}")
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
                f"{quote(name)} expects an RFC 3339 timestamp such as "
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
    raise filter_error(f"{quote(name)} expects {expected}, found {_describe(literal)}")


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
            match = IDENTIFIER.match(text, i)
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
            raise filter_error(f"unexpected character {quote(char)} at position {start + 1}{hint}")
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


def normalize_filter(comparisons: Sequence[Comparison]) -> str:
    """Returns the comparisons in one canonical spelling, for a page token's fingerprint."""
    # Sorted, so the same conditions written in another order or spacing give the same query.
    return " AND ".join(
        sorted(f"{c.field} {c.operator} {json.dumps(encode_value(c.value))}" for c in comparisons)
    )


# --- errors -------------------------------------------------------------------------------------


def filter_error(description: str) -> InvalidArgument:
    """Returns the INVALID_ARGUMENT error for a bad filter, naming the `filter` field."""
    return InvalidArgument(
        f"Invalid filter: {description}.", violations=[FieldViolation("filter", description)]
    )


def quote(text: str) -> str:
    """Returns user input quoted for a message, shortened so a huge input is not echoed."""
    return repr(text if len(text) <= 40 else text[:37] + "...")


def _describe(token: _Token) -> str:
    return "the end of the filter" if token.kind == "end" else quote(token.text)
