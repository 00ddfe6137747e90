"""Unit tests for product rules: field validation, HTML sanitising, currencies, search words,
the product cache and the message converters."""

from __future__ import annotations

import re
from typing import Any

import pytest
from google.protobuf import struct_pb2
from prometheus_client import CollectorRegistry
from storefront.v1 import common_pb2, product_pb2

from server.domain import currencies, html, product_fields, product_search
from server.domain.product_cache import ProductCache
from server.domain.product_cache import invalidate as invalidate_everywhere
from server.domain.product_fields import ProductFields
from server.services.catalog_service import fields_from_proto, struct_to_dict
from server.validation import Validator

VALID: dict[str, Any] = {
    "sku": "KN-001",
    "name": "Chef Knife",
    "price_currency": "USD",
    "price_minor": 4900,
}


def violations(**overrides: Any) -> list[str]:
    """Returns the violated field paths for VALID fields with `overrides`."""
    v = Validator()
    product_fields.validate_fields(v, ProductFields(**{**VALID, **overrides}), prefix="product.")
    return [violation.field for violation in v.violations]


def stored(**overrides: Any) -> dict[str, Any]:
    """Returns the column values valid fields with `overrides` would store."""
    v = Validator()
    values = product_fields.validate_fields(
        v, ProductFields(**{**VALID, **overrides}), prefix="product."
    )
    assert v.violations == []
    return values.columns


# --- validation -------------------------------------------------------------------------------


def test_valid_fields_have_no_violations() -> None:
    assert violations() == []


@pytest.mark.parametrize(
    ("overrides", "fields"),
    [
        ({"sku": ""}, ["product.sku"]),
        ({"sku": "AB"}, ["product.sku"]),
        ({"sku": "A" * 65}, ["product.sku"]),
        ({"sku": "-AB1"}, ["product.sku"]),
        ({"sku": "AB 12"}, ["product.sku"]),
        ({"sku": "ÄBC-1"}, ["product.sku"]),
        ({"sku": "ABC/1"}, ["product.sku"]),
        ({"sku": "abc'; DROP TABLE products;--"}, ["product.sku"]),
        ({"name": ""}, ["product.name"]),
        ({"name": "   "}, ["product.name"]),
        ({"name": "n" * 201}, ["product.name"]),
        ({"name": "bad\x00name"}, ["product.name"]),
        ({"name": "line\nbreak"}, ["product.name"]),
        ({"description": "d" * 5001}, ["product.description"]),
        ({"description": "nul\x00byte"}, ["product.description"]),
        ({"description_html": "h" * 20_001}, ["product.description_html"]),
        ({"price_currency": ""}, ["product.price.currency_code"]),
        ({"price_currency": "XYZ"}, ["product.price.currency_code"]),
        ({"price_currency": "US"}, ["product.price.currency_code"]),
        ({"price_minor": -1}, ["product.price.amount_minor"]),
        ({"price_minor": 100_000_001}, ["product.price.amount_minor"]),
        ({"categories": ["ok", "Not Ok"]}, ["product.categories[1]"]),
        ({"categories": ["-lead"]}, ["product.categories[0]"]),
        ({"categories": ["x" * 41]}, ["product.categories[0]"]),
        ({"categories": [""]}, ["product.categories[0]"]),
        ({"categories": [f"c{n}" for n in range(11)]}, ["product.categories"]),
        ({"attributes": {f"k{n}": n for n in range(51)}}, ["product.attributes"]),
        ({"attributes": {"big": "x" * 16_384}}, ["product.attributes"]),
        ({"attributes": {"n": float("nan")}}, ["product.attributes"]),
        ({"attributes": {"n": float("inf")}}, ["product.attributes"]),
        ({"image_urls": ["javascript:alert(1)"]}, ["product.image_urls[0]"]),
        ({"image_urls": ["https://ok.example/a.png", "ftp://x/y"]}, ["product.image_urls[1]"]),
        ({"image_urls": ["data:image/png;base64,AAAA"]}, ["product.image_urls[0]"]),
        ({"image_urls": ["https:///no-host"]}, ["product.image_urls[0]"]),
        ({"image_urls": ["/relative.png"]}, ["product.image_urls[0]"]),
        ({"image_urls": ["https://a b.example/x"]}, ["product.image_urls[0]"]),
        ({"image_urls": ["https://user:pw@evil.example/x"]}, ["product.image_urls[0]"]),
        ({"image_urls": ["https://x.example:99999/x"]}, ["product.image_urls[0]"]),
        ({"image_urls": ["https://[::1/x"]}, ["product.image_urls[0]"]),
        ({"image_urls": ["https://x.example/" + "a" * 2048]}, ["product.image_urls[0]"]),
        ({"image_urls": [""]}, ["product.image_urls[0]"]),
        ({"image_urls": [f"https://x.example/{n}" for n in range(11)]}, ["product.image_urls"]),
        ({"weight_grams": -1}, ["product.weight_grams"]),
        ({"weight_grams": 1_000_001}, ["product.weight_grams"]),
        (
            {"sku": "", "name": "", "price_currency": "", "weight_grams": -5},
            [
                "product.sku",
                "product.name",
                "product.price.currency_code",
                "product.weight_grams",
            ],
        ),
    ],
)
def test_each_bad_field_is_reported_with_its_path(
    overrides: dict[str, Any], fields: list[str]
) -> None:
    assert violations(**overrides) == fields


