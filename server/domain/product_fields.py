"""Product fields: what a client may set, how each is validated, and reading stored values."""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from server.domain import currencies, html
from server.models.product import Product
from server.validation import Validator

SKU_MIN_LENGTH = 3
SKU_MAX_LENGTH = 64
NAME_MAX_LENGTH = 200
DESCRIPTION_MAX_LENGTH = 5_000
DESCRIPTION_HTML_MAX_LENGTH = 20_000
PRICE_MAX_MINOR = 100_000_000
CATEGORIES_MAX = 10
ATTRIBUTES_MAX_KEYS = 50
ATTRIBUTES_MAX_BYTES = 16 * 1024
IMAGE_URLS_MAX = 10
IMAGE_URL_MAX_LENGTH = 2_048
WEIGHT_MAX_GRAMS = 1_000_000

_SKU = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{2,63}")
CATEGORY = re.compile(r"[a-z0-9][a-z0-9-]{0,39}")
# Control characters other than tab, newline and carriage return (PostgreSQL refuses NUL).
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")

# Field groups a write can set; "price" in an update mask names both of its parts.
ALL_FIELDS = (
    "sku",
    "name",
    "description",
    "description_html",
    "price.currency_code",
    "price.amount_minor",
    "categories",
    "attributes",
    "image_urls",
    "weight_grams",
)
UPDATE_MASK_PATHS: Mapping[str, tuple[str, ...]] = {
    **{name: (name,) for name in ALL_FIELDS},
    "price": ("price.currency_code", "price.amount_minor"),
}
OUTPUT_ONLY_PATHS = frozenset({"id", "state", "etag", "create_time", "update_time"})


@dataclass(frozen=True)
class ProductFields:
    """A product's client-settable fields as sent; validated by the write functions."""

    sku: str = ""
    name: str = ""
    description: str = ""
    description_html: str = ""
    price_currency: str = ""
    price_minor: int = 0
    categories: Sequence[str] = ()
    # A JSON object: str keys; values None, bool, int, float, str, lists and objects of them.
    attributes: Mapping[str, Any] = field(default_factory=dict)
    image_urls: Sequence[str] = ()
    weight_grams: int = 0


# --- reading stored values -----------------------------------------------------------------------


def etag(product: Product) -> str:
    """Returns the product's opaque version tag."""
    return f'W/"{product.version}"'


def categories_of(product: Product) -> list[str]:
    """Returns the product's category slugs in the order they were given."""
    return product.categories_text.split()


def attributes_of(product: Product) -> dict[str, Any]:
    """Returns the product's attributes as a JSON object."""
    value = json.loads(product.attributes or "{}")
    return value if isinstance(value, dict) else {}


def image_urls_of(product: Product) -> list[str]:
    """Returns the product's image URLs."""
    value = json.loads(product.image_urls or "[]")
    return [str(url) for url in value] if isinstance(value, list) else []


# --- validation ----------------------------------------------------------------------------------


def has_ascii_controls(text: str) -> bool:
    """Whether `text` holds an ASCII control character other than tab, newline and carriage
    return, which descriptions may hold."""
    return _CONTROL.search(text) is not None


def _validate_sku(v: Validator, path: str, raw: str) -> str:
    sku = raw.strip()
    if not sku:
        v.add(path, "is required")
    elif not _SKU.fullmatch(sku):
        v.add(
            path,
            f"must be {SKU_MIN_LENGTH} to {SKU_MAX_LENGTH} characters of A-Z, 0-9, '-', '_' or "
            "'.', starting with a letter or digit",
        )
    return sku.upper()


def _validate_name(v: Validator, path: str, raw: str) -> str:
    name = unicodedata.normalize("NFC", raw).strip()
    if not name:
        v.add(path, "is required")
    elif len(name) > NAME_MAX_LENGTH:
        v.add(path, f"must be at most {NAME_MAX_LENGTH} characters")
    elif any(unicodedata.category(ch) == "Cc" for ch in name):
        v.add(path, "must not contain control characters")
    return name


def _validate_description(v: Validator, path: str, raw: str) -> str:
    text = unicodedata.normalize("NFC", raw)
    if len(text) > DESCRIPTION_MAX_LENGTH:
        v.add(path, f"must be at most {DESCRIPTION_MAX_LENGTH} characters")
    elif has_ascii_controls(text):
        v.add(path, "must not contain control characters other than tab and newline")
    return text


def _validate_description_html(v: Validator, path: str, raw: str) -> str:
    if len(raw) > DESCRIPTION_HTML_MAX_LENGTH:
        v.add(path, f"must be at most {DESCRIPTION_HTML_MAX_LENGTH} characters")
        return ""
    return html.sanitize(raw)


def _validate_currency(v: Validator, path: str, raw: str) -> str:
    code = raw.strip().upper()
    if not code:
        v.add(path, "is required")
    elif not currencies.is_known(code):
        v.add(path, "unknown currency; use an ISO 4217 code such as USD")
    return code


