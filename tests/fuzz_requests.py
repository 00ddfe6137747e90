"""Hypothesis strategies that build any request from its protobuf descriptor, hostile or plausible.

The fuzz test knows no message by name: every field gets a strategy from its type (and, for
strings, a hint from its name), so a new RPC or field is fuzzed the day it is added. Values mix
what breaks servers (control characters, NUL, private-use code points, 20,000-character strings,
integer extremes, unknown enum numbers, oversized lists, out-of-range timestamps, unknown fields)
with what gets past the first validation layer (lower-case UUIDs, ids of rows that exist, ISO
currency and country codes, emails, filters in the List grammar).
"""

from __future__ import annotations

import math
import re
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from google.protobuf import field_mask_pb2, message_factory, struct_pb2, text_format, timestamp_pb2
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from hypothesis import strategies as st

F = FieldDescriptor

# Bodies that are not protobuf: a truncated varint, a length running past the end, invalid UTF-8
# in a string field, a group end tag without a start, a field number of zero.
MALFORMED_BODIES: tuple[bytes, ...] = (
    b"\x08\x80",
    b"\x0a\x05ab",
    b"\x0a\x02\xc3\x28",
    b"\x0c",
    b"\x00\x01",
    b"\x0a\xff\xff\xff\xff\x0f",
)

# Characters that text validation must refuse or store faithfully: NUL, C0/C1 controls, escape,
# direction overrides, zero-width and byte-order marks, line/paragraph separators, private-use
# (BMP and plane 15), noncharacters, combining marks, the last valid code point.
NASTY_CHARACTERS = (
    "\x00\x01\x07\x08\t\n\r\x1b\x7f\x85\x9f\u00a0\u200b\u200d\u202e\u2066\u2028\u2029"
    "\ufeff\ue000\uf8ff\ufffe\uffff\U000f0000\U0010fffd\U0010ffff\u0301\u05d0\U0001f600"
    "'\"\\%_;`$<>&*?.:=/ "
)
# Short values that each broke, or could break, one layer: NUL (PostgreSQL text refuses it),
# direction override, private use, byte-order mark, a lone combining mark, SQL-ish and LIKE text.
SHARP_STRINGS = (
    "a\x00b",
    "\x00",
    "Widget\x00",
    "a\u202eb",
    "\ue000",
    "\ufeffa",
    "\u0301",
    "%_\\",
    "' OR 1=1 --",
    "a\nb",
)
# Every code point UTF-8 can carry: surrogates cannot be serialised, so they are left out.
ANY_CHARACTER = st.characters(codec="utf-8")
LONG_LENGTHS = (65, 129, 201, 257, 1025, 4097, 8193, 12000, 17000, 20000)
LIST_SIZES = (0, 1, 2, 20, 21, 49, 50, 51, 99, 100, 101, 200, 201, 250)
CURRENCY_CODES = ("EUR", "USD", "GBP", "JPY", "CHF", "KWD", "CLP", "XXX", "eur", "EU", "EURO", "")
COUNTRY_CODES = ("DE", "US", "FR", "GB", "JP", "CH", "AT", "de", "XX", "ZZ", "DEU", "D", "")
PAYMENT_TOKENS = ("tok_visa", "tok_mastercard", "tok_declined", "tok_insufficient_funds")
DECIMALS = ("1", "0.5", "1.2345", "0", "-1", "1e308", "1e-320", "NaN", "Infinity", "0x10", "1,5")
FILTER_NAMES = (
    "state",
    "category",
    "price_currency",
    "price_minor",
    "update_time",
    "create_time",
    "role",
    "disabled",
    "email",
    "customer_id",
    "total_minor",
    "id",
)
FILTER_OPERATORS = ("=", "!=", "<", ">", "<=", ">=", ":", "==", "~")
FILTER_LITERALS = (
    '"ACTIVE"',
    '"ARCHIVED"',
    '"PLACED"',
    '"ADMIN"',
    '"EUR"',
    "100",
    "-1",
    "9223372036854775807",
    "9223372036854775808",
    "-9223372036854775809",
    "99999999999999999999999",
    "1e400",
    "true",
    '"2024-01-01T00:00:00Z"',
    '"9999-12-31T23:59:59Z"',
    '"0000-01-01T00:00:00Z"',
    '"x"',
    '"a\\"b"',
    "'x'",
    "",
)
ORDER_BY = ("create_time", "create_time desc", "total_minor asc", "id", "name", "price desc")
TIMESTAMP_MIN_SECONDS = -62_135_596_800  # 0001-01-01T00:00:00Z
TIMESTAMP_MAX_SECONDS = 253_402_300_799  # 9999-12-31T23:59:59Z
_INTEGER_RANGES = {
    F.TYPE_INT32: (-(2**31), 2**31 - 1),
    F.TYPE_SINT32: (-(2**31), 2**31 - 1),
    F.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    F.TYPE_INT64: (-(2**63), 2**63 - 1),
    F.TYPE_SINT64: (-(2**63), 2**63 - 1),
    F.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    F.TYPE_UINT32: (0, 2**32 - 1),
    F.TYPE_FIXED32: (0, 2**32 - 1),
    F.TYPE_UINT64: (0, 2**64 - 1),
    F.TYPE_FIXED64: (0, 2**64 - 1),
}
MAX_DEPTH = 4
UNSET = object()
# Far above what any one value may be, far below the server's message limit (4 MiB), which the
# transport enforces before any storefront code runs.
MAX_BODY_BYTES = 512 * 1024


