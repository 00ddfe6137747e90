"""BoundedMemo's bound, and the product messages built once per product version."""

from __future__ import annotations

import datetime as dt

import pytest

from server.domain.memo import BoundedMemo
from server.models.product import Product
from server.services.catalog_service import ProductMessages


def test_the_memo_drops_its_oldest_entry_to_stay_within_its_bound() -> None:
    memo: BoundedMemo[str, int] = BoundedMemo(2)
    memo.put("a", 1)
    memo.put("b", 2)
    memo.put("a", 10)  # a key already there takes no extra room
    assert (memo.get("a"), memo.get("b"), len(memo)) == (10, 2, 2)
    memo.put("c", 3)
    assert (memo.get("a"), memo.get("b"), memo.get("c"), len(memo)) == (None, 2, 3, 2)
    with pytest.raises(ValueError):
        BoundedMemo(0)


def product(version: int, name: str) -> Product:
    return Product(
        id="6f1c2a4e-8b0d-4c3e-9a5f-1b2c3d4e5f60",
        sku="MUG-1",
        name=name,
        price_currency="EUR",
        price_minor=1250,
        categories_text="kitchen mugs",
        attributes='{"colour": "blue"}',
        image_urls='["https://img.example.com/mug.jpg"]',
        version=version,
        create_time=dt.datetime(2026, 1, 1),
        update_time=dt.datetime(2026, 1, 1) + dt.timedelta(seconds=version),
    )


def test_a_product_version_is_converted_once_and_a_new_version_anew() -> None:
    messages = ProductMessages(max_size=8)
    first = messages.of(product(1, "Mug"))
    assert messages.of(product(1, "Mug")) is first
    assert (first.name, first.etag, first.attributes["colour"]) == ("Mug", 'W/"1"', "blue")
    assert list(first.categories) == ["kitchen", "mugs"]
    renamed = messages.of(product(2, "Blue mug"))
    assert (renamed.name, renamed.etag) == ("Blue mug", 'W/"2"')
    assert messages.of(product(1, "Mug")) is first  # the old version is still the old message
