"""`storefront import-products`: a client that streams a catalog file to a running server."""

from __future__ import annotations

import argparse
import getpass
import os
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO, TypeVar

import grpc
from google.protobuf.json_format import ParseDict, ParseError
from storefront.v1 import catalog_service_pb2, inventory_service_pb2, product_pb2
from storefront_client import StorefrontClient, field_violations

from server import catalog_files

# Credentials of `storefront import-products`. Not STOREFRONT_*: those are server settings, and
# the server refuses to start with a STOREFRONT_ variable it does not know.
IMPORT_EMAIL_VARIABLE = "SF_IMPORT_EMAIL"
IMPORT_PASSWORD_VARIABLE = "SF_IMPORT_PASSWORD"  # noqa: S105 (a variable's name)
IMPORT_TIMEOUT_SECONDS = 600.0
ERRORS_SHOWN = 10
STOCK_BATCH = 100  # BatchAdjustStock's limit


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Adds `import-products` to the command line."""
    importer = commands.add_parser(
        "import-products",
        help="create or update products from a JSONL or CSV file through a running server",
        description="Streams the file's rows to CatalogService.ImportProducts, then sets the "
        "on-hand stock of rows that give one with InventoryService.BatchAdjustStock, 100 "
        "products a call. Exits 1 if any row failed.",
        epilog=f"CSV columns: {','.join(catalog_files.CSV_COLUMNS)} (categories and image_urls "
        f"separated by '{catalog_files.CSV_LIST_SEPARATOR}', attributes a JSON object).\n"
        f"Credentials may come from {IMPORT_EMAIL_VARIABLE} and {IMPORT_PASSWORD_VARIABLE}; "
        "the account needs the STAFF or ADMIN role.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    importer.add_argument("file", type=Path, help="a .jsonl or .csv file")
    importer.add_argument(
        "--format", choices=catalog_files.FORMATS, help="instead of the extension"
    )
    importer.add_argument("--target", default="127.0.0.1:50051", help="server host:port")
    importer.add_argument("--email", help=f"sign-in email [{IMPORT_EMAIL_VARIABLE}]")
    importer.add_argument("--password", help=f"password [{IMPORT_PASSWORD_VARIABLE}, or asked]")
    importer.add_argument(
        "--timeout",
        type=float,
        default=IMPORT_TIMEOUT_SECONDS,
        help="seconds the import call may take (default: %(default)s)",
    )


class _Progress:
    """One phase's progress on stderr: a bar redrawn in place on a terminal, else a line per 10%."""

    BAR_WIDTH = 30
    REDRAW_SECONDS = 0.1

    def __init__(self, label: str, unit: str, total: int, stream: TextIO) -> None:
        self.label = label
        self.unit = unit
        self.total = total
        self.done = 0
        self._stream = stream
        self._tty = stream.isatty()
        self._drawn_at = 0.0
        self._next_line_percent = 10

    def advance(self, count: int = 1) -> None:
        """Counts `count` more units done."""
        self.done += count
        if self._tty:
            now = time.monotonic()
            if now - self._drawn_at >= self.REDRAW_SECONDS or self.done == self.total:
                self._drawn_at = now
                self._stream.write("\r" + self._bar())
                self._stream.flush()
        elif self.done * 100 >= self._next_line_percent * self.total:
            # A line per 10% at most, so the logs of big imports stay short.
            while self._next_line_percent * self.total <= self.done * 100:
                self._next_line_percent += 10
            print(f"storefront: {self._count()}", file=self._stream, flush=True)

    def finish(self) -> None:
        """Ends the bar's line on a terminal."""
        if self._tty and self.total:
            self._stream.write("\r" + self._bar() + "\n")
            self._stream.flush()

    def _count(self) -> str:
        return f"{self.label} {self.done}/{self.total} {self.unit}"

    def _bar(self) -> str:
        filled = self.BAR_WIDTH * self.done // self.total if self.total else self.BAR_WIDTH
        return f"[{'#' * filled}{'.' * (self.BAR_WIDTH - filled)}] {self._count()}"


