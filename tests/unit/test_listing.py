"""Unit tests for List RPC support: page size, filter and order_by parsing, page tokens."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import json
import uuid

import peewee
import pytest
from hypothesis import given
from hypothesis import strategies as st

from server.domain import list_filter, listing, page_tokens
from server.domain.list_filter import Comparison, FieldKind, FilterField
from server.domain.listing import ListSpec
from server.errors import InvalidArgument

SECRET = b"test-secret-for-page-tokens"
SIGNER = page_tokens.PageTokenSigner(SECRET)
# Never connected: only renders SQL so tests can see where values go.
SQL_ONLY = peewee.SqliteDatabase(None)


class Gadget(peewee.Model):
    """A model only for parsing tests; it never touches a database."""

    id = peewee.CharField(max_length=36, primary_key=True)
    email = peewee.CharField()
    name = peewee.CharField()
    role = peewee.CharField()
    stock = peewee.IntegerField()
    disabled = peewee.BooleanField()
    create_time = peewee.DateTimeField()

    class Meta:
        database = SQL_ONLY
        table_name = "gadgets"


SPEC = ListSpec(
    name="gadgets",
    model=Gadget,
    filter_fields={
        "email": FilterField(Gadget.email, FieldKind.STRING, operators={"="}),
        "name": FilterField(Gadget.name, FieldKind.STRING),
        "role": FilterField(
            Gadget.role, FieldKind.ENUM, enum_values={"ROLE_STAFF": "staff", "ROLE_ADMIN": "admin"}
        ),
        "stock": FilterField(Gadget.stock, FieldKind.INT),
        "disabled": FilterField(Gadget.disabled, FieldKind.BOOL),
        "create_time": FilterField(Gadget.create_time, FieldKind.TIMESTAMP),
    },
    order_fields={
        "create_time": Gadget.create_time,
        "email": Gadget.email,
        "stock": Gadget.stock,
    },
    default_order="create_time desc",
)


def violated_fields(exc: pytest.ExceptionInfo[InvalidArgument]) -> list[str]:
    return [violation.field for violation in exc.value.violations]


def request(**overrides: object) -> listing.ListRequest:
    fields: dict[str, object] = {
        "signer": SIGNER,
        "page_size": 10,
        "page_token": "",
        "filter": "",
        "order_by": "",
        "scope": "",
    }
    fields.update(overrides)
    scope = str(fields.pop("scope"))
    page = listing.PageRequest(**fields)  # type: ignore[arg-type]
    return listing.parse_list_request(SPEC, page, scope=scope)


def token_for(values: tuple[page_tokens.CursorValue, ...], **query: object) -> str:
    """Returns a genuine token for the query described by `query`."""
    fingerprint = request(**query).fingerprint
    return page_tokens.encode_page_token(values, secret=SECRET, fingerprint=fingerprint)


CURSOR = (dt.datetime(2026, 1, 2, 3, 4, 5, 678901), "0f3c7b1e-8a51-4d0e-9b55-1f3f1f1f1f1f")


# --- page size ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("page_size", "effective"),
    [(0, 50), (1, 1), (49, 49), (50, 50), (100, 100), (101, 100), (2**31 - 1, 100)],
)
def test_page_size_defaults_and_caps(page_size: int, effective: int) -> None:
    assert listing.page_size_or_default(page_size) == effective
    assert request(page_size=page_size).page_size == effective


@pytest.mark.parametrize("page_size", [-1, -50, -(2**31)])
def test_negative_page_size_is_invalid(page_size: int) -> None:
    with pytest.raises(InvalidArgument) as exc:
        listing.page_size_or_default(page_size)
    assert violated_fields(exc) == ["page_size"]


def test_every_invalid_field_is_reported_together() -> None:
    with pytest.raises(InvalidArgument) as exc:
        request(page_size=-1, filter="nope = 1", order_by="nope")
    assert violated_fields(exc) == ["page_size", "filter", "order_by"]


# --- filter -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", ()),
        ("   \t\n", ()),
        ('email = "a@example.com"', (Comparison("email", "=", "a@example.com"),)),
        ('name="x"', (Comparison("name", "=", "x"),)),
        ('name != ""', (Comparison("name", "!=", ""),)),
        (r'name = "say \"hi\" \\ \n\t\r"', (Comparison("name", "=", 'say "hi" \\ \n\t\r'),)),
        ('name = "ünïcødé ✓"', (Comparison("name", "=", "ünïcødé ✓"),)),
        ('name = "1=1; DROP TABLE users"', (Comparison("name", "=", "1=1; DROP TABLE users"),)),
        ('name < "m"', (Comparison("name", "<", "m"),)),
        ("stock >= 10", (Comparison("stock", ">=", 10),)),
        ("stock > -3", (Comparison("stock", ">", -3),)),
        ("stock <= 9223372036854775807", (Comparison("stock", "<=", 2**63 - 1),)),
        ("stock = -9223372036854775808", (Comparison("stock", "=", -(2**63)),)),
        ("disabled = true", (Comparison("disabled", "=", True),)),
        ("disabled != false", (Comparison("disabled", "!=", False),)),
        ("role = ROLE_STAFF", (Comparison("role", "=", "staff"),)),
        ("role != ROLE_ADMIN", (Comparison("role", "!=", "admin"),)),
        (
            'create_time >= "2026-01-01T00:00:00Z"',
            (Comparison("create_time", ">=", dt.datetime(2026, 1, 1)),),
        ),
        (
            'create_time < "2026-01-01T01:30:00+01:30"',
            (Comparison("create_time", "<", dt.datetime(2026, 1, 1)),),
        ),
        (
            'create_time < "2025-12-31t19:00:00.123456789-05:00"',
            (Comparison("create_time", "<", dt.datetime(2026, 1, 1, 0, 0, 0, 123456)),),
        ),
        (
            'create_time = "2016-12-31T23:59:60Z"',
            (Comparison("create_time", "=", dt.datetime(2017, 1, 1)),),
        ),
        (
            "role = ROLE_STAFF AND disabled = false AND stock > 0 AND stock < 100",
            (
                Comparison("role", "=", "staff"),
                Comparison("disabled", "=", False),
                Comparison("stock", ">", 0),
                Comparison("stock", "<", 100),
            ),
        ),
        ("  stock=1\nAND\tstock=2  ", (Comparison("stock", "=", 1), Comparison("stock", "=", 2))),
    ],
)
def test_valid_filters_parse_to_comparisons(text: str, expected: tuple[Comparison, ...]) -> None:
    assert list_filter.parse_filter(SPEC, text) == expected


MALFORMED_FILTERS = [
    "1=1; DROP TABLE users",
    "' OR '1'='1",
    "name = '' OR '1'='1'",
    'name = "x" OR 1=1',
    'name = "x"; DROP TABLE gadgets; --',
    'name = "x" -- comment',
    'name = "x" /* comment */',
    "stock = 1 OR stock = 2",
    "NOT disabled = true",
    "stock = 1 and stock = 2",
    "(stock = 1)",
    "stock = 1 AND",
    "AND stock = 1",
    "stock = 1 AND AND stock = 2",
    "stock = 1 stock = 2",
    'name = "unterminated',
    'name = "bad escape \\q"',
    'name = "ends in backslash\\',
    "name = unquoted",
    'name = "x" trailing',
    "name",
    "name =",
    "= 1",
    'secret = "x"',
    'id = "x"',
    "users.password_hash = 1",
    'email != "a@example.com"',
    'email > "a"',
    "disabled > false",
    "role < ROLE_STAFF",
    "role = ROLE_NOBODY",
    'role = "staff"',
    "role = staff",
    "disabled = TRUE",
    "disabled = 1",
    'stock = "1"',
    "stock = 1.5",
    "stock = 1e3",
    "stock = 0x10",
    "stock = 99999999999999999999",
    "stock = -",
    "stock == 1",
    "stock => 1",
    "stock <> 1",
    "stock : 1",
    "stock = true",
    'create_time > "2026-01-01"',
    'create_time > "2026-01-01T00:00:00"',
    'create_time > "2026-13-01T00:00:00Z"',
    'create_time > "yesterday"',
    "create_time > 1767225600",
    "name = `x`",
    "stock = 1 AND stock IN (1, 2)",
    'name = "x" AND name LIKE "%"',
    "stöck = 1",
    "stock = 1\x00",
    "stock = ?",
    "stock = $1",
    'name = "a" & stock = 1',
    'name = "a" || stock = 1',
    "has(name)",
]


@pytest.mark.parametrize("text", MALFORMED_FILTERS)
def test_malformed_or_malicious_filters_are_invalid(text: str) -> None:
    with pytest.raises(InvalidArgument) as exc:
        list_filter.parse_filter(SPEC, text)
    assert violated_fields(exc) == ["filter"]
    assert exc.value.violations[0].description


@pytest.mark.parametrize(
    ("text", "hint"),
    [
        ("nope = 1", "filterable fields are: email, name, role"),
        ("stock = 1 OR stock = 2", "join comparisons with AND"),
        ("name = 'x'", "double quotes"),
        ('email > "a"', "supports only: ="),
        ("role = ROLE_NOBODY", "one of ROLE_STAFF, ROLE_ADMIN"),
        ('name = "open', "unterminated string starting at position 8"),
        ('create_time > "2026-01-01"', "RFC 3339"),
    ],
)
def test_filter_errors_say_what_is_wrong(text: str, hint: str) -> None:
    with pytest.raises(InvalidArgument) as exc:
        list_filter.parse_filter(SPEC, text)
    assert hint in exc.value.violations[0].description


def test_filter_length_and_term_limits() -> None:
    at_limit = " AND ".join(["stock = 1"] * list_filter.MAX_FILTER_TERMS)
    assert len(list_filter.parse_filter(SPEC, at_limit)) == list_filter.MAX_FILTER_TERMS
    padded = 'name = "' + "x" * (list_filter.MAX_FILTER_LENGTH - 9) + '"'
    assert len(padded) == list_filter.MAX_FILTER_LENGTH
    assert list_filter.parse_filter(SPEC, padded)
    for text in (at_limit + " AND stock = 1", padded + " "):
        with pytest.raises(InvalidArgument) as exc:
            list_filter.parse_filter(SPEC, text)
        assert violated_fields(exc) == ["filter"]


def test_filter_values_reach_sql_only_as_parameters() -> None:
    evil = "x'; DROP TABLE gadgets; --"
    where = request(filter=f'name = "{evil}" AND stock > 5 AND role = ROLE_STAFF').where()
    sql, params = Gadget.select().where(where).sql()
    assert "DROP" not in sql
    assert params == [evil, 5, "staff"]


@given(st.text(max_size=200))
def test_any_filter_text_parses_or_is_invalid_argument(text: str) -> None:
    try:
        list_filter.parse_filter(SPEC, text)
    except InvalidArgument as exc:
        assert [v.field for v in exc.violations] == ["filter"]


# --- order_by -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", [("create_time", True), ("id", True)]),
        ("  ", [("create_time", True), ("id", True)]),
        ("email", [("email", False), ("id", False)]),
        ("email asc", [("email", False), ("id", False)]),
        ("email DESC", [("email", True), ("id", True)]),
        (
            "create_time desc, email",
            [("create_time", True), ("email", False), ("id", False)],
        ),
        (
            " stock  asc ,create_time   desc ",
            [("stock", False), ("create_time", True), ("id", True)],
        ),
    ],
)
def test_order_by_appends_id_in_the_last_direction(
    text: str, expected: list[tuple[str, bool]]
) -> None:
    order = listing.parse_order_by(SPEC, text)
    assert [(term.name, term.descending) for term in order] == expected
    assert order[-1].column is Gadget.id


@pytest.mark.parametrize(
    "text",
    [
        "name",  # filterable but not sortable
        "password_hash",
        "id; DROP TABLE gadgets",
        "email, email desc",
        "email sideways",
        "email asc desc",
        "email,",
        ",email",
        "email,,stock",
        "email desc nulls first",
        "email-desc",
        "RANDOM()",
        "x" * (listing.MAX_ORDER_BY_LENGTH + 1),
    ],
)
def test_invalid_order_by(text: str) -> None:
    with pytest.raises(InvalidArgument) as exc:
        listing.parse_order_by(SPEC, text)
    assert violated_fields(exc) == ["order_by"]


def test_spec_with_a_broken_default_order_fails_at_declaration() -> None:
    with pytest.raises(ValueError, match="default_order"):
        ListSpec("gadgets", Gadget, {}, {"email": Gadget.email}, "stock desc")


# --- page tokens --------------------------------------------------------------------------------


def test_token_round_trips_through_the_same_query() -> None:
    token = token_for(CURSOR, filter="stock > 1", scope="owner-1")
    assert request(page_token=token, filter="stock > 1", scope="owner-1").after == CURSOR


# Issued by the implementation before PageTokenSigner: tokens already in clients' hands must
# still be read, and new ones spelled the same way.
KNOWN_TOKEN = (
    "AVt7InQiOiIyMDI2LTAxLTAyVDAzOjA0OjA1LjY3ODkwMSJ9LCIwZjNjN2IxZS04YTUxLTRkMGUtOWI1NS0xZjNm"
    "MWYxZjFmMWYiXVEg2vdGhVAKsE7r7mQvxpaYNf4OsYMDQ8POWyw1FQ8i"
)


def test_token_format_and_binding_are_unchanged() -> None:
    fingerprint = request(order_by="email", scope="owner-1").fingerprint
    assert SIGNER.sign(CURSOR, fingerprint=fingerprint) == KNOWN_TOKEN
    assert SIGNER.read(KNOWN_TOKEN, fingerprint=fingerprint) == CURSOR
    assert request(page_token=KNOWN_TOKEN, order_by="email", scope="owner-1").after == CURSOR


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ('stock > 1 AND name = "a"', 'name="a"   AND stock>1'),
        ("role = ROLE_STAFF", "role=ROLE_STAFF"),
        ('create_time > "2026-01-01T01:00:00+01:00"', 'create_time > "2026-01-01T00:00:00Z"'),
    ],
)
def test_token_survives_an_equivalent_filter_spelling(first: str, second: str) -> None:
    token = token_for(CURSOR, filter=first)
    assert request(page_token=token, filter=second).after == CURSOR


def test_token_survives_a_new_page_size_and_an_equivalent_order() -> None:
    token = token_for(CURSOR, order_by="create_time desc")
    assert request(page_token=token, page_size=99, order_by="").after == CURSOR


@pytest.mark.parametrize(
    "other_query",
    [
        {"filter": "stock > 2"},
        {"filter": ""},
        {"order_by": "create_time asc"},
        {"order_by": "create_time desc, email"},
        {"scope": "owner-2"},
        {"scope": ""},
        {"signer": page_tokens.PageTokenSigner(b"another-secret")},
    ],
)
def test_token_from_another_query_is_invalid(other_query: dict[str, object]) -> None:
    original = {"filter": "stock > 1", "scope": "owner-1", "order_by": "create_time desc"}
    token = token_for(CURSOR, **original)
    with pytest.raises(InvalidArgument) as exc:
        request(page_token=token, **{**original, **other_query})
    assert violated_fields(exc) == ["page_token"]


def test_token_from_another_list_is_invalid() -> None:
    other = ListSpec("other", Gadget, {}, {"create_time": Gadget.create_time}, "create_time desc")
    token = token_for(CURSOR)
    with pytest.raises(InvalidArgument) as exc:
        listing.parse_list_request(other, listing.PageRequest(SIGNER, page_token=token))
    assert violated_fields(exc) == ["page_token"]


def flipped(token: str, index: int) -> str:
    replacement = "A" if token[index] != "A" else "B"
    return token[:index] + replacement + token[index + 1 :]


def test_every_single_character_change_is_detected() -> None:
    token = token_for(CURSOR)
    for index in range(len(token)):
        with pytest.raises(InvalidArgument) as exc:
            request(page_token=flipped(token, index))
        assert violated_fields(exc) == ["page_token"]


def test_every_truncation_and_extension_is_detected() -> None:
    token = token_for(CURSOR)
    for candidate in [token[:n] for n in range(1, len(token))] + [token + "A", token + "AAAA"]:
        with pytest.raises(InvalidArgument) as exc:
            request(page_token=candidate)
        assert violated_fields(exc) == ["page_token"]


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


@pytest.mark.parametrize(
    "token",
    [
        "garbage",
        "!!!!",
        "====",
        "a",
        "abc=",
        "AAAA",
        "not base64 at all",
        "QUJD+/==",  # standard, not URL-safe, alphabet
        b64(b"\x00" * 64),
        b64(b"\x01" + json.dumps([1, "x"]).encode()),  # no signature
        b64(b"\x01" + json.dumps([1, "x"]).encode() + b"\x00" * 32),  # wrong signature
        "A" * (page_tokens.MAX_PAGE_TOKEN_LENGTH + 4),
        "ü" * 12,
    ],
)
def test_garbage_tokens_are_invalid(token: str) -> None:
    with pytest.raises(InvalidArgument) as exc:
        request(page_token=token)
    assert violated_fields(exc) == ["page_token"]


@pytest.mark.parametrize(
    "values",
    [
        (),
        (CURSOR[0],),
        (*CURSOR, "extra"),
    ],
)
def test_signed_token_with_the_wrong_number_of_values_is_invalid(
    values: tuple[page_tokens.CursorValue, ...],
) -> None:
    with pytest.raises(InvalidArgument) as exc:
        request(page_token=token_for(values))
    assert violated_fields(exc) == ["page_token"]


def test_signed_token_with_an_unknown_payload_is_invalid() -> None:
    # Defence in depth: even a correctly signed payload of the wrong shape is refused cleanly.
    fingerprint = request().fingerprint
    body = b"\x01" + json.dumps([{"zz": 1}, "x"]).encode()
    mac = hmac.new(SECRET, page_tokens._MAC_CONTEXT + fingerprint + body, hashlib.sha256).digest()
    with pytest.raises(InvalidArgument) as exc:
        request(page_token=b64(body + mac))
    assert violated_fields(exc) == ["page_token"]


def test_empty_secret_is_refused() -> None:
    with pytest.raises(ValueError, match="secret"):
        page_tokens.PageTokenSigner(b"")


fixed_offsets = st.builds(
    lambda minutes: dt.timezone(dt.timedelta(minutes=minutes)), st.integers(-1439, 1439)
)
cursor_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.text(),
    st.datetimes(),
    st.datetimes(timezones=fixed_offsets),
    st.uuids(),
)


@given(
    values=st.lists(cursor_values, max_size=6),
    fingerprint=st.binary(min_size=32, max_size=32),
    secret=st.binary(min_size=1, max_size=64),
)
def test_cursor_encoding_round_trips_exactly(
    values: list[page_tokens.CursorValue], fingerprint: bytes, secret: bytes
) -> None:
    token = page_tokens.encode_page_token(values, secret=secret, fingerprint=fingerprint)
    assert all(c.isascii() and (c.isalnum() or c in "-_") for c in token)
    decoded = page_tokens.decode_page_token(token, secret=secret, fingerprint=fingerprint)
    assert decoded == tuple(values)
    assert [type(v) for v in decoded] == [type(v) for v in values]
    # Equal instants are not enough: the wall time and offset must come back unchanged too
    # (fold is not kept; it means nothing for naive or fixed-offset times).
    assert [v.isoformat() for v in decoded if isinstance(v, dt.datetime)] == [
        v.isoformat() for v in values if isinstance(v, dt.datetime)
    ]


@given(st.text(max_size=300))
def test_any_token_text_is_accepted_or_invalid_argument(token: str) -> None:
    try:
        request(page_token=token)
    except InvalidArgument as exc:
        assert [v.field for v in exc.violations] == ["page_token"]


def test_uuid_and_naive_datetime_keep_their_types() -> None:
    values = (uuid.UUID(int=7), dt.datetime(2026, 1, 1, 0, 0, 0, 1), True, 1, None, "")
    fingerprint = request().fingerprint
    token = page_tokens.encode_page_token(values, secret=SECRET, fingerprint=fingerprint)
    decoded = page_tokens.decode_page_token(token, secret=SECRET, fingerprint=fingerprint)
    assert decoded == values
    assert [type(v) for v in decoded] == [type(v) for v in values]
