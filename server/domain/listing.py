"""List RPC support: page size, order_by and keyset paging, with a filter and a page token."""

from __future__ import annotations

import functools
import operator
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar, cast

import peewee

from server.db import instance_of
from server.domain.list_filter import (
    IDENTIFIER,
    Comparison,
    FilterField,
    filter_expression,
    normalize_filter,
    parse_filter,
    quote,
)
from server.domain.page_tokens import (
    CursorValue,
    PageTokenSigner,
    query_fingerprint,
    token_error,
)
from server.errors import FieldViolation, InvalidArgument
from server.validation import Validator

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 100
MAX_ORDER_BY_LENGTH = 500

Row = TypeVar("Row")
M = TypeVar("M", bound=peewee.Model)


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
            if not IDENTIFIER.fullmatch(name):
                raise ValueError(f"filter field name {name!r} is not a plain identifier")
        # A broken default is a programming error; surface it at import, not in the first request.
        try:
            parse_order_by(self, self.default_order)
        except InvalidArgument as exc:
            raise ValueError(f"invalid default_order for {self.name}: {exc.message}") from exc


@dataclass(frozen=True)
class PageRequest:
    """What a List call asks for, as sent, with the signer of its tokens."""

    signer: PageTokenSigner
    page_size: int = 0
    page_token: str = ""
    filter: str = ""
    order_by: str = ""


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
    signer: PageTokenSigner

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


def parse_list_request(spec: ListSpec, page: PageRequest, *, scope: str = "") -> ListRequest:
    """Validates a List request's paging, filter and order fields; raises InvalidArgument."""
    validator = Validator()
    size = _check_page_size(validator, page.page_size)
    comparisons: tuple[Comparison, ...] = ()
    order: tuple[OrderTerm, ...] = ()
    try:
        comparisons = parse_filter(spec, page.filter)
    except InvalidArgument as exc:
        validator.violations.extend(exc.violations)
    try:
        order = parse_order_by(spec, page.order_by)
    except InvalidArgument as exc:
        validator.violations.extend(exc.violations)
    validator.raise_if_any()

    fingerprint = query_fingerprint(
        spec.name, normalize_filter(comparisons), _normalize_order(order), scope
    )
    after = None
    if page.page_token:
        after = page.signer.read(page.page_token, fingerprint=fingerprint)
        if len(after) != len(order):
            raise token_error()
    return ListRequest(spec, size, comparisons, order, after, fingerprint, page.signer)


def fetch_page(query: peewee.ModelSelect[M], request: ListRequest) -> Page[M]:
    """Runs `query` (model rows) filtered, ordered and resumed after the cursor; returns a page."""
    where = request.where()
    if where is not None:
        query = query.where(where)
    if request.after is not None:
        query = query.where(_after_cursor(request.order, request.after))
    orderings = [_ordering(term) for term in request.order]
    # One extra row says whether another page exists without a COUNT.
    rows = instances(query.order_by(*orderings).limit(request.page_size + 1))
    if len(rows) <= request.page_size:
        return Page(rows, "")
    rows = rows[: request.page_size]
    last = rows[-1].__data__  # raw column values; a foreign key gives its id, not a fetch
    values = tuple(last[term.column.name] for term in request.order)
    token = request.signer.sign(values, fingerprint=request.fingerprint)
    return Page(rows, token)


def instances(query: peewee.ModelSelect[M]) -> list[M]:
    """Runs a select of one model's columns; returns its rows as instances built directly from
    their values.

    The same instances Peewee makes (clean, every selected field set), made by `instance_of`.
    Not for selects with joined models or extra columns.
    """
    model = query.model
    rows = cast(Iterable[dict[str, Any]], query.dicts())
    return [instance_of(model, data) for data in rows]


def list_page(
    spec: ListSpec, query: peewee.ModelSelect[M], page: PageRequest, *, scope: str = ""
) -> Page[M]:
    """Validates a List request and returns the page of `query` it asks for."""
    return fetch_page(query, parse_list_request(spec, page, scope=scope))


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
            raise _order_error(f"cannot sort by {quote(name)}; sortable fields are: {allowed}")
        if any(term.name == name for term in terms):
            raise _order_error(f"lists {quote(name)} more than once")
        if len(words) > 2 or (len(words) == 2 and words[1].lower() not in ("asc", "desc")):
            raise _order_error(f"{quote(part.strip())}: expected a field, then asc or desc")
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


# --- errors -------------------------------------------------------------------------------------


def _order_error(description: str) -> InvalidArgument:
    return InvalidArgument(
        f"Invalid order_by: {description}.", violations=[FieldViolation("order_by", description)]
    )
