"""Products: validation, create, read, update, archive and restore, lists, search, import."""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import re
import unicodedata
import uuid
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast
from urllib.parse import urlsplit

import peewee
from peewee import SQL, Case, fn

from server.db import database, is_sqlite, utcnow
from server.domain import currencies, html, listing, product_cache
from server.domain.principal import Principal
from server.domain.product_cache import ProductCache
from server.errors import (
    Aborted,
    AlreadyExists,
    DomainError,
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
    Validator,
)
from server.models.product import Product, ProductCategory
from server.models.stock import StockLevel

log = logging.getLogger("storefront.catalog")

ACTIVE = "ACTIVE"
ARCHIVED = "ARCHIVED"

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
BATCH_GET_MAX = 100
IMPORT_MAX_ROWS = 10_000
IMPORT_MAX_ERRORS = 1_000
SEARCH_QUERY_MAX_LENGTH = 200
SEARCH_MAX_WORDS = 10

_SKU = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{2,63}")
_CATEGORY = re.compile(r"[a-z0-9][a-z0-9-]{0,39}")
_SEARCH_WORD = re.compile(r"[^\W_]+")
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


@dataclass(frozen=True)
class BatchResult:
    """The products found, in the order asked, and the ids that match none."""

    products: list[Product]
    missing_ids: list[str]


@dataclass(frozen=True)
class CategoryCount:
    """A category slug and its number of ACTIVE products."""

    slug: str
    product_count: int


@dataclass(frozen=True)
class ImportRowError:
    """Why one imported row failed: its 1-based number, its sku as sent, the reason."""

    row: int
    sku: str
    message: str


@dataclass(frozen=True)
class ImportResult:
    """The outcome of an import: exact counts and the first IMPORT_MAX_ERRORS row errors."""

    created_count: int
    updated_count: int
    failed_count: int
    errors: list[ImportRowError]


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


def _has_control_characters(text: str) -> bool:
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
    elif _has_control_characters(text):
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
        if not _CATEGORY.fullmatch(slug):
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
class _Values:
    """Validated column values for a write, plus the category list when it is set."""

    columns: dict[str, Any]
    categories: list[str] | None


def validate_fields(
    v: Validator, fields: ProductFields, *, prefix: str, names: Collection[str] = ALL_FIELDS
) -> _Values:
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
    return _Values(columns, categories)


def _require_product_id(path: str, product_id: str) -> None:
    v = Validator()
    v.check_id(path, product_id, "product")
    v.raise_if_any()


# --- errors --------------------------------------------------------------------------------------


def _not_found() -> NotFound:
    return NotFound("The product does not exist.", reason="PRODUCT_NOT_FOUND")


def _stale() -> Aborted:
    return Aborted(
        "The product was changed since it was read; read it again.", reason="ETAG_MISMATCH"
    )


def _sku_taken(sku: str) -> AlreadyExists:
    return AlreadyExists(
        "Another product already has this sku.", reason="SKU_TAKEN", metadata={"sku": sku}
    )


def _describe(violations: Iterable[FieldViolation]) -> str:
    return "; ".join(f"{v.field}: {v.description}" for v in violations)


# --- reads ---------------------------------------------------------------------------------------


def get(product_id: str) -> Product | None:
    """Returns the product with the given id, or None."""
    return Product.get_or_none(Product.id == product_id)


def get_or_raise(product_id: str, *, cache: ProductCache | None = None) -> Product:
    """Returns the product with the given id (through `cache` if given); raises NotFound."""
    _require_product_id("product_id", product_id)
    product = cache.get_or_load(product_id, get) if cache is not None else get(product_id)
    if product is None:
        raise _not_found()
    return product


