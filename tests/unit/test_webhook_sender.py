"""The webhook sender's guard: URLs and addresses refused before any connection is made."""

from __future__ import annotations

import pytest

from server.webhooks.sender import (
    AddressPolicy,
    Refused,
    Sender,
    check_url,
    checked_address,
    is_forbidden,
)
from tests.fakes.webhook_receiver import WebhookReceiver

STRICT = AddressPolicy(allow_http=True, allow_private_addresses=False)


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "127.8.9.10",
        "::1",
        "10.0.0.1",
        "172.16.0.1",
        "172.31.255.255",
        "192.168.0.1",
        "169.254.169.254",
        "0.0.0.0",  # noqa: S104 (an address to refuse, not to bind)
        "::",
        "::ffff:10.0.0.1",
        "::ffff:127.0.0.1",
        "fe80::1",
        "fc00::1",
        "224.0.0.1",
        "ff02::1",
        "100.64.0.1",
        "240.0.0.1",
    ],
)
def test_private_and_reserved_addresses_are_forbidden(address: str) -> None:
    assert is_forbidden(address)


@pytest.mark.parametrize("address", ["93.184.216.34", "1.1.1.1", "2606:4700:4700::1111"])
def test_public_addresses_are_allowed(address: str) -> None:
    assert not is_forbidden(address)


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("http://example.com/", "https"),
        ("ftp://example.com/", "https"),
        ("https://user:pw@example.com/", "user information"),
        ("https://a@b@example.com/", "user information"),
        ("https:///path", "host"),
        ("https://example.com/#x", "fragment"),
        ("https://example.com:99999/", "https URL"),
        ("https://example.com/" + "a" * 2048, "2048"),
    ],
)
def test_urls_webhooks_may_not_use_are_refused(url: str, problem: str) -> None:
    with pytest.raises(Refused, match=problem):
        check_url(url, AddressPolicy())


def test_a_url_keeps_its_path_query_and_default_port() -> None:
    target = check_url("https://hooks.example.com/in?source=shop", AddressPolicy())
    assert (target.scheme, target.host, target.port, target.path) == (
        "https",
        "hooks.example.com",
        443,
        "/in?source=shop",
    )


def test_one_forbidden_address_among_several_refuses_the_host() -> None:
    target = check_url("https://hooks.example.com/", AddressPolicy())
    with pytest.raises(Refused, match=r"10\.0\.0\.7"):
        checked_address(target, AddressPolicy(), lambda host, port: ["93.184.216.34", "10.0.0.7"])


def test_a_host_that_turns_private_at_delivery_time_gets_no_connection() -> None:
    # DNS rebinding: the name resolved to a public address at registration; now it says
    # loopback. The sender checks what it resolves now and never connects.
    with WebhookReceiver() as listener:
        sender = Sender(
            STRICT,
            connect_timeout=1,
            read_timeout=1,
            resolver=lambda host, port: ["127.0.0.1"],
        )
        with pytest.raises(Refused, match="private"):
            sender.post(f"http://hooks.example.com:{listener.port}/", b"{}", {})
        assert listener.connections == 0


def test_the_connection_goes_to_the_checked_address_with_the_urls_host() -> None:
    with WebhookReceiver(status=204) as listener:
        sender = Sender(
            AddressPolicy(allow_http=True, allow_private_addresses=True),
            connect_timeout=1,
            read_timeout=1,
            resolver=lambda host, port: ["127.0.0.1"],
        )
        response = sender.post(f"http://hooks.example.com:{listener.port}/in", b"{}", {})
        assert response.status == 204
        (request,) = listener.received()
        assert request.headers["host"] == f"hooks.example.com:{listener.port}"
        assert request.path == "/in"
