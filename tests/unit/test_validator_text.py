"""Validator.text: the one check of short free-text fields (reasons, names, addresses)."""

from __future__ import annotations

import pytest

from server.validation import Validator


@pytest.mark.parametrize(
    ("raw", "required", "problem"),
    [
        ("", True, "is required"),
        ("   ", True, "is required"),
        ("", False, None),
        ("x" * 11, True, "must be at most 10 characters"),
        ("  padded  ", True, None),
        ("a\x00b", True, "must not contain control characters"),
        ("a\nb", True, "must not contain control characters"),
        ("a\u200bb", True, "must not contain control characters"),  # zero-width space (Cf)
        ("a\u2028b", True, "must not contain control characters"),  # line separator
        ("a\ue000b", True, "must not contain control characters"),  # private use
        ("Fa\u00dfe\u00a0GmbH", True, None),  # non-breaking space and umlauts are text
    ],
)
def test_text(raw: str, required: bool, problem: str | None) -> None:
    v = Validator()
    kept = v.text("field", raw, 10, required=required)
    assert kept == raw.strip()
    assert [(x.field, x.description) for x in v.violations] == (
        [] if problem is None else [("field", problem)]
    )
