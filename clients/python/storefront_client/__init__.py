"""Typed Python client for storefront."""

from storefront_client.auth import AuthInterceptor, Session, SessionManager
from storefront_client.channel import MAX_MESSAGE_BYTES, channel_options, create_channel
from storefront_client.client import ServiceStub, StorefrontClient
from storefront_client.deadline import DeadlineInterceptor
from storefront_client.errors import error_info, field_violations, request_id, status_of
from storefront_client.retry import RetryInterceptor, RetryPolicy

Client = StorefrontClient

__all__ = [
    "MAX_MESSAGE_BYTES",
    "AuthInterceptor",
    "Client",
    "DeadlineInterceptor",
    "RetryInterceptor",
    "RetryPolicy",
    "ServiceStub",
    "Session",
    "SessionManager",
    "StorefrontClient",
    "channel_options",
    "create_channel",
    "error_info",
    "field_violations",
    "request_id",
    "status_of",
]
