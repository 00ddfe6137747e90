"""Catalog files: JSON Lines and CSV rows in the proto3 JSON mapping, bad rows reported in place."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from google.protobuf.json_format import ParseDict
from storefront.v1 import product_pb2

from server.catalog_files import CSV_COLUMNS, CatalogFileError, Row, file_format, read_rows
from server.cli import DEMO_CATALOG

CSV_HEADER = ",".join(CSV_COLUMNS)


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_jsonl_rows_keep_the_proto_mapping_and_take_stock_out(tmp_path: Path) -> None:
    product = {
        "sku": "MUG-1",
        "name": "Mug",
        "price": {"currencyCode": "USD", "amountMinor": "1800"},
        "attributes": {"colour": "blue"},
    }
    path = write(tmp_path, "c.jsonl", json.dumps({**product, "stock": 7}) + "\n\n")
    assert list(read_rows(path)) == [Row(1, product, 7)]


def test_a_bad_jsonl_line_is_reported_and_the_rest_still_read(tmp_path: Path) -> None:
    lines = [
        '{"sku": "A-1", "name": "A"}',
        '{"sku": "B-1", "name": ',  # truncated
        "",
        '["not", "an", "object"]',
        '{"sku": "C-1", "name": "C", "stock": -3}',
        '{"sku": "D-1", "name": "D", "stock": 2.5}',
        '{"sku": "E-1", "name": "E", "stock": null}',
    ]
    rows = list(read_rows(write(tmp_path, "c.jsonl", "\n".join(lines))))
    assert [(row.line, row.sku, bool(row.error)) for row in rows] == [
        (1, "A-1", False),
        (2, "", True),
        (4, "", True),
        (5, "C-1", True),
        (6, "D-1", True),
        (7, "E-1", False),
    ]
    assert rows[1].error.startswith("invalid JSON")
    assert rows[2].error == "expected a JSON object"
    assert "stock" in rows[3].error
    assert rows[5].stock is None


def test_csv_rows_become_the_proto_mapping(tmp_path: Path) -> None:
    text = (
        CSV_HEADER + "\n"
        'MUG-1,Stoneware Mug,"A mug, glazed",<p>A mug</p>,USD,1800,kitchen|coffee,'
        "https://images.example.com/a.jpg|https://images.example.com/b.jpg,410,25,"
        '"{""colour"": ""blue"", ""dishwasher_safe"": true}"\n'
    )
    (row,) = read_rows(write(tmp_path, "c.csv", text))
    assert row == Row(
        2,
        {
            "sku": "MUG-1",
            "name": "Stoneware Mug",
            "description": "A mug, glazed",
            "descriptionHtml": "<p>A mug</p>",
            "price": {"currencyCode": "USD", "amountMinor": 1800},
            "categories": ["kitchen", "coffee"],
            "imageUrls": ["https://images.example.com/a.jpg", "https://images.example.com/b.jpg"],
            "weightGrams": 410,
            "attributes": {"colour": "blue", "dishwasher_safe": True},
        },
        25,
    )
    product = ParseDict(row.product, product_pb2.Product())
    assert product.price.amount_minor == 1800
    assert product.attributes["dishwasher_safe"] is True


def test_csv_empty_cells_are_left_out_and_columns_may_be_missing(tmp_path: Path) -> None:
    text = "sku,name,price_currency,price_minor,stock,categories\nPEN-1,Pen,JPY,550,,\n"
    (row,) = read_rows(write(tmp_path, "c.csv", text))
    assert row == Row(
        2, {"sku": "PEN-1", "name": "Pen", "price": {"currencyCode": "JPY", "amountMinor": 550}}
    )


@pytest.mark.parametrize(
    ("cells", "message"),
    [
        ({"price_minor": "12.50"}, "price_minor"),
        ({"weight_grams": "heavy"}, "weight_grams"),
        ({"stock": "-1"}, "stock"),
        ({"attributes": "{not json"}, "attributes: invalid JSON"),
        ({"attributes": "[1, 2]"}, "attributes: expected a JSON object"),
    ],
)
def test_a_bad_csv_cell_fails_only_its_row(
    tmp_path: Path, cells: dict[str, str], message: str
) -> None:
    good = {"sku": "OK-1", "name": "Fine", "price_currency": "USD", "price_minor": "100"}
    bad = {**good, "sku": "BAD-1", **cells}

    def line(values: dict[str, str]) -> str:
        return ",".join(json.dumps(values.get(column, "")) for column in CSV_COLUMNS)

    text = "\n".join([CSV_HEADER, line(good), line(bad), line(good)]) + "\n"
    rows = list(read_rows(write(tmp_path, "c.csv", text)))
    assert [(row.line, row.sku, row.error != "") for row in rows] == [
        (2, "OK-1", False),
        (3, "BAD-1", True),
        (4, "OK-1", False),
    ]
    assert message in rows[1].error


def test_csv_line_numbers_follow_quoted_newlines_and_extra_fields_fail_the_row(
    tmp_path: Path,
) -> None:
    text = 'sku,name,description\nA-1,A,"two\nlines"\nB-1,B,x,surplus\nC-1,C,\n'
    rows = list(read_rows(write(tmp_path, "c.csv", text)))
    assert [(row.line, row.sku) for row in rows] == [(2, "A-1"), (4, ""), (5, "C-1")]
    assert rows[0].product["description"] == "two\nlines"
    assert "more field" in rows[1].error


def test_a_csv_header_with_an_unknown_or_missing_column_fails_the_file(tmp_path: Path) -> None:
    with pytest.raises(CatalogFileError, match="colour"):
        list(read_rows(write(tmp_path, "a.csv", "sku,name,colour\nA-1,A,red\n")))
    with pytest.raises(CatalogFileError, match="name"):
        list(read_rows(write(tmp_path, "b.csv", "sku,price_minor\nA-1,5\n")))


def test_a_byte_order_mark_is_ignored(tmp_path: Path) -> None:
    path = tmp_path / "excel.csv"
    path.write_bytes("\ufeffsku,name\nA-1,A\n".encode())
    assert [row.sku for row in read_rows(path)] == ["A-1"]


def test_the_format_comes_from_the_extension_unless_given(tmp_path: Path) -> None:
    assert file_format(Path("x.jsonl")) == "jsonl"
    assert file_format(Path("x.NDJSON")) == "jsonl"
    assert file_format(Path("x.csv")) == "csv"
    assert file_format(Path("x.txt"), "csv") == "csv"
    with pytest.raises(CatalogFileError, match="--format"):
        file_format(Path("x.txt"))
    with pytest.raises(CatalogFileError):
        file_format(Path("x.csv"), "xml")
    text = "sku,name\nA-1,A\n"
    assert [row.sku for row in read_rows(write(tmp_path, "x.txt", text), format="csv")] == ["A-1"]


def test_the_demo_catalog_parses_into_products() -> None:
    rows = list(read_rows(DEMO_CATALOG))
    assert len(rows) >= 60
    assert not [row for row in rows if row.error]
    products = [ParseDict(row.product, product_pb2.Product()) for row in rows]
    assert len({product.sku for product in products}) == len(products)
    assert len({category for product in products for category in product.categories}) >= 6
    assert {product.price.currency_code for product in products} >= {"USD", "EUR", "GBP", "JPY"}
    assert all(row.stock is not None and row.stock >= 0 for row in rows)
    assert all(url.startswith("https://") for p in products for url in p.image_urls)
