"""How `storefront report` writes cells: amounts as exact decimals, text never as a formula."""

from __future__ import annotations

import pytest

from server.cli.report import text_cell
from server.domain.money import decimal_text


@pytest.mark.parametrize(
    ("minor", "currency", "written"),
    [(12345, "EUR", "123.45"), (-5, "EUR", "-0.05"), (5, "JPY", "5"), (1234, "KWD", "1.234")],
)
def test_amounts_are_exact_decimals_of_the_currency(
    minor: int, currency: str, written: str
) -> None:
    assert decimal_text(minor, currency) == written


@pytest.mark.parametrize(
    ("text", "written"),
    [
        ('=HYPERLINK("http://x")', '\'=HYPERLINK("http://x")'),
        ("+1", "'+1"),
        ("-damaged", "'-damaged"),
        ("@SUM(A1)", "'@SUM(A1)"),
        ("damaged", "damaged"),
        ("", ""),
    ],
)
def test_text_that_a_spreadsheet_would_run_is_written_as_text(text: str, written: str) -> None:
    assert text_cell(text) == written