@dataclass(frozen=True)
class Hints:
    """Values that exist on the server under test: ids of its rows, emails of its accounts."""

    ids: Sequence[str] = ()
    emails: Sequence[str] = ()


@dataclass(frozen=True)
class FuzzBody:
    """One request body: a message (plus any unknown fields appended) or raw bytes."""

    body: bytes
    message: Message | None = None
    unknown_fields: bytes = b""

    def __repr__(self) -> str:
        if self.message is None:
            return f"FuzzBody(raw={_compress(repr(self.body))})"
        try:
            shown = text_format.MessageToString(self.message, as_one_line=True)
        except Exception:  # too deep to print (upb refuses): show the bytes instead
            shown = repr(self.body)
        suffix = f", unknown_fields={self.unknown_fields!r}" if self.unknown_fields else ""
        return f"FuzzBody({type(self.message).__name__}<{_compress(shown)}>{suffix})"


def _compress(text: str) -> str:
    """Writes a unit repeated 16+ times as `<unit*n>`, so 20,000-character values stay readable."""
    return re.sub(
        r"(.{1,4}?)\1{15,}", lambda m: f"<{m.group(1)}*{len(m.group(0)) // len(m.group(1))}>", text
    )


# --- scalars -------------------------------------------------------------------------------------


def integers(low: int, high: int) -> st.SearchStrategy[int]:
    """Integers in [low, high], often at the edges: min, max, 0, -1, 1 and 2**31/2**53 bounds."""
    edges = sorted(
        {
            v
            for v in (low, high, low + 1, high - 1, 0, -1, 1, 2**31 - 1, 2**31, 2**53, 2**53 + 1)
            if low <= v <= high
        }
    )
    return st.one_of(
        st.sampled_from(edges),
        st.integers(max(low, -1000), min(high, 1000)),
        st.integers(low, high),
    )


def floats() -> st.SearchStrategy[float]:
    """Any double, NaN and infinities included."""
    return st.one_of(
        st.sampled_from([0.0, -0.0, 1.5, math.inf, -math.inf, math.nan, 1e308, 5e-324]),
        st.floats(allow_nan=True, allow_infinity=True),
    )


def hostile_text() -> st.SearchStrategy[str]:
    """Short text full of control, private-use, combining and other awkward characters."""
    return st.text(
        alphabet=st.one_of(ANY_CHARACTER, st.sampled_from(NASTY_CHARACTERS)), max_size=24
    )


