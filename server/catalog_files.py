"""Reads product rows for import from JSON Lines or CSV files."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FORMATS = ("jsonl", "csv")
# File extensions that tell the format without --format.
EXTENSIONS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv"}
CSV_COLUMNS = (
    "sku",
    "name",
    "description",
    "description_html",
    "price_currency",
    "price_minor",
    "categories",
    "image_urls",
    "weight_grams",
    "stock",
    "attributes",
)
CSV_LIST_SEPARATOR = "|"


class CatalogFileError(ValueError):
    """The file as a whole cannot be read (unknown format, bad CSV header)."""


@dataclass(frozen=True)
class Row:
    """One product row: its 1-based line, the product in proto3 JSON mapping, its stock or error."""

    line: int
    product: dict[str, Any] = field(default_factory=dict)
    stock: int | None = None
    error: str = ""

    @property
    def sku(self) -> str:
        """Returns the row's sku as written, or "" when it has none."""
        sku = self.product.get("sku")
        return sku if isinstance(sku, str) else ""


def file_format(path: Path, requested: str | None = None) -> str:
    """Returns "jsonl" or "csv": `requested` if given, else what the file's extension says."""
    if requested is not None:
        if requested not in FORMATS:
            raise CatalogFileError(f"unknown format {requested!r}; use one of {', '.join(FORMATS)}")
        return requested
    try:
        return EXTENSIONS[path.suffix.lower()]
    except KeyError:
        raise CatalogFileError(
            f"{path}: cannot tell the format from the extension {path.suffix!r}; "
            f"name it .jsonl or .csv, or pass --format"
        ) from None


def read_rows(path: Path, *, format: str | None = None) -> Iterator[Row]:
    """Yields the file's rows in order; a row that cannot be read carries its error instead."""
    kind = file_format(path, format)
    # utf-8-sig: spreadsheet programs often start CSV exports with a byte-order mark.
    with path.open(encoding="utf-8-sig", newline="") as stream:
        if kind == "jsonl":
            yield from _jsonl_rows(stream)
        else:
            yield from _csv_rows(stream, path)


def _stock(value: Any) -> int | None:
    """Returns the stock as an int; raises ValueError unless it is absent or a whole number >= 0."""
    if value is None or value == "":
        return None
    if isinstance(value, str):
        value = value.strip()
        if not value.isdigit():
            raise ValueError("stock: expected a whole number >= 0")
        return int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError("stock: expected a whole number >= 0")
    return value


def _jsonl_rows(stream: Any) -> Iterator[Row]:
    for line_number, line in enumerate(stream, start=1):
        if not line.strip():
            continue
        try:
            product = json.loads(line)
        except json.JSONDecodeError as exc:
            yield Row(line_number, error=f"invalid JSON: {exc.msg} (column {exc.colno})")
            continue
        if not isinstance(product, dict):
            yield Row(line_number, error="expected a JSON object")
            continue
        try:
            stock = _stock(product.pop("stock", None))
        except ValueError as exc:
            yield Row(line_number, product, error=str(exc))
            continue
        yield Row(line_number, product, stock)


def _csv_rows(stream: Any, path: Path) -> Iterator[Row]:
    reader = csv.DictReader(stream, strict=True)
    header = reader.fieldnames or []
    unknown = [name for name in header if name not in CSV_COLUMNS]
    if unknown:
        raise CatalogFileError(
            f"{path}: unknown column {unknown[0]!r}; columns are {','.join(CSV_COLUMNS)}"
        )
    missing = [name for name in ("sku", "name") if name not in header]
    if missing:
        raise CatalogFileError(f"{path}: the header has no {missing[0]!r} column")
    last_line = reader.line_num
    while True:
        try:
            record = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            # The csv module cannot resynchronise after a malformed record: stop here.
            yield Row(last_line + 1, error=f"malformed CSV: {exc}")
            return
        line = last_line + 1  # where the record starts; quoted fields may span lines
        last_line = reader.line_num
        yield _csv_row(line, record)


def _csv_row(line: int, record: dict[str | None, Any]) -> Row:
    if None in record:
        return Row(line, error=f"{len(record[None])} more field(s) than the header has columns")
    cells = {key: (value or "") for key, value in record.items() if key is not None}
    product: dict[str, Any] = {"sku": cells["sku"].strip(), "name": cells["name"]}
    try:
        for column, key in (
            ("description", "description"),
            ("description_html", "descriptionHtml"),
        ):
            if cells.get(column):
                product[key] = cells[column]
        currency, minor = cells.get("price_currency", "").strip(), cells.get("price_minor", "")
        if currency or minor.strip():
            product["price"] = {
                "currencyCode": currency,
                "amountMinor": _integer("price_minor", minor),
            }
        for column, key in (("categories", "categories"), ("image_urls", "imageUrls")):
            items = [item.strip() for item in cells.get(column, "").split(CSV_LIST_SEPARATOR)]
            if any(items):
                product[key] = [item for item in items if item]
        if cells.get("weight_grams", "").strip():
            product["weightGrams"] = _integer("weight_grams", cells["weight_grams"])
        if cells.get("attributes", "").strip():
            product["attributes"] = _attributes(cells["attributes"])
        stock = _stock(cells.get("stock"))
    except ValueError as exc:
        return Row(line, product, error=str(exc))
    return Row(line, product, stock)


def _integer(column: str, text: str) -> int:
    try:
        return int(text.strip())
    except ValueError:
        raise ValueError(f"{column}: expected a whole number, got {text.strip()!r}") from None


def _attributes(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"attributes: invalid JSON: {exc.msg}") from None
    if not isinstance(value, dict):
        raise ValueError("attributes: expected a JSON object")
    return value
