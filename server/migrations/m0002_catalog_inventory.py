"""Creates products, categories, full-text search, stock levels, the stock ledger and
idempotency keys."""

from __future__ import annotations

import peewee


class _Frozen(peewee.Model):
    class Meta:
        legacy_table_names = False


class Product(_Frozen):
    id = peewee.CharField(max_length=36, primary_key=True)
    sku = peewee.CharField(max_length=64, unique=True)
    name = peewee.CharField(max_length=200)
    description = peewee.TextField(default="")
    description_html = peewee.TextField(default="")
    price_currency = peewee.CharField(max_length=3)
    price_minor = peewee.BigIntegerField(constraints=[peewee.Check("price_minor >= 0")])
    categories_text = peewee.TextField(default="")
    attributes = peewee.TextField(default="{}")
    image_urls = peewee.TextField(default="[]")
    weight_grams = peewee.IntegerField(default=0, constraints=[peewee.Check("weight_grams >= 0")])
    state = peewee.CharField(
        max_length=16, constraints=[peewee.Check("state IN ('ACTIVE', 'ARCHIVED')")]
    )
    version = peewee.IntegerField(default=1, constraints=[peewee.Check("version >= 1")])
    create_time = peewee.DateTimeField()
    update_time = peewee.DateTimeField()

    class Meta:
        table_name = "products"
        indexes = (
            (("state", "name", "id"), False),
            (("state", "price_minor", "id"), False),
            (("state", "create_time", "id"), False),
            (("update_time",), False),
        )


class ProductCategory(_Frozen):
    product = peewee.ForeignKeyField(Product, on_delete="CASCADE")
    slug = peewee.CharField(max_length=40)

    class Meta:
        table_name = "product_categories"
        primary_key = peewee.CompositeKey("product", "slug")
        indexes = ((("slug", "product"), False),)


class StockLevel(_Frozen):
    product = peewee.ForeignKeyField(Product, primary_key=True, on_delete="CASCADE")
    on_hand = peewee.BigIntegerField(default=0, constraints=[peewee.Check("on_hand >= 0")])
    reserved = peewee.BigIntegerField(default=0, constraints=[peewee.Check("reserved >= 0")])
    update_time = peewee.DateTimeField()

    class Meta:
        table_name = "stock_levels"
        constraints = [peewee.Check("on_hand >= reserved")]


class StockMovement(_Frozen):
    id = peewee.BigAutoField()
    product = peewee.ForeignKeyField(Product, on_delete="CASCADE")
    kind = peewee.CharField(
        max_length=16,
        constraints=[
            peewee.Check("kind IN ('ADJUSTMENT', 'RESERVATION', 'RELEASE', 'SALE', 'RESTOCK')")
        ],
    )
    on_hand_delta = peewee.BigIntegerField()
    reserved_delta = peewee.BigIntegerField()
    on_hand_after = peewee.BigIntegerField()
    reserved_after = peewee.BigIntegerField()
    reason = peewee.CharField(max_length=200)
    actor = peewee.CharField(max_length=64)
    reference = peewee.CharField(max_length=64, null=True)
    create_time = peewee.DateTimeField()

    class Meta:
        table_name = "stock_movements"
        indexes = ((("product", "id"), False),)


class IdempotencyKey(_Frozen):
    principal = peewee.CharField(max_length=64)
    key = peewee.CharField(max_length=64)
    operation = peewee.CharField(max_length=100)
    request_hash = peewee.CharField(max_length=64)
    state = peewee.CharField(
        max_length=16, constraints=[peewee.Check("state IN ('IN_FLIGHT', 'DONE')")]
    )
    response = peewee.BlobField(null=True)
    create_time = peewee.DateTimeField()
    expire_time = peewee.DateTimeField(index=True)

    class Meta:
        table_name = "idempotency_keys"
        primary_key = peewee.CompositeKey("principal", "key")


TABLES = [Product, ProductCategory, StockLevel, StockMovement, IdempotencyKey]


def up(db: peewee.Database) -> None:
    """Creates the catalog and inventory tables and each engine's full-text index."""
    with db.bind_ctx(TABLES):
        db.create_tables(TABLES)
    if isinstance(db, peewee.PostgresqlDatabase):
        # 'simple': no stemming and no stop words, so both engines match the same words.
        db.execute_sql(
            "ALTER TABLE products ADD COLUMN search_vector tsvector GENERATED ALWAYS AS ("
            "setweight(to_tsvector('simple', name), 'A') || "
            "setweight(to_tsvector('simple', sku), 'A') || "
            "setweight(to_tsvector('simple', categories_text), 'B') || "
            "setweight(to_tsvector('simple', description), 'C')) STORED"
        )
        db.execute_sql("CREATE INDEX products_search_vector ON products USING GIN (search_vector)")
    else:
        # An external-content FTS5 index over products, kept in step by triggers; its rowid is
        # the products table's implicit rowid. VACUUM may renumber those rowids: after a VACUUM,
        # run INSERT INTO products_fts(products_fts) VALUES ('rebuild').
        db.execute_sql(
            "CREATE VIRTUAL TABLE products_fts USING fts5(name, sku, categories_text, "
            "description, content='products', content_rowid='rowid', "
            "tokenize='unicode61 remove_diacritics 2')"
        )
        columns = "name, sku, categories_text, description"
        new_values = "new.name, new.sku, new.categories_text, new.description"
        old_values = "old.name, old.sku, old.categories_text, old.description"
        db.execute_sql(
            "CREATE TRIGGER products_fts_insert AFTER INSERT ON products BEGIN "
            f"INSERT INTO products_fts(rowid, {columns}) VALUES (new.rowid, {new_values}); END"
        )
        db.execute_sql(
            "CREATE TRIGGER products_fts_delete AFTER DELETE ON products BEGIN "
            f"INSERT INTO products_fts(products_fts, rowid, {columns}) "
            f"VALUES ('delete', old.rowid, {old_values}); END"
        )
        db.execute_sql(
            "CREATE TRIGGER products_fts_update AFTER UPDATE ON products BEGIN "
            f"INSERT INTO products_fts(products_fts, rowid, {columns}) "
            f"VALUES ('delete', old.rowid, {old_values}); "
            f"INSERT INTO products_fts(rowid, {columns}) VALUES (new.rowid, {new_values}); END"
        )