@pytest.mark.parametrize(
    "overrides",
    [
        {"sku": "abc"},
        {"sku": "A" * 64},
        {"sku": "9.a_b-C"},
        {"name": "n" * 200},
        {"name": "Crème brûlée 🍮"},
        {"description": "d" * 5000},
        {"description": "tabs\tand\nnewlines\r\n"},
        {"description_html": "h" * 20_000},
        {"price_minor": 0},
        {"price_minor": 100_000_000},
        {"price_currency": "jpy"},
        {"categories": [f"c{n}" for n in range(10)]},
        {"categories": ["a", "a", "A"] + [f"c{n}" for n in range(9)]},
        {"categories": ["x" * 40, "0-9"]},
        {"attributes": {f"k{n}": n for n in range(50)}},
        {"attributes": {"nested": {"list": [1, "two", None, True, {"deep": 1.5}]}}},
        {"image_urls": [f"https://x.example/{n}" for n in range(10)]},
        {"image_urls": ["HTTP://X.EXAMPLE/A.PNG", "https://[::1]:8443/x"]},
        {"weight_grams": 1_000_000},
    ],
)
def test_values_at_the_limits_are_accepted(overrides: dict[str, Any]) -> None:
    assert violations(**overrides) == []


def test_fields_are_normalised_for_storage() -> None:
    columns = stored(
        sku=" kn-001 ",
        name="  Cre\u0300me  ",
        price_currency=" eur ",
        categories=[" Kitchen ", "kitchen", "Sale"],
        attributes={"b": 1, "a": "é"},
        image_urls=["https://x.example/a.png"],
    )
    assert columns["sku"] == "KN-001"
    assert columns["name"] == "Crème"  # NFC, trimmed
    assert columns["price_currency"] == "EUR"
    assert columns["categories_text"] == "kitchen sale"
    assert columns["attributes"] == '{"a":"é","b":1}'
    assert columns["image_urls"] == '["https://x.example/a.png"]'


def test_violations_use_the_prefix_given() -> None:
    v = Validator()
    product_fields.validate_fields(
        v, ProductFields(**{**VALID, "price_currency": "ABC"}), prefix=""
    )
    assert [(x.field, x.description) for x in v.violations] == [
        ("price.currency_code", "unknown currency; use an ISO 4217 code such as USD")
    ]


def test_only_the_named_fields_are_validated() -> None:
    v = Validator()
    values = product_fields.validate_fields(
        v, ProductFields(name="New name"), prefix="product.", names=["name"]
    )
    assert v.violations == [] and values.columns == {"name": "New name"}


# --- HTML sanitising --------------------------------------------------------------------------

