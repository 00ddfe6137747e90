"""Peewee models and their query helpers, one module per resource."""
