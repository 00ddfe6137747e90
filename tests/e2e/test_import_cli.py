"""`storefront seed` loads the demo catalog; `storefront import-products` feeds a running server."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from storefront.v1 import catalog_service_pb2 as catalog_pb
from storefront.v1 import inventory_service_pb2 as inventory_pb
from storefront_client import StorefrontClient

from server import db as dbmod
from server.catalog_files import CSV_COLUMNS, read_rows
from server.cli import DEMO_CATALOG
from server.models.product import Product
from server.models.stock import StockLevel
from tests.e2e.test_cli import (
    SERVING,
    START_SECONDS,
    Serving,
    cli_env,
    read_credentials,
    serving,
    storefront,
)

__all__ = ["serving"]  # the fixture, shared with test_cli

CUSTOMER_PASSWORD = "correct horse battery staple"


def seeded(tmp_path: Path) -> dict[str, str]:
    """Migrates and seeds a database in `tmp_path`; returns the environment used."""
    env = cli_env(tmp_path)
    assert storefront("migrate", env=env).returncode == 0
    result = storefront("seed", env=env)
    assert result.returncode == 0, result.stderr
    return env


def demo_catalog() -> dict[str, int]:
    """Returns the demo catalog's stock by sku."""
    return {row.sku: row.stock or 0 for row in read_rows(DEMO_CATALOG)}


def product_ids(client: StorefrontClient) -> dict[str, str]:
    ids: dict[str, str] = {}
    token = ""
    while True:
        page = client.catalog.ListProducts(
            catalog_pb.ListProductsRequest(page_size=100, page_token=token)
        )
        ids.update((p.sku, p.id) for p in page.products)
        if not (token := page.next_page_token):
            return ids


def on_hand(client: StorefrontClient, product_id: str) -> int:
    level = client.inventory.GetStockLevel(
        inventory_pb.GetStockLevelRequest(product_id=product_id)
    ).stock_level
    return level.on_hand