def batch_get(product_ids: Sequence[str], *, cache: ProductCache | None = None) -> BatchResult:
    """Returns up to 100 products in the order asked, and the ids that match no product."""
    v = Validator()
    if not product_ids:
        v.add("product_ids", f"must list 1 to {BATCH_GET_MAX} product ids")
    elif len(product_ids) > BATCH_GET_MAX:
        v.add("product_ids", f"must list at most {BATCH_GET_MAX} product ids")
    else:
        for index, product_id in enumerate(product_ids):
            v.check_id(f"product_ids[{index}]", product_id, "product")
    v.raise_if_any()

    found: dict[str, Product] = {}
    to_load: list[str] = []
    for product_id in dict.fromkeys(product_ids):
        cached = cache.get(product_id) if cache is not None else None
        if cached is not None:
            found[product_id] = cached
        else:
            to_load.append(product_id)
    if to_load:
        generation = cache.generation() if cache is not None else 0
        for product in Product.select().where(Product.id.in_(to_load)):
            found[product.id] = product
            if cache is not None:
                cache.put(product.id, product, generation=generation)
    return BatchResult(
        products=[found[pid] for pid in product_ids if pid in found],
        missing_ids=[pid for pid in product_ids if pid not in found],
    )


def _get_for_update(product_id: str) -> Product | None:
    """Returns the product, row-locked on PostgreSQL; call inside a transaction."""
    query = Product.select().where(Product.id == product_id)
    if not is_sqlite():  # SQLite's IMMEDIATE transactions already hold the write lock
        query = query.for_update()
    return query.get_or_none()


def _get_by_sku_for_update(sku: str) -> Product | None:
    query = Product.select().where(Product.sku == sku)
    if not is_sqlite():
        query = query.for_update()
    return query.get_or_none()


def _sku_owner(sku: str) -> str | None:
    row = Product.select(Product.id).where(Product.sku == sku).tuples().first()
    return None if row is None else str(row[0])


# --- writes --------------------------------------------------------------------------------------


def _insert(values: _Values, now: Any) -> Product:
    """Inserts a product with its categories and a zero stock level; call inside a transaction."""
    product = Product.create(
        id=str(uuid.uuid4()),
        state=ACTIVE,
        version=1,
        create_time=now,
        update_time=now,
        **values.columns,
    )
    _write_categories(product.id, values.categories or [], replace=False)
    StockLevel.create(product=product.id, on_hand=0, reserved=0, update_time=now)
    return product


def _write_categories(product_id: str, slugs: Sequence[str], *, replace: bool) -> None:
    if replace:
        ProductCategory.delete().where(ProductCategory.product == product_id).execute()
    if slugs:
        ProductCategory.insert_many(
            [{"product": product_id, "slug": slug} for slug in slugs]
        ).execute()


def _changed_columns(product: Product, values: _Values) -> dict[str, Any]:
    changed = {
        name: value for name, value in values.columns.items() if getattr(product, name) != value
    }
    if values.categories is not None and values.categories != categories_of(product):
        changed["categories_text"] = " ".join(values.categories)
    return changed


def _apply_changes(product: Product, changes: dict[str, Any], values: _Values, now: Any) -> None:
    """Writes `changes` guarded by the product's version; call inside a transaction."""
    updated = (
        Product.update(**changes, version=Product.version + 1, update_time=now)
        .where((Product.id == product.id) & (Product.version == product.version))
        .execute()
    )
    if updated != 1:
        raise _stale()
    if "categories_text" in changes:
        _write_categories(product.id, values.categories or [], replace=True)


def _check_etag(product: Product, expected_etag: str) -> None:
    if expected_etag and etag(product) != expected_etag:
        raise _stale()


def create(fields: ProductFields, *, actor: Principal) -> Product:
    """Creates an ACTIVE product with stock 0; raises AlreadyExists (SKU_TAKEN)."""
    v = Validator()
    values = validate_fields(v, fields, prefix="product.")
    v.raise_if_any()
    sku = values.columns["sku"]
    try:
        with database.atomic():
            if _sku_owner(sku) is not None:
                raise _sku_taken(sku)
            product = _insert(values, utcnow())
    except peewee.IntegrityError:
        if _sku_owner(sku) is not None:  # a concurrent create won the race
            raise _sku_taken(sku) from None
        raise
    product_cache.invalidate([product.id])
    log.info("product created", extra={"product_id": product.id, "actor": actor.subject})
    return product


