"""Kinds of STOREFRONT_* variable: how each one's text becomes a Settings value, within bounds;
and `variable()`, which declares a Settings field's variable with its kind.

`parse` raises ValueError saying what is wrong; server/config.py adds the variable's name.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from limits import parse as parse_limit


class ConfigError(Exception):
    """A configuration value is invalid; the message names the variable."""


DATABASE_URL_SCHEMES = ("sqlite:", "psycopg3+pool:", "psycopg3:", "postgresql:", "postgres:")


class Kind:
    """Reads a variable's stripped text; `parse` raises ValueError saying why not."""

    # Most variables set to an empty string take their default. Addresses and free text take
    # the empty string itself: it may mean something ("" disables metrics) or be refused.
    empty_is_default: ClassVar[bool] = True

    @property
    def allowed(self) -> str:
        """The values accepted, for the help; empty when the help line says it."""
        return ""

    def parse(self, text: str) -> Any:
        """Returns the value `text` stands for."""
        raise NotImplementedError


@dataclass(frozen=True)
class Text(Kind):
    """Free text; `required` refuses an empty value."""

    empty_is_default: ClassVar[bool] = False
    required: bool = False

    def parse(self, text: str) -> str:
        if self.required and not text:
            raise ValueError("must not be empty")
        return text


@dataclass(frozen=True)
class Directory(Kind):
    """A directory path (an empty value is the current directory)."""

    empty_is_default: ClassVar[bool] = False

    def parse(self, text: str) -> Path:
        return Path(text)


@dataclass(frozen=True)
class DatabaseUrl(Kind):
    """A playhouse.db_url URL for SQLite or PostgreSQL."""

    empty_is_default: ClassVar[bool] = False

    def parse(self, text: str) -> str:
        if not text.startswith(DATABASE_URL_SCHEMES):
            raise ValueError("scheme must be sqlite:// or psycopg3+pool://")
        return text


@dataclass(frozen=True)
class Choice(Kind):
    """One of a few words; `upper` accepts them in any case."""

    options: tuple[str, ...]
    upper: bool = False

    @property
    def allowed(self) -> str:
        return ", ".join(self.options)

    def parse(self, text: str) -> str:
        value = text.upper() if self.upper else text
        if value not in self.options:
            raise ValueError(f"must be one of {', '.join(self.options)}, got {value!r}")
        return value