def long_text() -> st.SearchStrategy[str]:
    """A long value (up to 20,000 characters), made of one repeated character with a tail."""
    return st.builds(
        lambda ch, n, tail: ch * n + tail,
        st.sampled_from(["Q", "r", "a", "é", "😀", "\ue000", "\x00", " "]),
        st.sampled_from(LONG_LENGTHS),
        st.sampled_from(["", "\x00", "\u202e", "'", "x"]),
    )


def lower_case_uuids() -> st.SearchStrategy[str]:
    """Lower-case UUIDs, the form of every server-generated id."""
    return st.uuids().map(str)


def _ids(hints: Hints) -> st.SearchStrategy[str]:
    existing = [st.sampled_from(list(hints.ids))] if hints.ids else []
    return st.one_of(
        *existing,
        *existing,
        lower_case_uuids(),
        st.uuids().map(lambda u: str(u).upper()),
        st.uuids().map(lambda u: u.hex),
        st.sampled_from(["00000000-0000-0000-0000-000000000000", " " + str(uuid.UUID(int=1))]),
    )


def _emails(hints: Hints) -> st.SearchStrategy[str]:
    local = st.text(alphabet="abcxyz09.+-_", min_size=1, max_size=12)
    return st.one_of(
        st.sampled_from(list(hints.emails) or ["someone@example.com"]),
        st.builds(lambda name: f"{name}@example.com", local),
        st.builds(lambda name, ch: f"{name}{ch}@example.com", local, hostile_text()),
        st.sampled_from(["@", "a@", "@b", "a@b@c", "A@EXAMPLE.COM", "a@" + "b" * 250 + ".com"]),
    )


def _filters() -> st.SearchStrategy[str]:
    term = st.builds(
        lambda name, op, literal: f"{name} {op} {literal}",
        st.sampled_from(FILTER_NAMES),
        st.sampled_from(FILTER_OPERATORS),
        st.one_of(st.sampled_from(FILTER_LITERALS), hostile_text().map(lambda t: f'"{t}"')),
    )
    joined = st.lists(term, min_size=1, max_size=4).flatmap(
        lambda terms: st.sampled_from([" AND ", " OR ", " and ", ","]).map(
            lambda glue: glue.join(terms)
        )
    )
    return st.one_of(joined, st.sampled_from(["(", ")", "NOT", '"', "state = ", "= 1", "AND"]))


def _hinted(name: str, hints: Hints) -> list[st.SearchStrategy[str]]:
    """Plausible values for a string field, chosen by what its name says it holds."""
    if name == "id" or name.endswith(("_id", "_ids")) or name == "line_id":
        return [_ids(hints)]
    if "currency" in name or name == "code":
        return [st.sampled_from(CURRENCY_CODES)]
    if "country" in name:
        return [st.sampled_from(COUNTRY_CODES)]
    if "email" in name:
        return [_emails(hints)]
    if name == "filter":
        return [_filters()]
    if name == "order_by":
        return [st.sampled_from(ORDER_BY)]
    if name == "rate":
        return [st.sampled_from(DECIMALS)]
    if "password" in name or "secret" in name:
        return [st.sampled_from(["a much longer passphrase", "short", "x" * 129, "p" * 1025])]
    if name == "payment_method_token":
        return [st.sampled_from(PAYMENT_TOKENS)]
    if "token" in name or name == "etag":
        return [st.sampled_from(["", 'W/"1"', '"1"', "a.b.c", "eyJhbGciOiJub25lIn0.e30."])]
    if "url" in name:
        return [
            st.sampled_from(["https://example.com/a.png", "javascript:alert(1)", "//x", "ftp://x"])
        ]
    return [st.sampled_from(["Widget", "Berlin", "10115", "reason", "sku-1", " padded ", "a", ""])]