XSS_PAYLOADS = [
    "<script>alert(1)</script>",
    "<SCRIPT SRC=https://evil.example/x.js></SCRIPT>",
    "<ScRiPt>alert(1)</sCrIpT>",
    "<scr<script>ipt>alert(1)</script>",
    "<<script>script>alert(1)<</script>/script>",
    "<img src=x onerror=alert(1)>",
    "<p onclick=alert(1)>click</p>",
    "<p ONMOUSEOVER='alert(1)'>hover</p>",
    "<strong onfocus=alert(1) tabindex=0 autofocus>x</strong>",
    "<body onload=alert(1)>",
    '<a href="javascript:alert(1)">x</a>',
    '<a href="JaVaScRiPt:alert(1)">x</a>',
    '<a href=" javascript:alert(1)">x</a>',
    '<a href="java\tscript:alert(1)">x</a>',
    '<a href="java&#x09;script:alert(1)">x</a>',
    '<a href="java&#10;script:alert(1)">x</a>',
    '<a href="&#106;&#97;&#118;&#97;&#115;&#99;&#114;&#105;&#112;&#116;&#58;alert(1)">x</a>',
    '<a href="&#x6A;avascript:alert(1)">x</a>',
    '<a href="javascript&colon;alert(1)">x</a>',
    '<a href="data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==">x</a>',
    '<a href="DATA:text/html,<script>alert(1)</script>">x</a>',
    '<a href="vbscript:msgbox(1)">x</a>',
    '<a href="VBScript:msgbox(1)">x</a>',
    '<a href="livescript:alert(1)">x</a>',
    "<svg onload=alert(1)>",
    "<svg><script>alert(1)</script></svg>",
    '<svg><a xlink:href="javascript:alert(1)"><text>x</text></a></svg>',
    "<math><mtext><script>alert(1)</script></mtext></math>",
    '<iframe src="javascript:alert(1)"></iframe>',
    '<iframe srcdoc="<script>alert(1)</script>"></iframe>',
    '<object data="javascript:alert(1)"></object>',
    '<embed src="javascript:alert(1)">',
    '<div style="background:url(javascript:alert(1))">x</div>',
    '<p style="width: expression(alert(1))">x</p>',
    "<style>body{background:url(javascript:alert(1))}</style>",
    '<link rel="stylesheet" href="javascript:alert(1)">',
    '<meta http-equiv="refresh" content="0;url=javascript:alert(1)">',
    '<form action="javascript:alert(1)"><input type="submit"></form>',
    '<button formaction="javascript:alert(1)">x</button>',
    '<base href="javascript:alert(1)//">',
    "<input onfocus=alert(1) autofocus>",
    "<details open ontoggle=alert(1)>",
    '<video><source onerror="alert(1)"></video>',
    "<!--<script>alert(1)</script>-->",
    '<a href="https://ok.example" onclick="alert(1)">x</a>',
    "<template><script>alert(1)</script></template>",
    '<noscript><p title="</noscript><img src=x onerror=alert(1)>"></noscript>',
    '<a href="https://ok.example" target="_blank" rel="opener">x</a>',
]
# What must never appear in sanitised output (case-insensitive).
FORBIDDEN = re.compile(
    r"<\s*(script|style|iframe|object|embed|svg|math|img|meta|link|form|input|button|base|"
    r"body|video|source|template|details|noscript)\b|\bon[a-z]+\s*=|javascript:|vbscript:|"
    r"livescript:|data:|expression\(|\bstyle\s*=|srcdoc|formaction|xlink|target\s*=|<!--",
    re.IGNORECASE,
)


def test_the_corpus_is_large_enough() -> None:
    assert len(XSS_PAYLOADS) >= 30


@pytest.mark.parametrize("payload", XSS_PAYLOADS)
def test_no_xss_payload_survives_sanitising(payload: str) -> None:
    cleaned = html.sanitize(payload)
    assert FORBIDDEN.search(cleaned) is None, cleaned
    # Every href left is on the allow-list of schemes.
    for href in re.findall(r'href="([^"]*)"', cleaned):
        assert href.startswith(("http://", "https://", "mailto:")), cleaned


@pytest.mark.parametrize("payload", XSS_PAYLOADS)
def test_sanitising_is_idempotent(payload: str) -> None:
    once = html.sanitize(payload)
    assert html.sanitize(once) == once


@pytest.mark.parametrize(
    ("markup", "expected"),
    [
        ("<p>Sharp <strong>and</strong> <em>light</em></p>", None),
        ("<h2>Care</h2><ul><li>Hand wash</li><li>Dry</li></ul><ol><li>1</li></ol>", None),
        ("<h3>a</h3><h4>b</h4><blockquote>q</blockquote><pre><code>x &lt; y</code></pre>", None),
        ("<p>line<br>break <b>b</b> <i>i</i> <u>u</u></p>", None),
        (
            '<a href="https://shop.example/care" title="Care">care</a>',
            '<a href="https://shop.example/care" title="Care" '
            'rel="noopener noreferrer nofollow">care</a>',
        ),
        (
            '<a href="mailto:help@shop.example">mail</a>',
            '<a href="mailto:help@shop.example" rel="noopener noreferrer nofollow">mail</a>',
        ),
        ("<h1>Title</h1><div>text</div><span>s</span>", "Titletexts"),
        ('<a href="/relative">rel</a>', '<a rel="noopener noreferrer nofollow">rel</a>'),
        ("5 < 6 & 7 > 3", "5 &lt; 6 &amp; 7 &gt; 3"),
    ],
)
def test_benign_markup_survives(markup: str, expected: str | None) -> None:
    assert html.sanitize(markup) == (markup if expected is None else expected)


# --- currencies -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "digits"),
    [
        ("USD", 2),
        ("EUR", 2),
        ("GBP", 2),
        ("JPY", 0),
        ("KRW", 0),
        ("ISK", 0),
        ("CLP", 0),
        ("VND", 0),
        ("KWD", 3),
        ("BHD", 3),
        ("JOD", 3),
        ("OMR", 3),
        ("TND", 3),
        ("CHF", 2),
        ("INR", 2),
    ],
)
def test_currency_exponents(code: str, digits: int) -> None:
    assert currencies.is_known(code) and currencies.exponent(code) == digits


@pytest.mark.parametrize("code", ["", "usd", "XYZ", "XXX", "XAU", "EURO"])
def test_unknown_currencies(code: str) -> None:
    assert not currencies.is_known(code)
    with pytest.raises(KeyError):
        currencies.exponent(code)