def update(
    *,
    product_id: str,
    fields: ProductFields,
    paths: Sequence[str],
    expected_etag: str,
    actor: Principal,
) -> Product:
    """Updates the fields named in `paths`; raises NotFound, Aborted, FailedPrecondition..."""
    v = Validator()
    v.check_id("product.id", product_id, "product")
    names: set[str] = set()
    if not paths:
        v.add("update_mask", "must name at least one field")
    for path in paths:
        if path in UPDATE_MASK_PATHS:
            names.update(UPDATE_MASK_PATHS[path])
        elif path not in OUTPUT_ONLY_PATHS:
            v.add(
                "update_mask",
                f"{path[:64]!r} cannot be updated; updatable: " + ", ".join(UPDATE_MASK_PATHS),
            )
    values = validate_fields(v, fields, prefix="product.", names=names)
    v.raise_if_any()

    sku = values.columns.get("sku")
    try:
        with database.atomic():
            product = _get_for_update(product_id)
            if product is None:
                raise _not_found()
            _check_etag(product, expected_etag)
            if product.state == ARCHIVED:
                raise FailedPrecondition(
                    "Archived products cannot be changed; restore it first.",
                    reason="PRODUCT_ARCHIVED",
                )
            changes = _changed_columns(product, values)
            if not changes:
                return product
            if "sku" in changes and _sku_owner(changes["sku"]) not in (None, product_id):
                raise _sku_taken(changes["sku"])
            _apply_changes(product, changes, values, utcnow())
    except peewee.IntegrityError:
        if sku is not None and _sku_owner(sku) not in (None, product_id):
            raise _sku_taken(sku) from None
        raise
    finally:
        product_cache.invalidate([product_id])
    log.info(
        "product updated",
        extra={"product_id": product_id, "actor": actor.subject, "fields": sorted(changes)},
    )
    return get_or_raise(product_id)


def _set_state(product_id: str, expected_etag: str, state: str, actor: Principal) -> Product:
    _require_product_id("product_id", product_id)
    try:
        with database.atomic():
            product = _get_for_update(product_id)
            if product is None:
                raise _not_found()
            _check_etag(product, expected_etag)
            if product.state == state:
                return product  # already there: succeed without a new version
            _apply_changes(product, {"state": state}, _Values({}, None), utcnow())
    finally:
        product_cache.invalidate([product_id])
    log.info(
        "product state changed",
        extra={"product_id": product_id, "actor": actor.subject, "state": state},
    )
    return get_or_raise(product_id)


def archive(*, product_id: str, expected_etag: str, actor: Principal) -> Product:
    """Archives a product (a no-op if it is archived); raises NotFound or Aborted."""
    return _set_state(product_id, expected_etag, ARCHIVED, actor)


def restore(*, product_id: str, expected_etag: str, actor: Principal) -> Product:
    """Makes an archived product ACTIVE again (a no-op if it is); raises NotFound or Aborted."""
    return _set_state(product_id, expected_etag, ACTIVE, actor)


def upsert_by_sku(fields: ProductFields) -> Product:
    """Creates the product with this sku, or replaces all its fields; returns it.

    An archived product stays archived: an import refreshes data, it does not restore.
    """
    product, _ = _upsert(fields)
    return product


def _upsert(fields: ProductFields) -> tuple[Product, bool]:
    """Does upsert_by_sku in its own transaction; returns the product and whether it is new."""
    v = Validator()
    values = validate_fields(v, fields, prefix="")
    v.raise_if_any()
    sku = values.columns["sku"]
    for attempt in range(2):
        try:
            with database.atomic():
                existing = _get_by_sku_for_update(sku)
                if existing is None:
                    product = _insert(values, utcnow())
                    created = True
                else:
                    product, created = existing, False
                    changes = _changed_columns(existing, values)
                    if changes:
                        _apply_changes(existing, changes, values, utcnow())
                        product = Product.get_by_id(existing.id)
        except peewee.IntegrityError:
            # Another import created the sku between our read and insert: update it instead.
            if attempt == 0 and _sku_owner(sku) is not None:
                continue
            raise
        else:
            product_cache.invalidate([product.id])
            return product, created
    raise AssertionError("unreachable")


