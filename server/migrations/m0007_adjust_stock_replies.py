"""Rewrites stored AdjustStock replies as the id of their ledger entry.

AdjustStock used to store its whole serialised response under the request_id; the domain now
stores the ledger entry's id and answers a retry from the entry (which holds the levels right
after the change). Keys stored before still match; this makes them replay the new way. The
reply is read by field number (AdjustStockResponse.movement = 2, StockMovement.id = 1), which
never changes, so this migration needs no generated code.
"""

from __future__ import annotations

import peewee
from google.protobuf import empty_pb2, unknown_fields
from google.protobuf.message import DecodeError

OPERATION = "/storefront.v1.InventoryService/AdjustStock"
_MOVEMENT_FIELD = 2
_ID_FIELD = 1


class _Frozen(peewee.Model):
    class Meta:
        legacy_table_names = False


class IdempotencyKey(_Frozen):
    principal = peewee.CharField(max_length=64)
    key = peewee.CharField(max_length=64)
    operation = peewee.CharField(max_length=100)
    state = peewee.CharField(max_length=16)
    response = peewee.BlobField(null=True)

    class Meta:
        table_name = "idempotency_keys"
        primary_key = peewee.CompositeKey("principal", "key")


def _field(message: bytes, number: int) -> bytes | None:
    """Returns the bytes of length-delimited field `number` of a serialised message."""
    try:
        parsed = empty_pb2.Empty.FromString(message)
    except DecodeError:
        return None
    fields = unknown_fields.UnknownFieldSet(parsed)
    for index in range(len(fields)):
        field = fields[index]
        if field.field_number == number and isinstance(field.data, bytes):
            return field.data
    return None


def movement_id(reply: bytes) -> str | None:
    """Returns the ledger entry id in a stored AdjustStockResponse, or None if it has none."""
    movement = _field(reply, _MOVEMENT_FIELD)
    entry_id = None if movement is None else _field(movement, _ID_FIELD)
    if entry_id is None or not entry_id.isdigit():
        return None
    return entry_id.decode()


def up(db: peewee.Database) -> None:
    """Replaces each stored AdjustStock reply by its ledger entry id; a reply without one (none
    is expected) is dropped, so that a retry runs again instead of replaying garbage."""
    with db.bind_ctx([IdempotencyKey]):
        stored = IdempotencyKey.select().where(
            (IdempotencyKey.operation == OPERATION) & (IdempotencyKey.state == "DONE")
        )
        for row in list(stored):
            condition = (IdempotencyKey.principal == row.principal) & (
                IdempotencyKey.key == row.key
            )
            found = movement_id(bytes(row.response or b""))
            if found is None:
                IdempotencyKey.delete().where(condition).execute()
            else:
                IdempotencyKey.update(response=found.encode()).where(condition).execute()