def _spliced(plain: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    """A plausible value with one awkward character put somewhere in it."""
    return st.builds(
        lambda text, ch, at: text[: at % (len(text) + 1)] + ch + text[at % (len(text) + 1) :],
        plain,
        st.sampled_from(NASTY_CHARACTERS),
        st.integers(0, 64),
    )


def strings(name: str, hints: Hints) -> st.SearchStrategy[str]:
    """A string field: plausible for its name, plausible with a nasty character, a sharp value,
    hostile text or a very long value."""
    plausible = st.one_of(*_hinted(name, hints))
    return st.one_of(
        plausible,
        plausible,
        _spliced(plausible),
        st.sampled_from(SHARP_STRINGS),
        hostile_text(),
        long_text(),
    )


# --- well-known types ----------------------------------------------------------------------------


def timestamps() -> st.SearchStrategy[timestamp_pb2.Timestamp]:
    """Timestamps inside, at the edges of and far outside the range RFC 3339 can write."""
    seconds = st.one_of(
        st.integers(1_500_000_000, 2_000_000_000),
        st.sampled_from([0, -1, TIMESTAMP_MIN_SECONDS, TIMESTAMP_MAX_SECONDS]),
        st.sampled_from(
            [TIMESTAMP_MIN_SECONDS - 1, TIMESTAMP_MAX_SECONDS + 1, -(2**63), 2**63 - 1]
        ),
    )
    nanos = st.one_of(st.just(0), st.sampled_from([999_999_999, 10**9, -1, -(2**31), 2**31 - 1]))
    return st.builds(timestamp_pb2.Timestamp, seconds=seconds, nanos=nanos)


def field_masks(paths: Sequence[str]) -> st.SearchStrategy[field_mask_pb2.FieldMask]:
    """Field masks naming real paths, unknown ones, duplicates, wildcards and huge paths."""
    path = st.one_of(
        st.sampled_from(list(paths) or ["name"]),
        st.sampled_from(["*", "", ".", "a..b", "name.", "NAME", "id", "etag", "update_mask"]),
        st.sampled_from(SHARP_STRINGS),
        hostile_text(),
        long_text(),
    )
    return st.builds(
        lambda chosen: field_mask_pb2.FieldMask(paths=chosen),
        st.one_of(st.lists(path, max_size=4), st.lists(path, min_size=20, max_size=60)),
    )


def _json_values() -> st.SearchStrategy[Any]:
    """JSON-like values: null, booleans, any double, hostile and long text, lists, objects."""
    leaves = st.one_of(st.none(), st.booleans(), floats(), hostile_text(), long_text())
    keys = st.one_of(hostile_text(), st.sampled_from(["color", "", "a" * 300]))
    return st.recursive(
        leaves,
        lambda inner: st.one_of(
            st.lists(inner, max_size=4), st.dictionaries(keys, inner, max_size=4)
        ),
        max_leaves=12,
    )


def _nested_lists(depth: int) -> Any:
    value: Any = "bottom"
    for _ in range(depth):
        value = [value]
    return value


def structs() -> st.SearchStrategy[struct_pb2.Struct]:
    """Structs of JSON-like values: NaN, infinities, odd keys, many keys, deep nesting."""

    def build(fields: dict[str, Any]) -> struct_pb2.Struct:
        built = struct_pb2.Struct()
        built.update(fields)
        return built

    keys = st.one_of(hostile_text(), st.sampled_from(["color", "size", "", "k" * 300]))
    many = st.builds(lambda n: {f"k{i}": i for i in range(n)}, st.sampled_from([49, 50, 51, 200]))
    deep = st.builds(lambda n: {"deep": _nested_lists(n)}, st.sampled_from([30, 60, 90]))
    return st.one_of(st.dictionaries(keys, _json_values(), max_size=5), many, deep).map(build)


def values() -> st.SearchStrategy[struct_pb2.Value]:
    """google.protobuf.Value of any kind."""

    def build(content: Any) -> struct_pb2.Value:
        struct = struct_pb2.Struct()
        struct.update({"v": content})
        return struct.fields["v"]

    return _json_values().map(build)


# --- messages ------------------------------------------------------------------------------------


def _mask_paths(descriptor: Descriptor) -> list[str]:
    """Paths a FieldMask in `descriptor` plausibly names: the fields of its sibling messages."""
    paths: list[str] = []
    for sibling in descriptor.fields:
        paths.append(sibling.name)
        if sibling.message_type is None or sibling.message_type.full_name.startswith("google."):
            continue
        for inner in sibling.message_type.fields:
            paths.append(inner.name)
            if inner.message_type is not None and not inner.message_type.full_name.startswith(
                "google."
            ):
                paths.extend(f"{inner.name}.{leaf.name}" for leaf in inner.message_type.fields)
    return paths


def _lists(element: st.SearchStrategy[object]) -> st.SearchStrategy[list[object]]:
    """Short lists usually; sometimes lists at and above typical caps (up to 250 elements)."""
    return st.one_of(
        st.lists(element, max_size=4),
        st.builds(
            lambda seed, n: (seed * n)[:n],
            st.lists(element, min_size=1, max_size=3),
            st.sampled_from(LIST_SIZES),
        ),
    )


def _distinct_ids() -> st.SearchStrategy[list[object]]:
    return st.builds(
        lambda base, n: [str(uuid.UUID(int=base + i)) for i in range(n)],
        st.integers(0, 2**100),
        st.sampled_from(LIST_SIZES),
    )


class MessageStrategies:
    """Builds a strategy for any message descriptor, with hints of values that exist."""

    def __init__(self, hints: Hints) -> None:
        self.hints = hints

    def message(self, descriptor: Descriptor, depth: int = 0) -> st.SearchStrategy[Message]:
        """Returns a strategy for `descriptor`: each field set or left unset independently."""
        special = self._well_known(descriptor)
        if special is not None:
            return special
        message_class = message_factory.GetMessageClass(descriptor)
        # Each field is set three times in four: requests get past "is required" checks.
        fields = {
            f.name: st.one_of(st.just(UNSET), *[self._field(f, descriptor, depth)] * 3)
            for f in descriptor.fields
            if f.message_type is None or depth < MAX_DEPTH
        }
        return st.fixed_dictionaries(fields).map(lambda values: _build(message_class, values))

    def _well_known(self, descriptor: Descriptor) -> st.SearchStrategy[Message] | None:
        builders: dict[str, Callable[[], st.SearchStrategy[Message]]] = {
            "google.protobuf.Timestamp": timestamps,
            "google.protobuf.Struct": structs,
            "google.protobuf.Value": values,
        }
        builder = builders.get(descriptor.full_name)
        return builder() if builder is not None else None

    def _field(
        self, f: FieldDescriptor, parent: Descriptor, depth: int
    ) -> st.SearchStrategy[object]:
        if f.message_type is not None and f.message_type.GetOptions().map_entry:
            key_field, value_field = (
                f.message_type.fields_by_name["key"],
                f.message_type.fields_by_name["value"],
            )
            return st.dictionaries(
                self._single(key_field, parent, depth + 1),
                self._single(value_field, parent, depth + 1),
                max_size=5,
            )
        element = self._single(f, parent, depth)
        if not f.is_repeated:
            return element
        if f.type == F.TYPE_STRING and f.name.endswith("_ids"):
            return st.one_of(_lists(element), _distinct_ids())
        return _lists(element)

    def _single(
        self, f: FieldDescriptor, parent: Descriptor, depth: int
    ) -> st.SearchStrategy[object]:
        if f.message_type is not None:
            if f.message_type.full_name == "google.protobuf.FieldMask":
                return field_masks(_mask_paths(parent))
            return self.message(f.message_type, depth + 1)
        if f.enum_type is not None:
            known = [v.number for v in f.enum_type.values]
            if f.enum_type.is_closed:
                return st.sampled_from(known)
            return st.one_of(
                st.sampled_from(known),
                st.sampled_from([max(known) + 1, -1, 2**31 - 1, -(2**31)]),
                st.integers(-(2**31), 2**31 - 1),
            )
        if f.type == F.TYPE_STRING:
            return strings(f.name, self.hints)
        if f.type == F.TYPE_BYTES:
            return st.one_of(st.binary(max_size=32), st.sampled_from([b"\x00" * 20000]))
        if f.type == F.TYPE_BOOL:
            return st.booleans()
        if f.type == F.TYPE_FLOAT:
            return st.floats(width=32)
        if f.type == F.TYPE_DOUBLE:
            return floats()
        low, high = _INTEGER_RANGES[f.type]
        return integers(low, high)


def _build(message_class: type[Message], values: dict[str, object]) -> Message:
    built = message_class()
    for name, value in values.items():
        if value is UNSET:
            continue
        target = getattr(built, name)
        if isinstance(value, Message):
            target.CopyFrom(value)
        elif isinstance(value, dict):
            for key, item in value.items():
                if isinstance(item, Message):
                    target[key].CopyFrom(item)
                else:
                    target[key] = item
        elif isinstance(value, list):
            target.extend(value)
        else:
            setattr(built, name, value)
    return built


# --- wire format ---------------------------------------------------------------------------------


def _varint(value: int) -> bytes:
    out = bytearray()
    value &= (1 << 64) - 1
    while True:
        low, value = value & 0x7F, value >> 7
        out.append(low | (0x80 if value else 0))
        if not value:
            return bytes(out)


WIRE_VARINT, WIRE_FIXED64, WIRE_LEN, WIRE_FIXED32 = 0, 1, 2, 5
_FIXED64_TYPES = frozenset({F.TYPE_DOUBLE, F.TYPE_FIXED64, F.TYPE_SFIXED64})
_FIXED32_TYPES = frozenset({F.TYPE_FLOAT, F.TYPE_FIXED32, F.TYPE_SFIXED32})
_LEN_TYPES = frozenset({F.TYPE_STRING, F.TYPE_BYTES, F.TYPE_MESSAGE, F.TYPE_GROUP})


def accepted_wire_types(f: FieldDescriptor) -> frozenset[int]:
    """Returns the wire types a parser reads into `f` (repeated numbers come packed or not)."""
    if f.type in _LEN_TYPES:
        return frozenset({WIRE_LEN})
    own = WIRE_FIXED64 if f.type in _FIXED64_TYPES else WIRE_VARINT
    own = WIRE_FIXED32 if f.type in _FIXED32_TYPES else own
    return frozenset({own, WIRE_LEN}) if f.is_repeated else frozenset({own})


def _encode_field(number: int, wire_type: int, payload: bytes, integer: int) -> bytes:
    tag = _varint(number << 3 | wire_type)
    if wire_type == WIRE_VARINT:
        return tag + _varint(integer)
    if wire_type == WIRE_FIXED64:
        return tag + payload.ljust(8, b"\x00")[:8]
    if wire_type == WIRE_FIXED32:
        return tag + payload.ljust(4, b"\x00")[:4]
    return tag + _varint(len(payload)) + payload


def unknown_fields(descriptor: Descriptor) -> st.SearchStrategy[bytes]:
    """Well-formed fields the parser keeps as unknown: numbers `descriptor` does not declare, and
    declared numbers sent with a wire type their field does not take."""
    wire_types = (WIRE_VARINT, WIRE_FIXED64, WIRE_LEN, WIRE_FIXED32)
    undeclared = st.builds(
        _encode_field,
        st.integers(1, 2**29 - 1).filter(lambda n: n not in descriptor.fields_by_number),
        st.sampled_from(wire_types),
        st.binary(max_size=16),
        st.integers(0, 2**64 - 1),
    )
    mismatched = [
        st.builds(
            _encode_field,
            st.just(f.number),
            st.sampled_from([w for w in wire_types if w not in accepted_wire_types(f)]),
            st.binary(max_size=16),
            st.integers(0, 2**64 - 1),
        )
        for f in descriptor.fields
    ]
    return st.lists(st.one_of(undeclared, *mismatched), max_size=3).map(b"".join)


def bodies(descriptor: Descriptor, strategies: MessageStrategies) -> st.SearchStrategy[FuzzBody]:
    """Request bodies for a method taking `descriptor`: mostly messages, sometimes with unknown
    fields, sometimes bytes that are not protobuf at all."""
    messages = st.builds(
        lambda message, extra: FuzzBody(message.SerializeToString() + extra, message, extra),
        strategies.message(descriptor),
        st.one_of(st.just(b""), st.just(b""), unknown_fields(descriptor)),
    )
    truncated = st.builds(
        lambda message, cut: FuzzBody(message.SerializeToString()[:-cut] + b"\x80"),
        strategies.message(descriptor),
        st.integers(1, 4),
    )
    raw = st.one_of(st.sampled_from(MALFORMED_BODIES), st.binary(min_size=1, max_size=64)).map(
        FuzzBody
    )
    fitting = messages.filter(lambda body: len(body.body) <= MAX_BODY_BYTES)
    return st.one_of(fitting, fitting, fitting, fitting, fitting, fitting, raw, truncated)


# --- one field at a time -------------------------------------------------------------------------

PROBE_STRINGS = ("a\x00b", "Q" * 17000, "\ue000", "a\u202eb")


def _probe_values(f: FieldDescriptor) -> list[object]:
    """Edge values for one field, the ones each layer most often gets wrong."""
    if f.message_type is not None and f.message_type.full_name == "google.protobuf.FieldMask":
        return [field_mask_pb2.FieldMask(paths=[p]) for p in ("r" * 17000, "a\x00b")]
    if f.enum_type is not None:
        return [2**31 - 1, -1]
    if f.type == F.TYPE_STRING:
        return [[v] for v in PROBE_STRINGS] if f.is_repeated else list(PROBE_STRINGS)
    if f.type in _INTEGER_RANGES:
        low, high = _INTEGER_RANGES[f.type]
        return [low, high] if not f.is_repeated else [[low], [high]]
    return []


def _probe(descriptor: Descriptor, path: Sequence[FieldDescriptor], value: object) -> FuzzBody:
    built = message_factory.GetMessageClass(descriptor)()
    holder: Message = built
    for step in path[:-1]:
        holder = (
            getattr(holder, step.name).add() if step.is_repeated else getattr(holder, step.name)
        )
    leaf = path[-1]
    if isinstance(value, Message):
        getattr(holder, leaf.name).CopyFrom(value)
    elif isinstance(value, list):
        getattr(holder, leaf.name).extend(value)
    else:
        setattr(holder, leaf.name, value)
    return FuzzBody(built.SerializeToString(), built)


def single_field_probes(descriptor: Descriptor) -> list[FuzzBody]:
    """Requests that set one field, nested ones included, to each of its edge values and leave
    the rest empty: a deterministic floor under the random campaign."""
    return _probes_below(descriptor, descriptor, ())


def _probes_below(
    root: Descriptor, descriptor: Descriptor, prefix: Sequence[FieldDescriptor]
) -> list[FuzzBody]:
    probes: list[FuzzBody] = []
    for f in descriptor.fields:
        path = [*prefix, f]
        values = _probe_values(f)
        probes.extend(_probe(root, path, value) for value in values)
        nested = f.message_type
        if (
            not values
            and nested is not None
            and not nested.GetOptions().map_entry
            and not nested.full_name.startswith("google.protobuf.")
            and len(path) < 3
        ):
            probes.extend(_probes_below(root, nested, path))
    return probes