def import_rows(rows: Iterable[ProductFields], *, actor: Principal) -> ImportResult:
    """Upserts each row by sku in its own transaction; raises only for over 10,000 rows."""
    # Read to the limit first, so an over-long stream changes nothing.
    batch = list(itertools.islice(rows, IMPORT_MAX_ROWS + 1))
    if len(batch) > IMPORT_MAX_ROWS:
        raise InvalidArgument(
            f"An import may have at most {IMPORT_MAX_ROWS:,} rows; nothing was imported.",
            reason="IMPORT_TOO_LARGE",
            violations=[FieldViolation("product", f"at most {IMPORT_MAX_ROWS:,} rows per call")],
        )
    created = updated = 0
    errors: list[ImportRowError] = []
    failed = 0
    for number, fields in enumerate(batch, start=1):
        try:
            _, was_created = _upsert(fields)
        except InvalidArgument as exc:
            failed += 1
            message = _describe(exc.violations) or exc.message
        except DomainError as exc:
            failed += 1
            message = exc.message
        else:
            created += was_created
            updated += not was_created
            continue
        if len(errors) < IMPORT_MAX_ERRORS:
            errors.append(ImportRowError(number, fields.sku, message))
    log.info(
        "products imported",
        extra={
            "actor": actor.subject,
            "created_count": created,
            "updated_count": updated,
            "failed_count": failed,
        },
    )
    return ImportResult(created, updated, failed, errors)


# --- lists ---------------------------------------------------------------------------------------

PRODUCT_LIST = listing.ListSpec(
    name="products",
    model=Product,
    filter_fields={
        # category and price_currency are checked and turned into SQL by _list_filter.
        "category": listing.FilterField(
            ProductCategory.slug, listing.FieldKind.STRING, operators=("=", "!=")
        ),
        "price_currency": listing.FilterField(
            Product.price_currency, listing.FieldKind.STRING, operators=("=", "!=")
        ),
        "price_minor": listing.FilterField(Product.price_minor, listing.FieldKind.INT),
        "state": listing.FilterField(
            Product.state,
            listing.FieldKind.ENUM,
            enum_values={"PRODUCT_STATE_ACTIVE": ACTIVE, "PRODUCT_STATE_ARCHIVED": ARCHIVED},
        ),
        "update_time": listing.FilterField(Product.update_time, listing.FieldKind.TIMESTAMP),
    },
    order_fields={
        "name": Product.name,
        "price_minor": Product.price_minor,
        "create_time": Product.create_time,
    },
    default_order="name",
)


def _scope(show_archived: bool) -> str:
    return f"show_archived={int(show_archived)}"


def _short(text: str) -> str:
    return repr(text if len(text) <= 40 else text[:37] + "...")


def _list_filter(comparisons: Sequence[listing.Comparison]) -> Any:
    """Returns the parsed filter as SQL; raises for an unknown category or currency."""
    expressions = []
    for comparison in comparisons:
        value = comparison.value
        if comparison.field == "category":
            slug = str(value).strip().lower()
            exists = _CATEGORY.fullmatch(slug) is not None and (
                ProductCategory.select().where(ProductCategory.slug == slug).exists()
            )
            if not exists:
                raise listing.filter_error(f"unknown category {_short(str(value))}")
            members = ProductCategory.select(ProductCategory.product).where(
                ProductCategory.slug == slug
            )
            expressions.append(
                Product.id.in_(members)
                if comparison.operator == "="
                else Product.id.not_in(members)
            )
            continue
        if comparison.field == "price_currency":
            value = str(value).strip().upper()
            if not currencies.is_known(value):
                raise listing.filter_error(f"unknown currency {_short(str(comparison.value))}")
        column = PRODUCT_LIST.filter_fields[comparison.field].column
        expressions.append(listing.OPERATORS[comparison.operator](column, value))
    where = None
    for expression in expressions:
        where = expression if where is None else where & expression
    return where


def list_(
    *,
    page_size: int,
    page_token: str,
    filter_text: str,
    order_by: str,
    show_archived: bool,
    secret: bytes,
) -> listing.Page[Product]:
    """Returns one page of products matching the filter (ACTIVE only unless show_archived)."""
    request = listing.parse_list_request(
        PRODUCT_LIST,
        page_size=page_size,
        page_token=page_token,
        filter_text=filter_text,
        order_by=order_by,
        secret=secret,
        scope=_scope(show_archived),
    )
    query = Product.select()
    if not show_archived:
        query = query.where(Product.state == ACTIVE)
    where = _list_filter(request.filter)
    if where is not None:
        query = query.where(where)
    # The filter is already applied above; the request keeps it only in its token fingerprint.
    return listing.fetch_page(query, dataclasses.replace(request, filter=()))


