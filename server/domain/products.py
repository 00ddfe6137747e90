"""Products: create, read, update, archive and restore, import, and lists."""

from __future__ import annotations

import dataclasses
import itertools
import logging
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import peewee
from peewee import Case, fn

from server.db import database, is_sqlite, utcnow
from server.domain import currencies, list_filter, listing, outbox
from server.domain.principal import Principal
from server.domain.product_cache import ProductCache
from server.domain.product_fields import (
    CATEGORY,
    OUTPUT_ONLY_PATHS,
    UPDATE_MASK_PATHS,
    ProductFields,
    Values,
    categories_of,
    etag,
    validate_fields,
)
from server.errors import (
    Aborted,
    AlreadyExists,
    DomainError,
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
)
from server.models.product import Product, ProductCategory
from server.models.stock import StockLevel
from server.validation import Validator, shown

log = logging.getLogger("storefront.catalog")

ACTIVE = "ACTIVE"
ARCHIVED = "ARCHIVED"

BATCH_GET_MAX = 100
IMPORT_MAX_ROWS = 10_000
IMPORT_MAX_ERRORS = 1_000


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


def _require_product_id(path: str, product_id: str) -> None:
    v = Validator()
    v.check_id(path, product_id, "product")
    v.raise_if_any()


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


def _insert(values: Values, now: Any) -> Product:
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


def _changed_columns(product: Product, values: Values) -> dict[str, Any]:
    changed = {
        name: value for name, value in values.columns.items() if getattr(product, name) != value
    }
    if values.categories is not None and values.categories != categories_of(product):
        changed["categories_text"] = " ".join(values.categories)
    return changed


def _apply_changes(product: Product, changes: dict[str, Any], values: Values, now: Any) -> None:
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


def _emit(product_id: str, event_type: str, now: Any, **facts: Any) -> None:
    """Records the product change in the outbox (which also drops it from the product caches of
    this process as it commits); call inside the change's transaction."""
    outbox.emit(
        outbox.PRODUCT,
        product_id,
        f"{outbox.PRODUCT}.{event_type}",
        {"product_id": product_id, **facts},
        now=now,
    )


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
            now = utcnow()
            product = _insert(values, now)
            _emit(product.id, "created", now, sku=sku)
    except peewee.IntegrityError:
        if _sku_owner(sku) is not None:  # a concurrent create won the race
            raise _sku_taken(sku) from None
        raise
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
                f"{shown(path)} cannot be updated; updatable: " + ", ".join(UPDATE_MASK_PATHS),
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
            now = utcnow()
            _apply_changes(product, changes, values, now)
            _emit(product_id, "updated", now, fields=sorted(changes))
    except peewee.IntegrityError:
        if sku is not None and _sku_owner(sku) not in (None, product_id):
            raise _sku_taken(sku) from None
        raise
    log.info(
        "product updated",
        extra={"product_id": product_id, "actor": actor.subject, "fields": sorted(changes)},
    )
    return get_or_raise(product_id)


def _set_state(product_id: str, expected_etag: str, state: str, actor: Principal) -> Product:
    _require_product_id("product_id", product_id)
    with database.atomic():
        product = _get_for_update(product_id)
        if product is None:
            raise _not_found()
        _check_etag(product, expected_etag)
        if product.state == state:
            return product  # already there: succeed without a new version
        now = utcnow()
        _apply_changes(product, {"state": state}, Values({}, None), now)
        _emit(product_id, "archived" if state == ARCHIVED else "restored", now, state=state)
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
                now = utcnow()
                if existing is None:
                    product = _insert(values, now)
                    created = True
                    _emit(product.id, "created", now, sku=sku)
                else:
                    product, created = existing, False
                    changes = _changed_columns(existing, values)
                    if changes:
                        _apply_changes(existing, changes, values, now)
                        _emit(existing.id, "updated", now, fields=sorted(changes))
                        product = Product.get_by_id(existing.id)
        except peewee.IntegrityError:
            # Another import created the sku between our read and insert: update it instead.
            if attempt == 0 and _sku_owner(sku) is not None:
                continue
            raise
        else:
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
        "category": list_filter.FilterField(
            ProductCategory.slug, list_filter.FieldKind.STRING, operators=("=", "!=")
        ),
        "price_currency": list_filter.FilterField(
            Product.price_currency, list_filter.FieldKind.STRING, operators=("=", "!=")
        ),
        "price_minor": list_filter.FilterField(Product.price_minor, list_filter.FieldKind.INT),
        "state": list_filter.FilterField(
            Product.state,
            list_filter.FieldKind.ENUM,
            enum_values={"PRODUCT_STATE_ACTIVE": ACTIVE, "PRODUCT_STATE_ARCHIVED": ARCHIVED},
        ),
        "update_time": list_filter.FilterField(
            Product.update_time, list_filter.FieldKind.TIMESTAMP
        ),
    },
    order_fields={
        "name": Product.name,
        "price_minor": Product.price_minor,
        "create_time": Product.create_time,
    },
    default_order="name",
)