def test_every_listed_code_is_three_upper_case_letters() -> None:
    assert len(currencies.EXPONENTS) > 140
    assert all(re.fullmatch(r"[A-Z]{3}", c) for c in currencies.EXPONENTS)
    assert set(currencies.EXPONENTS.values()) <= {0, 2, 3, 4}


# --- search words -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "words"),
    [
        ("Chef's KNIFE", ["chef", "s", "knife"]),
        ("  kn-001  ", ["kn", "001"]),
        ("knife knife Knife", ["knife"]),
        ("a_b c.d", ["a", "b", "c", "d"]),
        ("Cre\u0300me brûlée", ["crème", "brûlée"]),
        ("' OR 1=1; --", ["or", "1"]),
        ("!!! ---", []),
    ],
)
def test_search_words(query: str, words: list[str]) -> None:
    assert product_search.search_words(query) == words


def test_fold_lowers_and_turns_separators_into_spaces() -> None:
    assert (
        product_search.fold("Knife-Edge (Pro)/Chef's 1.5 a@b") == "knife edge  pro /chef s 1.5 a@b"
    )


# --- product cache ----------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def counts(registry: CollectorRegistry) -> tuple[float, float]:
    def value(result: str) -> float:
        sample = registry.get_sample_value(
            "storefront_product_cache_requests_total", {"result": result}
        )
        return sample or 0.0

    return value("hit"), value("miss")


def test_cache_hits_until_the_ttl_then_misses() -> None:
    registry, clock = CollectorRegistry(), Clock()
    cache = ProductCache(registry, ttl_seconds=5, clock=clock)
    loads: list[str] = []

    def load(key: str) -> str:
        loads.append(key)
        return f"value-{len(loads)}"

    assert cache.get_or_load("a", load) == "value-1"
    clock.now += 4.9
    assert cache.get_or_load("a", load) == "value-1"
    clock.now += 0.2
    assert cache.get_or_load("a", load) == "value-2"
    assert counts(registry) == (1.0, 2.0)


def test_cache_does_not_store_missing_products() -> None:
    cache = ProductCache(CollectorRegistry())
    assert cache.get_or_load("a", lambda key: None) is None
    assert len(cache) == 0


def test_cache_evicts_the_least_recently_used() -> None:
    cache = ProductCache(CollectorRegistry(), max_size=2)
    for key in "ab":
        cache.put(key, key.upper(), generation=cache.generation())
    assert cache.get("a") == "A"  # a is now the most recent
    cache.put("c", "C", generation=cache.generation())
    assert cache.get("b") is None and cache.get("a") == "A" and cache.get("c") == "C"


def test_invalidation_reaches_every_cache_in_the_process() -> None:
    first, second = ProductCache(CollectorRegistry()), ProductCache(CollectorRegistry())
    for cache in (first, second):
        cache.put("p1", "old", generation=cache.generation())
        cache.put("p2", "kept", generation=cache.generation())
    invalidate_everywhere(["p1"])
    assert first.get("p1") is None and second.get("p1") is None
    assert first.get("p2") == "kept"


def test_a_load_that_raced_an_invalidation_is_not_stored() -> None:
    cache = ProductCache(CollectorRegistry())

    def load_while_a_write_commits(key: str) -> str:
        cache.invalidate([key])  # a write commits after the value was read
        return "stale"

    assert cache.get_or_load("p", load_while_a_write_commits) == "stale"
    assert cache.get("p") is None


def test_a_zero_ttl_disables_the_cache() -> None:
    cache = ProductCache(CollectorRegistry(), ttl_seconds=0)
    cache.put("p", "v", generation=cache.generation())
    assert cache.get("p") is None


# --- converters -------------------------------------------------------------------------------


def test_struct_numbers_become_integers_when_whole() -> None:
    struct = struct_pb2.Struct()
    struct.update({"n": 3, "f": 1.5, "l": [1, "x", None, True], "o": {"big": 2.0**60}})
    assert struct_to_dict(struct) == {
        "n": 3,
        "f": 1.5,
        "l": [1, "x", None, True],
        "o": {"big": 2.0**60},
    }


def test_output_only_fields_of_a_message_are_dropped() -> None:
    message = product_pb2.Product(
        id="ignored",
        sku="kn-001",
        name="Knife",
        price=common_pb2.Money(currency_code="USD", amount_minor=5),
        categories=["kitchen"],
        state=product_pb2.PRODUCT_STATE_ARCHIVED,
        etag="ignored",
    )
    converted = fields_from_proto(message)
    assert converted == ProductFields(
        sku="kn-001",
        name="Knife",
        price_currency="USD",
        price_minor=5,
        categories=["kitchen"],
        image_urls=[],
    )