def list_categories() -> list[CategoryCount]:
    """Returns every category any product has, with its number of ACTIVE products, by slug."""
    active = fn.SUM(Case(None, [(Product.state == ACTIVE, 1)], 0))
    rows = cast(
        Iterable[tuple[str, Any]],
        ProductCategory.select(ProductCategory.slug, active)
        .join(Product)
        .group_by(ProductCategory.slug)
        .tuples(),
    )
    # Sorted here, not in SQL, so the order is by code point whatever the database's collation.
    return sorted((CategoryCount(slug, int(count)) for slug, count in rows), key=lambda c: c.slug)


# --- search --------------------------------------------------------------------------------------
#
# Each engine's full-text index (SQLite FTS5, PostgreSQL tsvector) finds the candidates; one
# portable test then ranks them and drops what the other engine would not find, so both engines
# return the same products in the same order. The test folds text (lower-case, the separators
# below as spaces) and asks whether each query word starts a word of the folded text. "." "@" "/"
# "+" "~" are not separators because PostgreSQL's parser keeps "1.5", "a@b.com", "x.com/p" and
# "+5" whole: a word right after them is found by neither engine. Accents count on both (FTS5
# alone would ignore them). PostgreSQL's lower() follows the database's LC_CTYPE; with a UTF-8
# locale it agrees with Python's str.lower(), which SQLite uses through storefront_fold().
_SEPARATORS = "\t\n\r-_,;:!?()[]{}\"'*=^|<>&#"
_NO_MATCH = 3


def search_words(query: str) -> list[str]:
    """Returns the distinct words of a search query: lower-cased runs of letters and digits."""
    return list(dict.fromkeys(_SEARCH_WORD.findall(unicodedata.normalize("NFC", query).lower())))


_SPACES = " " * len(_SEPARATORS)
_FOLD_TABLE = str.maketrans(_SEPARATORS, _SPACES)


def fold(text: str) -> str:
    """Returns text lower-cased with the search separators turned into spaces."""
    return text.lower().translate(_FOLD_TABLE)


def _folded(*columns: Any) -> Any:
    """Returns ' ' || fold(the columns joined by spaces) || ' ', in SQL."""
    joined: Any = columns[0]
    for column in columns[1:]:
        joined = joined.concat(" ").concat(column)
    # SQLite's lower() folds only ASCII, so SQLite runs fold() itself (see _install_sqlite_fold);
    # PostgreSQL's lower() and translate() do the same work.
    if is_sqlite():
        text = fn.storefront_fold(joined)
    else:
        text = fn.translate(fn.lower(joined), _SEPARATORS, _SPACES)
    return SQL("' '").concat(text).concat(SQL("' '"))


def _starts_a_word(folded: Any, word: str) -> Any:
    return peewee.NodeList((folded, SQL("LIKE"), peewee.Value(f"% {word}%")))


def _all(conditions: Iterable[Any]) -> Any:
    result = None
    for condition in conditions:
        result = condition if result is None else result & condition
    return result


def _search_tier(words: Sequence[str], whole_sku: str) -> Any:
    """Returns 0 (all words in the name, or the sku), 1 (name/sku/categories), 2 (anywhere), 3."""
    name = _folded(Product.name)
    keys = _folded(Product.name, Product.sku, Product.categories_text)
    in_name = _all((_starts_a_word(name, w) | (Product.sku == w.upper())) for w in words)
    tiers = [
        ((Product.sku == whole_sku) | in_name, 0),
        (_all(_starts_a_word(keys, w) for w in words), 1),
    ]
    if not is_sqlite():
        # PostgreSQL's own match is already as strict as the portable test (its parser splits
        # words where the test does and keeps whole what the test keeps whole), and folding
        # every description there is slow: every candidate left is a match.
        return Case(None, tiers, 2)
    # FTS5 also splits "1.5" and "a@b.com" and ignores accents: test what it found.
    everything = _folded(Product.name, Product.sku, Product.categories_text, Product.description)
    tiers.append((_all(_starts_a_word(everything, w) for w in words), 2))
    return Case(None, tiers, _NO_MATCH)


