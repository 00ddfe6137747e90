"""Product search: each engine's full-text index finds candidates; one portable test ranks them."""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Iterable, Sequence
from typing import Any, cast

import peewee
from peewee import SQL, Case, fn

from server.db import is_sqlite, sqlite_function
from server.domain import listing, page_tokens, product_fields, products
from server.domain.product_cache import ProductCache
from server.errors import InvalidArgument
from server.models.product import Product
from server.validation import Validator

SEARCH_QUERY_MAX_LENGTH = 200
SEARCH_MAX_WORDS = 10

_SEARCH_WORD = re.compile(r"[^\W_]+")

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
    # SQLite's lower() folds only ASCII, so SQLite runs fold() itself (see _sqlite_fold);
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


def search(
    page: listing.PageRequest,
    *,
    query: str,
    show_archived: bool,
    cache: ProductCache | None = None,
) -> listing.Page[Product]:
    """Returns one page of products matching every word, best match first (tier, name, id).

    The ranking reads ids, versions and sort keys only; the products are then taken at those
    versions from `cache` (or read in one more query), as ListProducts does.
    """
    # A search has its own fixed order and no filter: only page_size and page_token count.
    v = Validator()
    words = search_words(query)
    if not query.strip():
        v.add("query", "is required")
    elif len(query) > SEARCH_QUERY_MAX_LENGTH:
        v.add("query", f"must be at most {SEARCH_QUERY_MAX_LENGTH} characters")
    elif product_fields.has_ascii_controls(query):
        v.add("query", "must not contain control characters")
    elif not words:
        v.add("query", "must contain at least one letter or digit")
    elif len(words) > SEARCH_MAX_WORDS:
        v.add("query", f"must have at most {SEARCH_MAX_WORDS} words")
    try:
        size = listing.page_size_or_default(page.page_size)
    except InvalidArgument as exc:
        v.violations.extend(exc.violations)
    v.raise_if_any()

    whole_sku = query.strip().upper()
    fingerprint = page_tokens.query_fingerprint(
        "products.search",
        json.dumps([words, whole_sku]),
        "tier, name, id",
        products.scope(show_archived),
    )
    after: tuple[Any, ...] | None = None
    if page.page_token:
        after = page.signer.read(page.page_token, fingerprint=fingerprint)
        types_ok = len(after) == 3 and [type(x) for x in after] == [int, str, str]
        if not types_ok:
            raise page_tokens.token_error()

    candidates = Product.sku == whole_sku
    candidates |= _full_text_match(words)
    if not show_archived:
        candidates = (Product.state == products.ACTIVE) & candidates
    tier = _search_tier(words, whole_sku).alias("tier")
    ranked_query = Product.select(Product.id, Product.version, Product.name, tier).where(candidates)
    # OFFSET 0 keeps both engines from merging the subquery into the outer query, which would
    # compute each row's tier twice (filter and sort).
    ranked = ranked_query.offset(0).alias("ranked")
    keys = (ranked.c.tier, _ordered(ranked.c.name), _ordered(ranked.c.id))
    page_query = (
        Product.select(ranked.c.tier, ranked.c.name, ranked.c.id, ranked.c.version)
        .from_(ranked)
        .where(ranked.c.tier < _NO_MATCH)
        .order_by(*keys)
        .limit(size + 1)
    )
    if after is not None:
        page_query = page_query.where(peewee.Tuple(*keys) > peewee.Tuple(*after))
    rows = cast(list[tuple[int, str, str, int]], list(page_query.tuples()))
    token = ""
    if len(rows) > size:
        rows = rows[:size]
        last_tier, last_name, last_id, _ = rows[-1]
        token = page.signer.sign((int(last_tier), last_name, last_id), fingerprint=fingerprint)
    found = products.at_versions([(row[2], row[3]) for row in rows], cache)
    return listing.Page(found, token)


@sqlite_function("storefront_fold", 1)
def _sqlite_fold(text: str | None) -> str | None:
    return None if text is None else fold(text)
