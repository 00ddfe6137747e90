"""Service accounts: client credentials for internal services."""

from __future__ import annotations

import peewee

from server.db import BaseModel, utcnow


class ServiceAccount(BaseModel):
    """An internal service's identity; the client secret is stored only as its SHA-256."""

    id = peewee.CharField(max_length=36, primary_key=True)
    client_id = peewee.CharField(max_length=64, unique=True)
    secret_hash = peewee.CharField(max_length=64)
    display_name = peewee.CharField(max_length=100)
    disabled = peewee.BooleanField(default=False)
    created_by = peewee.CharField(max_length=36)
    create_time = peewee.DateTimeField(default=utcnow)

    class Meta:
        table_name = "service_accounts"


def get_by_client_id(client_id: str) -> ServiceAccount | None:
    """Returns the account with the given client id, or None."""
    return ServiceAccount.get_or_none(ServiceAccount.client_id == client_id)


def is_enabled(account_id: str) -> bool:
    """Whether the account exists and is not disabled."""
    return bool(
        ServiceAccount.select()
        .where((ServiceAccount.id == account_id) & (ServiceAccount.disabled == False))  # noqa: E712
        .exists()
    )