def _full_text_match(words: Sequence[str]) -> Any:
    if is_sqlite():
        fts_query = " ".join(f'"{w}"*' for w in words)
        return SQL(
            "rowid IN (SELECT rowid FROM products_fts WHERE products_fts MATCH ?)", (fts_query,)
        )
    # PostgreSQL's parser reads "KN-001" as 'kn' and '-001', so a word starting with a digit
    # also looks for its signed form.
    terms = [f"({w}:* | -{w}:*)" if w[0].isdigit() else f"{w}:*" for w in words]
    return SQL("search_vector @@ to_tsquery('simple', %s)", (" & ".join(terms),))


def _ordered(column: Any) -> Any:
    # Code-point order on both engines: SQLite's default BINARY, PostgreSQL's "C" collation.
    return column if is_sqlite() else column.collate('"C"')


def _search_token_error() -> InvalidArgument:
    description = "is invalid, or belongs to a different query (filter, order_by or parent)"
    return InvalidArgument(
        f"Invalid page_token: {description}.",
        violations=[FieldViolation("page_token", description)],
    )


def search(
    *, query: str, page_size: int, page_token: str, show_archived: bool, secret: bytes
) -> listing.Page[Product]:
    """Returns one page of products matching every word, best match first (tier, name, id)."""
    v = Validator()
    words = search_words(query)
    if not query.strip():
        v.add("query", "is required")
    elif len(query) > SEARCH_QUERY_MAX_LENGTH:
        v.add("query", f"must be at most {SEARCH_QUERY_MAX_LENGTH} characters")
    elif _has_control_characters(query):
        v.add("query", "must not contain control characters")
    elif not words:
        v.add("query", "must contain at least one letter or digit")
    elif len(words) > SEARCH_MAX_WORDS:
        v.add("query", f"must have at most {SEARCH_MAX_WORDS} words")
    try:
        size = listing.page_size_or_default(page_size)
    except InvalidArgument as exc:
        v.violations.extend(exc.violations)
    v.raise_if_any()

    whole_sku = query.strip().upper()
    fingerprint = listing.query_fingerprint(
        "products.search", json.dumps([words, whole_sku]), "tier, name, id", _scope(show_archived)
    )
    after: tuple[Any, ...] | None = None
    if page_token:
        after = listing.decode_page_token(page_token, secret=secret, fingerprint=fingerprint)
        types_ok = len(after) == 3 and [type(x) for x in after] == [int, str, str]
        if not types_ok:
            raise _search_token_error()

    if is_sqlite():
        _install_sqlite_fold()
    candidates = Product.sku == whole_sku
    candidates |= _full_text_match(words)
    if not show_archived:
        candidates = (Product.state == ACTIVE) & candidates
    ranked_query = Product.select(Product, _search_tier(words, whole_sku).alias("tier")).where(
        candidates
    )
    # OFFSET 0 keeps both engines from merging the subquery into the outer query, which would
    # compute each row's tier twice (filter and sort).
    ranked = ranked_query.offset(0).alias("ranked")
    columns = [getattr(ranked.c, f.column_name) for f in Product._meta.sorted_fields]
    keys = (ranked.c.tier, _ordered(ranked.c.name), _ordered(ranked.c.id))
    page_query = (
        Product.select(*columns, ranked.c.tier)
        .from_(ranked)
        .where(ranked.c.tier < _NO_MATCH)
        .order_by(*keys)
        .limit(size + 1)
    )
    if after is not None:
        page_query = page_query.where(peewee.Tuple(*keys) > peewee.Tuple(*after))
    rows = list(page_query)
    if len(rows) <= size:
        return listing.Page(rows, "")
    rows = rows[:size]
    last = rows[-1]
    token = listing.encode_page_token(
        (int(cast(Any, last).tier), last.name, last.id), secret=secret, fingerprint=fingerprint
    )
    return listing.Page(rows, token)


def _sqlite_fold(text: str | None) -> str | None:
    return None if text is None else fold(text)


def _install_sqlite_fold() -> None:
    """Makes storefront_fold() available on this thread's SQLite connection."""
    connection = database.connection()
    connection.create_function("storefront_fold", 1, _sqlite_fold, deterministic=True)
