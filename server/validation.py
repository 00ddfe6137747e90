"""Input checks shared by the domain: ids, text, and the Validator that collects violations."""

from __future__ import annotations

import unicodedata
import uuid

from server.errors import FieldViolation, InvalidArgument

# How much of a caller's value an error message may quote: enough to recognise it, never enough
# to make the error itself large.
SHOWN_MAX_CHARACTERS = 64


def shown(value: str) -> str:
    """Returns `value` quoted for an error message, cut to SHOWN_MAX_CHARACTERS."""
    if len(value) <= SHOWN_MAX_CHARACTERS:
        return repr(value)
    return repr(value[:SHOWN_MAX_CHARACTERS]) + "…"


def is_id(value: str) -> bool:
    """Whether `value` has the form of a server-generated id: a lower-case UUID."""
    try:
        return str(uuid.UUID(value)) == value
    except ValueError:
        return False


_NOT_TEXT = frozenset({"Cc", "Cf", "Co", "Cn", "Cs", "Zl", "Zp"})


def has_control_characters(text: str) -> bool:
    """Whether `text` holds control, format, private-use, unassigned or surrogate code points, or
    line/paragraph separators: nothing a name or an address is written with."""
    return any(unicodedata.category(ch) in _NOT_TEXT for ch in text)


class Validator:
    """Collects field violations and raises them together as one InvalidArgument."""

    def __init__(self) -> None:
        self.violations: list[FieldViolation] = []

    def add(self, field_path: str, description: str) -> None:
        """Records that `field_path` is invalid."""
        self.violations.append(FieldViolation(field_path, description))

    def check(self, condition: bool, field_path: str, description: str) -> None:
        """Records a violation unless `condition` holds."""
        if not condition:
            self.add(field_path, description)

    def check_id(self, field_path: str, value: str, kind: str) -> None:
        """Records a violation unless `value` is present and has the form of a `kind` id."""
        if not value:
            self.add(field_path, "is required")
        elif not is_id(value):
            self.add(field_path, f"must be a {kind} id (a lower-case UUID)")

    def text(self, field_path: str, raw: str, max_length: int, *, required: bool = True) -> str:
        """Returns `raw` without surrounding whitespace; records a violation if it is missing (when
        `required`), longer than `max_length`, or holds control, format or line-break characters."""
        text = raw.strip()
        if not text:
            if required:
                self.add(field_path, "is required")
        elif len(text) > max_length:
            self.add(field_path, f"must be at most {max_length} characters")
        elif has_control_characters(text):
            self.add(field_path, "must not contain control characters")
        return text

    def raise_if_any(self, message: str = "The request has invalid fields.") -> None:
        """Raises InvalidArgument listing every recorded violation, if there are any."""
        if self.violations:
            raise InvalidArgument(message, violations=list(self.violations))
