"""Products and the categories they are filed under."""

from __future__ import annotations

import peewee

from server.db import BaseModel, utcnow

SKU_MAX_LENGTH = 64
NAME_MAX_LENGTH = 200
CATEGORY_MAX_LENGTH = 40


class Product(BaseModel):
    """Something the shop sells; state is ACTIVE or ARCHIVED."""

    id = peewee.CharField(max_length=36, primary_key=True)
    sku = peewee.CharField(max_length=SKU_MAX_LENGTH, unique=True)
    name = peewee.CharField(max_length=NAME_MAX_LENGTH)
    description = peewee.TextField(default="")
    description_html = peewee.TextField(default="")
    price_currency = peewee.CharField(max_length=3)
    price_minor = peewee.BigIntegerField()
    # Space-separated category slugs, for full-text search; product_categories is the truth.
    categories_text = peewee.TextField(default="")
    attributes = peewee.TextField(default="{}")  # JSON object
    image_urls = peewee.TextField(default="[]")  # JSON array of strings
    weight_grams = peewee.IntegerField(default=0)
    state = peewee.CharField(max_length=16, default="ACTIVE")
    version = peewee.IntegerField(default=1)
    create_time = peewee.DateTimeField(default=utcnow)
    update_time = peewee.DateTimeField(default=utcnow)

    class Meta:
        table_name = "products"


class ProductCategory(BaseModel):
    """One category slug a product is filed under."""

    product = peewee.ForeignKeyField(Product, backref="category_rows", on_delete="CASCADE")
    slug = peewee.CharField(max_length=CATEGORY_MAX_LENGTH)
    product_id: str  # the foreign key's raw value, set by peewee

    class Meta:
        table_name = "product_categories"
        primary_key = peewee.CompositeKey("product", "slug")
