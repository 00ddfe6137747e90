"""Gives every call a deadline unless the caller chose one."""

from __future__ import annotations

from storefront_client._call_details import CallDetails, CallDetailsInterceptor

DEFAULT_TIMEOUT_SECONDS = 10.0


class DeadlineInterceptor(CallDetailsInterceptor):
    """Sets the default timeout on calls made without one."""

    def __init__(self, default_timeout: float = DEFAULT_TIMEOUT_SECONDS) -> None:
        """Creates the interceptor; `default_timeout` is in seconds and must be positive."""
        if default_timeout <= 0:
            raise ValueError("default_timeout must be positive")
        self._default_timeout = default_timeout

    def rewrite(self, details: CallDetails) -> CallDetails:
        """Returns the details with the default timeout if none was given."""
        if details.timeout is not None:
            return details
        return details.replace(timeout=self._default_timeout)