def _validate_amount(v: Validator, path: str, amount: int) -> int:
    if not 0 <= amount <= PRICE_MAX_MINOR:
        v.add(path, f"must be 0 to {PRICE_MAX_MINOR:,} minor units")
    return amount


def _validate_categories(v: Validator, path: str, raw: Sequence[str]) -> list[str]:
    if len(raw) > CATEGORIES_MAX * 10:
        v.add(path, f"must have at most {CATEGORIES_MAX} categories")
        return []
    slugs: list[str] = []
    for index, item in enumerate(raw):
        slug = item.strip().lower()
        if not CATEGORY.fullmatch(slug):
            v.add(f"{path}[{index}]", "must be 1 to 40 characters of a-z, 0-9 and '-'")
        elif slug not in slugs:
            slugs.append(slug)
    if len(slugs) > CATEGORIES_MAX:
        v.add(path, f"must have at most {CATEGORIES_MAX} categories")
    return slugs


def _validate_attributes(v: Validator, path: str, raw: Mapping[str, Any]) -> str:
    if not isinstance(raw, Mapping) or not all(isinstance(key, str) for key in raw):
        v.add(path, "must be a JSON object")
        return "{}"
    if len(raw) > ATTRIBUTES_MAX_KEYS:
        v.add(path, f"must have at most {ATTRIBUTES_MAX_KEYS} keys")
        return "{}"
    try:
        text = json.dumps(
            dict(raw), ensure_ascii=False, separators=(",", ":"), allow_nan=False, sort_keys=True
        )
    except (TypeError, ValueError):
        v.add(path, "must hold only JSON values (finite numbers, strings, booleans, null)")
        return "{}"
    if len(text.encode("utf-8")) > ATTRIBUTES_MAX_BYTES:
        v.add(path, f"must be at most {ATTRIBUTES_MAX_BYTES // 1024} KiB as JSON")
    return text


def _image_url_problem(url: str) -> str | None:
    if not url:
        return "must not be empty"
    if len(url) > IMAGE_URL_MAX_LENGTH:
        return f"must be at most {IMAGE_URL_MAX_LENGTH} characters"
    if any(ch.isspace() or unicodedata.category(ch) == "Cc" for ch in url):
        return "must not contain spaces or control characters"
    try:
        parts = urlsplit(url)
        host = parts.hostname
        _ = parts.port  # raises ValueError for a malformed port
    except ValueError:
        return "must be a valid URL"
    if parts.scheme.lower() not in ("http", "https"):
        return "must be an http or https URL"
    if not host:
        return "must name a host"
    if parts.username is not None or parts.password is not None:
        return "must not contain credentials"
    return None


def _validate_image_urls(v: Validator, path: str, raw: Sequence[str]) -> str:
    if len(raw) > IMAGE_URLS_MAX:
        v.add(path, f"must have at most {IMAGE_URLS_MAX} URLs")
        return "[]"
    for index, url in enumerate(raw):
        problem = _image_url_problem(url)
        if problem is not None:
            v.add(f"{path}[{index}]", problem)
    return json.dumps(list(raw), ensure_ascii=False, separators=(",", ":"))


def _validate_weight(v: Validator, path: str, grams: int) -> int:
    if not 0 <= grams <= WEIGHT_MAX_GRAMS:
        v.add(path, f"must be 0 to {WEIGHT_MAX_GRAMS:,} grams")
    return grams


@dataclass
class Values:
    """Validated column values for a write, plus the category list when it is set."""

    columns: dict[str, Any]
    categories: list[str] | None


def validate_fields(
    v: Validator, fields: ProductFields, *, prefix: str, names: Collection[str] = ALL_FIELDS
) -> Values:
    """Checks the named fields (see ALL_FIELDS), recording violations under `prefix` in `v`."""
    columns: dict[str, Any] = {}
    categories: list[str] | None = None
    if "sku" in names:
        columns["sku"] = _validate_sku(v, prefix + "sku", fields.sku)
    if "name" in names:
        columns["name"] = _validate_name(v, prefix + "name", fields.name)
    if "description" in names:
        columns["description"] = _validate_description(
            v, prefix + "description", fields.description
        )
    if "description_html" in names:
        columns["description_html"] = _validate_description_html(
            v, prefix + "description_html", fields.description_html
        )
    if "price.currency_code" in names:
        columns["price_currency"] = _validate_currency(
            v, prefix + "price.currency_code", fields.price_currency
        )
    if "price.amount_minor" in names:
        columns["price_minor"] = _validate_amount(
            v, prefix + "price.amount_minor", fields.price_minor
        )
    if "categories" in names:
        categories = _validate_categories(v, prefix + "categories", fields.categories)
        columns["categories_text"] = " ".join(categories)
    if "attributes" in names:
        columns["attributes"] = _validate_attributes(v, prefix + "attributes", fields.attributes)
    if "image_urls" in names:
        columns["image_urls"] = _validate_image_urls(v, prefix + "image_urls", fields.image_urls)
    if "weight_grams" in names:
        columns["weight_grams"] = _validate_weight(v, prefix + "weight_grams", fields.weight_grams)
    return Values(columns, categories)