def _say(text: str) -> None:
    """Reports the start of a phase without a count, on stderr with the progress."""
    print(f"storefront: {text}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class _Failure:
    """A row that failed, where it is in the file and why."""

    line: int
    sku: str
    message: str


@dataclass(frozen=True)
class _Outgoing:
    """A row ready to send: where it came from and its request."""

    row: catalog_files.Row
    request: catalog_service_pb2.ImportProductsRequest


def _rpc_failure(exc: grpc.RpcError) -> str:
    """Returns the status code and message of a failed call, with its field violations."""
    code = exc.code()
    violations = "; ".join(f"{name}: {problem}" for name, problem in field_violations(exc))
    return f"{code.name if code else 'UNKNOWN'}: {violations or exc.details()}"


def _parse_rows(path: Path, file_format: str | None) -> tuple[list[_Outgoing], list[_Failure]]:
    """Reads the file; returns the rows to send and the rows that cannot be sent."""
    outgoing: list[_Outgoing] = []
    failed: list[_Failure] = []
    for row in catalog_files.read_rows(path, format=file_format):
        if row.error:
            failed.append(_Failure(row.line, row.sku, row.error))
            continue
        try:
            product = ParseDict(row.product, product_pb2.Product())
        except ParseError as exc:
            failed.append(_Failure(row.line, row.sku, str(exc)))
            continue
        outgoing.append(_Outgoing(row, catalog_service_pb2.ImportProductsRequest(product=product)))
    return outgoing, failed


def _product_ids_by_sku(client: StorefrontClient) -> dict[str, str]:
    """Returns the id of every product, archived or not, by sku."""
    ids: dict[str, str] = {}
    page_token = ""
    while True:
        page = client.catalog.ListProducts(
            catalog_service_pb2.ListProductsRequest(
                page_size=100, page_token=page_token, show_archived=True
            )
        )
        ids.update((product.sku, product.id) for product in page.products)
        page_token = page.next_page_token
        if not page_token:
            return ids


def _set_stock(
    client: StorefrontClient, wanted: dict[str, tuple[int, int]], reason: str
) -> tuple[int, int, list[_Failure]]:
    """Adjusts on-hand stock to `wanted` (upper-case sku -> (line, stock)), a BatchAdjustStock
    call per STOCK_BATCH products.

    Returns how many products were adjusted, how many already had that stock, and the failures.
    """
    _say(f"looking up the stock of {len(wanted)} products")
    ids = _product_ids_by_sku(client)
    failed: list[_Failure] = []
    targets: list[tuple[str, int, str, int]] = []  # (product id, line, sku, stock)
    for sku, (line, stock) in wanted.items():
        if sku in ids:
            targets.append((ids[sku], line, sku, stock))
        else:
            failed.append(_Failure(line, sku, "stock: no product has this sku after the import"))
    on_hand: dict[str, int] = {}
    for batch in _batches(targets):
        levels = client.inventory.BatchGetStockLevels(
            inventory_service_pb2.BatchGetStockLevelsRequest(
                product_ids=[product_id for product_id, *_ in batch]
            )
        )
        on_hand.update((level.product_id, level.on_hand) for level in levels.stock_levels)
    changes = [
        (product_id, line, sku, stock - on_hand.get(product_id, 0))
        for product_id, line, sku, stock in targets
        if stock != on_hand.get(product_id, 0)
    ]
    progress = _Progress("set the stock of", "products", len(changes), sys.stderr)
    adjusted = 0
    for batch in _batches(changes):
        batch_failures = _adjust_batch(client, batch, reason)
        failed += batch_failures
        adjusted += len(batch) - len(batch_failures)
        progress.advance(len(batch))
    progress.finish()
    return adjusted, len(targets) - len(changes), failed


_T = TypeVar("_T")


def _batches(items: list[_T]) -> Iterator[list[_T]]:
    for start in range(0, len(items), STOCK_BATCH):
        yield items[start : start + STOCK_BATCH]


def _adjust_batch(
    client: StorefrontClient, batch: list[tuple[str, int, str, int]], reason: str
) -> list[_Failure]:
    """Applies (product id, line, sku, delta) changes in one call; returns the failures.

    A batch is all or nothing: when the server refuses it for one product (stock reserved by
    orders meanwhile, a product just deleted), each change is retried alone, so the others land
    and the failure names its row.
    """
    try:
        client.inventory.BatchAdjustStock(
            inventory_service_pb2.BatchAdjustStockRequest(
                adjustments=[
                    inventory_service_pb2.StockAdjustment(product_id=product_id, delta=delta)
                    for product_id, _, _, delta in batch
                ],
                reason=reason,
                # A fresh key per batch; the SDK's retries of this call reuse it.
                request_id=str(uuid.uuid4()),
            )
        )
        return []
    except grpc.RpcError as exc:
        if exc.code() not in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.NOT_FOUND):
            return [_Failure(line, sku, f"stock: {_rpc_failure(exc)}") for _, line, sku, _ in batch]
    failed: list[_Failure] = []
    for product_id, line, sku, delta in batch:
        try:
            client.inventory.AdjustStock(
                inventory_service_pb2.AdjustStockRequest(
                    product_id=product_id, delta=delta, reason=reason, request_id=str(uuid.uuid4())
                )
            )
        except grpc.RpcError as exc:
            failed.append(_Failure(line, sku, f"stock: {_rpc_failure(exc)}"))
    return failed