def scope(show_archived: bool) -> str:
    """Returns the page-token scope of a product list or search: whether it shows archived."""
    return f"show_archived={int(show_archived)}"


def _short(text: str) -> str:
    return repr(text if len(text) <= 40 else text[:37] + "...")


def _list_filter(comparisons: Sequence[list_filter.Comparison]) -> Any:
    """Returns the parsed filter as SQL; raises for an unknown category or currency."""
    expressions = []
    for comparison in comparisons:
        value = comparison.value
        if comparison.field == "category":
            slug = str(value).strip().lower()
            exists = CATEGORY.fullmatch(slug) is not None and (
                ProductCategory.select().where(ProductCategory.slug == slug).exists()
            )
            if not exists:
                raise list_filter.filter_error(f"unknown category {_short(str(value))}")
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
                raise list_filter.filter_error(f"unknown currency {_short(str(comparison.value))}")
        column = PRODUCT_LIST.filter_fields[comparison.field].column
        expressions.append(list_filter.OPERATORS[comparison.operator](column, value))
    where = None
    for expression in expressions:
        where = expression if where is None else where & expression
    return where


def list_(
    page: listing.PageRequest, *, show_archived: bool, cache: ProductCache | None = None
) -> listing.Page[Product]:
    """Returns one page of products matching the filter (ACTIVE only unless show_archived).

    With `cache`, the page is read as ids and versions only, and each product whose cached
    version is the one read is taken from the cache; the others are read in one more query.
    The page is then exactly as fresh as without the cache (every change bumps the version),
    and the common case reads three narrow columns instead of every column of 51 rows.
    """
    request = listing.parse_list_request(PRODUCT_LIST, page, scope=scope(show_archived))
    columns = [Product] if cache is None else _version_columns(request)
    query = Product.select(*columns)
    if not show_archived:
        query = query.where(Product.state == ACTIVE)
    where = _list_filter(request.filter)
    if where is not None:
        query = query.where(where)
    # The filter is already applied above; the request keeps it only in its token fingerprint.
    found = listing.fetch_page(query, dataclasses.replace(request, filter=()))
    if cache is None:
        return found
    keys = [(product.id, product.version) for product in found.items]
    return listing.Page(at_versions(keys, cache), found.next_page_token)


def _version_columns(request: listing.ListRequest) -> list[peewee.Field]:
    """What a page read through the cache selects: the id, the version and the sort keys (the
    next page token is made of them)."""
    return list(dict.fromkeys([Product.id, Product.version, *(t.column for t in request.order)]))


def at_versions(keys: Sequence[tuple[str, int]], cache: ProductCache | None) -> list[Product]:
    """The products of `keys` (id, version) in that order: taken from `cache` where it holds
    that version, read (and cached) in one query otherwise. A product deleted since its key was
    read is left out."""
    found: dict[str, Product] = {}
    if cache is not None:
        for product_id, version in keys:
            cached = cache.get(product_id)
            if cached is not None and cached.version == version:
                found[product_id] = cached
    to_load = [product_id for product_id, _ in keys if product_id not in found]
    if to_load:
        generation = cache.generation() if cache is not None else 0
        for product in listing.instances(Product.select().where(Product.id.in_(to_load))):
            found[product.id] = product
            if cache is not None:
                cache.put(product.id, product, generation=generation)
    return [found[product_id] for product_id, _ in keys if product_id in found]


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