def csv_text(rows: list[dict[str, str]]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def test_seed_loads_the_demo_catalog_with_its_stock_once(tmp_path: Path) -> None:
    env = cli_env(tmp_path)
    assert storefront("migrate", env=env).returncode == 0
    first = storefront("seed", env=env)
    assert first.returncode == 0, first.stderr
    stock = demo_catalog()
    assert f"seeded {len(stock)} products" in first.stderr

    again = storefront("seed", env=env)
    assert again.returncode == 0, again.stderr
    assert "already has products" in again.stderr

    db = dbmod.connect_url(f"sqlite:///{tmp_path / 'storefront.db'}")
    with db.bind_ctx([Product, StockLevel]), db.connection_context():
        levels = {
            level.product.sku: level.on_hand
            for level in StockLevel.select(StockLevel, Product).join(Product)
        }
    assert len(levels) >= 60
    assert levels == stock


def test_import_products_streams_a_csv_reports_bad_rows_and_sets_stock(
    tmp_path: Path, serving: list[Serving]
) -> None:
    env = seeded(tmp_path)
    server = Serving(env)
    serving.append(server)
    server.wait_for(SERVING, START_SECONDS)
    target = env["STOREFRONT_GRPC_ADDRESS"]
    admin = read_credentials(tmp_path / "demo-admin-credentials.txt")
    import_env = {**env, "SF_IMPORT_EMAIL": admin["email"], "SF_IMPORT_PASSWORD": admin["password"]}

    # Re-importing the seed file changes nothing: every row updates, no stock moves.
    stock = demo_catalog()
    reimport = storefront("import-products", str(DEMO_CATALOG), "--target", target, env=import_env)
    assert reimport.returncode == 0, reimport.stdout + reimport.stderr
    assert f"0 created, {len(stock)} updated, 0 failed" in reimport.stdout
    assert f"stock: 0 adjusted, {len(stock)} unchanged, 0 failed" in reimport.stdout

    rows = [
        {
            "sku": "TEA-POT-CAST-1",
            "name": "Cast Iron Teapot",
            "description": "A cast iron teapot with a stainless steel infuser.",
            "description_html": "<p>A cast iron teapot.</p><script>alert(1)</script>",
            "price_currency": "USD",
            "price_minor": "5400",
            "categories": "kitchen|tea",
            "image_urls": "https://images.example.com/products/tea-pot-cast-1/main.jpg",
            "weight_grams": "1500",
            "stock": "12",
            "attributes": json.dumps({"capacity_ml": 900, "colour": "black"}),
        },
        {  # the bad row: an unknown currency, refused by the server
            "sku": "BAD-CURRENCY-1",
            "name": "Priced in nothing",
            "price_currency": "XXQ",
            "price_minor": "100",
        },
        {  # an update of a seeded product, with a new price and stock
            "sku": "COF-DRIP-CER-02",
            "name": "Ceramic Pour-Over Coffee Dripper",
            "price_currency": "USD",
            "price_minor": "2600",
            "categories": "coffee",
            "stock": "150",
        },
        {
            "sku": "TEA-CUP-2",
            "name": "Tea Cups (Pair)",
            "price_currency": "GBP",
            "price_minor": "1800",
        },
    ]
    path = tmp_path / "products.csv"
    path.write_text(csv_text(rows))
    result = storefront("import-products", str(path), "--target", target, env=import_env)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "2 created, 1 updated, 1 failed" in result.stdout
    assert "stock: 2 adjusted, 0 unchanged, 0 failed" in result.stdout
    assert "line 3 (BAD-CURRENCY-1): " in result.stdout  # line 1 is the header
    # Every phase reports, in plain lines (stderr is not a terminal).
    assert "read 4 rows from" in result.stderr
    assert "sent 4/4 rows" in result.stderr
    assert "looking up the stock of 2 products" in result.stderr
    assert "set the stock of 2/2 products" in result.stderr
    assert "Traceback" not in result.stderr

    with StorefrontClient(target) as client:
        client.login(admin["email"], admin["password"])
        ids = product_ids(client)
        assert "BAD-CURRENCY-1" not in ids
        teapot = client.catalog.GetProduct(
            catalog_pb.GetProductRequest(product_id=ids["TEA-POT-CAST-1"])
        ).product
        assert (teapot.name, teapot.price.currency_code, teapot.price.amount_minor) == (
            "Cast Iron Teapot",
            "USD",
            5400,
        )
        assert list(teapot.categories) == ["kitchen", "tea"]
        assert teapot.attributes["colour"] == "black"
        assert "<script>" not in teapot.description_html
        assert teapot.weight_grams == 1500
        assert on_hand(client, ids["TEA-POT-CAST-1"]) == 12
        dripper = client.catalog.GetProduct(
            catalog_pb.GetProductRequest(product_id=ids["COF-DRIP-CER-02"])
        ).product
        assert dripper.price.amount_minor == 2600 and list(dripper.categories) == ["coffee"]
        assert on_hand(client, ids["COF-DRIP-CER-02"]) == 150
        assert on_hand(client, ids["TEA-CUP-2"]) == 0
        assert len(ids) == len(stock) + 2

        client.register("shopper@example.com", CUSTOMER_PASSWORD)
    refused = storefront(
        "import-products",
        str(path),
        "--target",
        target,
        "--email",
        "shopper@example.com",
        env={**env, "SF_IMPORT_PASSWORD": CUSTOMER_PASSWORD},
    )
    assert refused.returncode == 1
    assert "PERMISSION_DENIED" in refused.stderr

    wrong = storefront(
        "import-products",
        str(path),
        "--target",
        target,
        "--email",
        admin["email"],
        "--password",
        "not the password at all",
        env=env,
    )
    assert wrong.returncode == 1
    assert "sign-in failed: UNAUTHENTICATED" in wrong.stderr


def test_import_products_refuses_missing_credentials_and_unknown_formats(tmp_path: Path) -> None:
    env = cli_env(tmp_path)
    path = tmp_path / "products.txt"
    path.write_text("sku,name\nA-1,A\n")
    no_password = storefront("import-products", str(path), "--email", "a@example.com", env=env)
    assert no_password.returncode == 2
    assert "SF_IMPORT_PASSWORD" in no_password.stderr
    unknown = storefront(
        "import-products", str(path), env={**env, "SF_IMPORT_EMAIL": "a", "SF_IMPORT_PASSWORD": "b"}
    )
    assert unknown.returncode == 2
    assert "--format" in unknown.stderr
    assert "Traceback" not in no_password.stderr + unknown.stderr


def test_stock_is_set_in_batches_and_a_refused_product_fails_alone(
    tmp_path: Path, serving: list[Serving]
) -> None:
    env = seeded(tmp_path)
    server = Serving(env)
    serving.append(server)
    server.wait_for(SERVING, START_SECONDS)
    target = env["STOREFRONT_GRPC_ADDRESS"]
    admin = read_credentials(tmp_path / "demo-admin-credentials.txt")
    import_env = {**env, "SF_IMPORT_EMAIL": admin["email"], "SF_IMPORT_PASSWORD": admin["password"]}
    catalog = [row.product for row in read_rows(DEMO_CATALOG)]
    held_sku = catalog[1]["sku"]
    # Orders hold 40 units of one product: its stock cannot go below that.
    db = dbmod.connect_url(f"sqlite:///{tmp_path / 'storefront.db'}")
    with db.bind_ctx([Product, StockLevel]), db.connection_context():
        held = Product.get(Product.sku == held_sku)
        StockLevel.update(on_hand=50, reserved=40).where(StockLevel.product == held.id).execute()
    # 150 products: two BatchAdjustStock calls, the first refused for the held product.
    rows = [
        {
            "sku": f"BATCH-{n:03d}",
            "name": f"Batch product {n}",
            "price_currency": "USD",
            "price_minor": "100",
            "stock": str(n + 1),
        }
        for n in range(148)
    ]
    for product, stock in ((catalog[0], "777"), (catalog[1], "5")):
        rows.insert(
            0,
            {
                "sku": product["sku"],
                "name": product["name"],
                "price_currency": product["price"]["currencyCode"],
                "price_minor": str(product["price"]["amountMinor"]),
                "stock": stock,
            },
        )
    path = tmp_path / "batch.csv"
    path.write_text(csv_text(rows))

    result = storefront("import-products", str(path), "--target", target, env=import_env)

    assert result.returncode == 1, result.stdout + result.stderr
    assert "stock: 149 adjusted, 0 unchanged, 1 failed" in result.stdout
    assert f"line 2 ({held_sku}): stock: FAILED_PRECONDITION" in result.stdout
    assert "set the stock of 150/150 products" in result.stderr
    with StorefrontClient(target) as client:
        client.login(admin["email"], admin["password"])
        ids = product_ids(client)
        assert on_hand(client, ids[held_sku]) == 50
        assert on_hand(client, ids[catalog[0]["sku"]]) == 777
        assert on_hand(client, ids["BATCH-000"]) == 1
        assert on_hand(client, ids["BATCH-147"]) == 148