def _import_credentials(email: str | None, password: str | None) -> tuple[str, str]:
    """Returns the sign-in email and password from flags, environment or a prompt."""
    email = email or os.environ.get(IMPORT_EMAIL_VARIABLE, "")
    password = password or os.environ.get(IMPORT_PASSWORD_VARIABLE, "")
    if not email:
        raise ValueError(f"sign-in email needed: --email or {IMPORT_EMAIL_VARIABLE}")
    if not password:
        if not sys.stdin.isatty():
            raise ValueError(f"password needed: --password or {IMPORT_PASSWORD_VARIABLE}")
        password = getpass.getpass(f"password for {email}: ")
    return email, password


def import_products(args: argparse.Namespace) -> int:
    """Streams a JSONL or CSV file to ImportProducts, then sets the stock the rows give."""
    path: Path = args.file
    try:
        email, password = _import_credentials(args.email, args.password)
        outgoing, failed = _parse_rows(path, args.format)
    except (OSError, ValueError) as exc:  # CatalogFileError is a ValueError
        print(f"storefront: {exc}", file=sys.stderr)
        return 2
    _say(f"read {len(outgoing) + len(failed)} rows from {path}, {len(failed)} unusable")
    progress = _Progress("sent", "rows", len(outgoing), sys.stderr)

    def requests() -> Iterator[catalog_service_pb2.ImportProductsRequest]:
        for item in outgoing:
            yield item.request
            progress.advance()

    with StorefrontClient(args.target) as client:
        try:
            client.login(email, password)
        except grpc.RpcError as exc:
            print(f"storefront: sign-in failed: {_rpc_failure(exc)}", file=sys.stderr)
            return 1
        try:
            result = client.catalog.ImportProducts(requests(), timeout=args.timeout)
        except grpc.RpcError as exc:
            progress.finish()
            print(f"storefront: import failed: {_rpc_failure(exc)}", file=sys.stderr)
            return 1
        progress.finish()
        for error in result.errors:
            source = outgoing[error.row - 1].row if 0 < error.row <= len(outgoing) else None
            line = source.line if source else 0
            failed.append(_Failure(line, error.sku, error.message))
        # Rows beyond the server's error list (it keeps at most 1,000) still count as failed.
        failed_count = len(failed) + result.failed_count - len(result.errors)
        print(
            f"{path}: {result.created_count} created, {result.updated_count} updated, "
            f"{failed_count} failed"
        )
        # The stock of the last good row per sku; rows the server refused get none.
        refused = {error.row for error in result.errors}
        wanted: dict[str, tuple[int, int]] = {}
        for position, item in enumerate(outgoing, start=1):
            if item.row.stock is not None and position not in refused:
                wanted[item.request.product.sku.strip().upper()] = (item.row.line, item.row.stock)
        if wanted:
            try:
                adjusted, unchanged, stock_failed = _set_stock(
                    client, wanted, f"import {path.name}"[:200]
                )
            except grpc.RpcError as exc:
                print(f"storefront: setting stock failed: {_rpc_failure(exc)}", file=sys.stderr)
                return 1
            print(f"stock: {adjusted} adjusted, {unchanged} unchanged, {len(stock_failed)} failed")
            failed += stock_failed
            failed_count += len(stock_failed)
    if failed:
        failed.sort(key=lambda failure: failure.line)
        print(f"first {min(len(failed), ERRORS_SHOWN)} error(s):")
        for failure in failed[:ERRORS_SHOWN]:
            where = f"line {failure.line}" if failure.line else "row"
            print(f"  {where}{f' ({failure.sku})' if failure.sku else ''}: {failure.message}")
    return 1 if failed_count else 0