@dataclass(frozen=True)
class Integer(Kind):
    """An integer from `low` to `high`."""

    low: int
    high: int

    @property
    def allowed(self) -> str:
        return f"{self.low}..{self.high}"

    def parse(self, text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise ValueError(f"expected an integer, got {text!r}") from None
        if not self.low <= value <= self.high:
            raise ValueError(f"must be between {self.low} and {self.high}, got {value}")
        return value


@dataclass(frozen=True)
class Processes(Kind):
    """A number of processes from 1 to `high`, or auto: one per CPU this process may use."""

    high: int

    @property
    def allowed(self) -> str:
        return f"1..{self.high}, auto"

    def parse(self, text: str) -> int:
        if text.lower() == "auto":
            return min(available_cpus(), self.high)
        return Integer(1, self.high).parse(text)


def available_cpus() -> int:
    """Returns how many CPUs this process may run on (its affinity, else the machine's)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


@dataclass(frozen=True)
class Number(Kind):
    """A number from `low` to `high`."""

    low: float
    high: float

    @property
    def allowed(self) -> str:
        return f"{self.low:g}..{self.high:g}"

    def parse(self, text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise ValueError(f"expected a number, got {text!r}") from None
        if not self.low <= value <= self.high:
            raise ValueError(f"must be between {self.low} and {self.high}, got {value}")
        return value


@dataclass(frozen=True)
class Pauses(Kind):
    """Comma-separated seconds, each from `low` to `high`, at least one and at most `most`."""

    low: float
    high: float
    most: int

    @property
    def allowed(self) -> str:
        return f"1..{self.most} comma-separated seconds, each {self.low:g}..{self.high:g}"

    def parse(self, text: str) -> tuple[float, ...]:
        parts = [part.strip() for part in text.split(",")]
        if not 1 <= len(parts) <= self.most:
            raise ValueError(f"expected 1 to {self.most} values, got {len(parts)}")
        number = Number(self.low, self.high)
        return tuple(number.parse(part) for part in parts)


@dataclass(frozen=True)
class Boolean(Kind):
    """true/false (also 1/0, yes/no, on/off)."""

    @property
    def allowed(self) -> str:
        return "true, false"

    def parse(self, text: str) -> bool:
        lowered = text.lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"expected true or false, got {text!r}")


@dataclass(frozen=True)
class Address(Kind):
    """host:port; `optional` lets an empty value turn the listener off."""

    empty_is_default: ClassVar[bool] = False
    optional: bool = False

    def parse(self, text: str) -> str:
        if not text and self.optional:
            return ""
        host, sep, port = text.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ValueError(f"expected host:port, got {text!r}")
        return text


@dataclass(frozen=True)
class File(Kind):
    """A path to a file, checked to exist after the variables have been read together.

    A `generated_in_development` file (a key or secret) may be missing in development, where it
    is created on first use, and is required in production.
    """

    generated_in_development: bool = False

    def parse(self, text: str) -> Path:
        return Path(text)


@dataclass(frozen=True)
class Files(Kind):
    """Comma-separated paths to existing files."""

    def parse(self, text: str) -> tuple[Path, ...]:
        return tuple(Path(p.strip()) for p in text.split(",") if p.strip())


@dataclass(frozen=True)
class RateLimit(Kind):
    """A rate in the `limits` notation: "<count>/<second|minute|hour|day>" (or "N per minute")."""

    @property
    def allowed(self) -> str:
        return "N/second, N/minute, N/hour, N/day"

    def parse(self, text: str) -> str:
        try:
            item = parse_limit(text)
        except ValueError:
            raise ValueError(f"expected a rate such as 100/minute, got {text!r}") from None
        if item.amount < 1:
            raise ValueError(f"the count must be at least 1, got {text!r}")
        return text


@dataclass(frozen=True)
class RateLimitStorage(Kind):
    """Where rate-limit counters live: memory:// (this process) or redis://host:port[/db]."""

    schemes: ClassVar[tuple[str, ...]] = ("memory://", "redis://", "rediss://", "redis+unix://")

    @property
    def allowed(self) -> str:
        return "memory://, redis://host:port/db"

    def parse(self, text: str) -> str:
        if not text.startswith(self.schemes):
            raise ValueError(f"scheme must be memory:// or redis://, got {text!r}")
        return text


@dataclass(frozen=True)
class Networks(Kind):
    """Comma-separated IP addresses or CIDR ranges (empty: none)."""

    empty_is_default: ClassVar[bool] = True

    def parse(self, text: str) -> tuple[str, ...]:
        entries = tuple(e.strip() for e in text.split(",") if e.strip())
        for entry in entries:
            try:
                ipaddress.ip_network(entry, strict=False)
            except ValueError:
                raise ValueError(f"expected IP addresses or CIDR ranges, got {entry!r}") from None
        return entries


# --- declaring a variable ------------------------------------------------------------------------


@dataclass(frozen=True)
class Derived:
    """A default computed from other fields, and how the help shows it."""

    shown: str
    compute: Callable[[Mapping[str, Any]], Any]


@dataclass(frozen=True)
class Variable:
    """One STOREFRONT_* variable: its kind, its default as the help shows it, and its help."""

    name: str
    kind: Kind
    default: str
    description: str
    # Set when the environment's default is not the field's own (it depends on other fields).
    derived: Derived | None = None


# The key of a Settings field's metadata that holds its Variable.
VARIABLE_METADATA = "variable"


def variable(
    name: str,
    kind: Kind,
    description: str,
    *,
    derived: Derived | None = None,
    shown: str | None = None,
) -> dict[str, Variable]:
    """Returns the metadata of a Settings field read from variable `name`.

    The help shows the field's default, or `shown`, or how a derived default is computed.
    """
    if shown is None and derived is not None:
        shown = derived.shown
    return {VARIABLE_METADATA: Variable(name, kind, shown or "", description, derived)}
