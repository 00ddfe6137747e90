"""Shipping: the rules file (zones, costs, thresholds), its validation, and quotes from it."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from server.domain import countries, currencies, exchange_rates, json_files
from server.domain.exchange_rates import Rate
from server.domain.money import Money
from server.errors import FieldViolation, InvalidArgument
from server.validation import Validator

MAX_WEIGHT_GRAMS = 10_000_000_000
GRAMS_PER_KG = 1_000
COST_MAX_MINOR = 1_000_000_000
THRESHOLD_MAX_MINOR = 1_000_000_000_000_000
DELIVERY_DAYS_MAX = 365
SERVICE_LEVEL_MAX_LENGTH = 50
RULES_MAX_BYTES = 1024 * 1024

_ZONE_ID = re.compile(r"[a-z0-9][a-z0-9-]{0,39}")
_ZONE_KEYS = frozenset(
    {
        "id",
        "countries",
        "service_level",
        "min_delivery_days",
        "max_delivery_days",
        "base_cost_minor",
        "per_kg_cost_minor",
        "free_shipping_threshold_minor",
    }
)
_RULES_KEYS = frozenset({"currency", "zones", "default_zone"})


class RulesError(ValueError):
    """A shipping rules file is unreadable or invalid; the message names the file and the field."""


@dataclass(frozen=True)
class Zone:
    """Where a rule applies and what it charges, in the rules' currency."""

    id: str
    countries: frozenset[str]
    service_level: str
    min_delivery_days: int
    max_delivery_days: int
    base_cost_minor: int
    per_kg_cost_minor: int
    free_shipping_threshold_minor: int | None

    def cost_minor(self, weight_grams: int) -> int:
        """Returns base + per_kg * the number of started kilograms."""
        started_kg = -(-weight_grams // GRAMS_PER_KG)
        return self.base_cost_minor + self.per_kg_cost_minor * started_kg


@dataclass(frozen=True)
class Rules:
    """Validated shipping rules: zones by country, a default zone, one currency, a version."""

    currency: str
    zones: tuple[Zone, ...]
    default_zone: Zone
    version: str

    def zone_for(self, country: str) -> Zone:
        """Returns the zone listing `country`, else the default zone."""
        for zone in self.zones:
            if country in zone.countries:
                return zone
        return self.default_zone


@dataclass(frozen=True)
class Quote:
    """The price and promise of one delivery; see storefront.v1.ShippingQuote."""

    quote_id: str
    zone_id: str
    rules_version: str
    service_level: str
    cost: Money
    free_shipping: bool
    free_shipping_threshold: Money | None
    min_delivery_days: int
    max_delivery_days: int


# --- the rules file ------------------------------------------------------------------------------


def _integer(problems: list[str], path: str, value: Any, low: int, high: int) -> int:
    # bool is an int in Python, and JSON true is not a number.
    if isinstance(value, bool) or not isinstance(value, int):
        problems.append(f"{path}: must be an integer")
        return 0
    if not low <= value <= high:
        problems.append(f"{path}: must be between {low} and {high}")
    return value


def _zone(problems: list[str], path: str, raw: Any, *, is_default: bool) -> Zone | None:
    if not isinstance(raw, dict):
        problems.append(f"{path}: must be an object")
        return None
    allowed = _ZONE_KEYS - {"countries"} if is_default else _ZONE_KEYS
    for key in sorted(set(raw) - allowed):
        problems.append(f"{path}.{key}: unknown field")
    required = allowed - {"free_shipping_threshold_minor"}
    for key in sorted(required - set(raw)):
        problems.append(f"{path}.{key}: is required")
    if required - set(raw):
        return None

    zone_id = raw["id"]
    if not isinstance(zone_id, str) or not _ZONE_ID.fullmatch(zone_id):
        problems.append(f"{path}.id: must be 1 to 40 characters of a-z, 0-9 and '-'")
    codes: list[str] = []
    if not is_default:
        raw_countries = raw["countries"]
        if not isinstance(raw_countries, list) or not raw_countries:
            problems.append(f"{path}.countries: must be a non-empty list of country codes")
        else:
            for index, code in enumerate(raw_countries):
                if not isinstance(code, str) or not countries.is_known(code):
                    problems.append(
                        f"{path}.countries[{index}]: {code!r} is not an upper-case ISO 3166-1 "
                        "alpha-2 country code"
                    )
                elif code in codes:
                    problems.append(f"{path}.countries[{index}]: {code} is listed twice")
                else:
                    codes.append(code)
    service_level = raw["service_level"]
    if (
        not isinstance(service_level, str)
        or not service_level.strip()
        or len(service_level) > SERVICE_LEVEL_MAX_LENGTH
    ):
        problems.append(f"{path}.service_level: must be 1 to {SERVICE_LEVEL_MAX_LENGTH} characters")
    min_days = _integer(
        problems, f"{path}.min_delivery_days", raw["min_delivery_days"], 0, DELIVERY_DAYS_MAX
    )
    max_days = _integer(
        problems, f"{path}.max_delivery_days", raw["max_delivery_days"], 0, DELIVERY_DAYS_MAX
    )
    if min_days > max_days:
        problems.append(f"{path}.max_delivery_days: must be at least min_delivery_days")
    threshold = raw.get("free_shipping_threshold_minor")
    return Zone(
        id=str(zone_id),
        countries=frozenset(codes),
        service_level=str(service_level).strip(),
        min_delivery_days=min_days,
        max_delivery_days=max_days,
        base_cost_minor=_integer(
            problems, f"{path}.base_cost_minor", raw["base_cost_minor"], 0, COST_MAX_MINOR
        ),
        per_kg_cost_minor=_integer(
            problems, f"{path}.per_kg_cost_minor", raw["per_kg_cost_minor"], 0, COST_MAX_MINOR
        ),
        free_shipping_threshold_minor=None
        if threshold is None
        else _integer(
            problems, f"{path}.free_shipping_threshold_minor", threshold, 0, THRESHOLD_MAX_MINOR
        ),
    )


def rules_version(document: Mapping[str, Any]) -> str:
    """Returns the first 16 hex digits of the SHA-256 of the document's canonical JSON."""
    canonical = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def parse_rules(document: Any) -> Rules:
    """Validates a decoded rules document; raises RulesError listing every problem."""
    if not isinstance(document, dict):
        raise RulesError("the rules must be a JSON object")
    problems: list[str] = [f"{key}: unknown field" for key in sorted(set(document) - _RULES_KEYS)]
    for key in sorted(_RULES_KEYS - set(document)):
        problems.append(f"{key}: is required")

    currency = document.get("currency")
    if "currency" in document and (
        not isinstance(currency, str) or not currencies.is_known(currency)
    ):
        problems.append(f"currency: {currency!r} is not an upper-case ISO 4217 currency code")

    zones: list[Zone] = []
    raw_zones = document.get("zones", [])
    if not isinstance(raw_zones, list):
        problems.append("zones: must be a list")
        raw_zones = []
    for index, raw in enumerate(raw_zones):
        zone = _zone(problems, f"zones[{index}]", raw, is_default=False)
        if zone is not None:
            zones.append(zone)
    default_zone = None
    if "default_zone" in document:
        default_zone = _zone(problems, "default_zone", document["default_zone"], is_default=True)

    seen_ids: set[str] = set()
    zone_of_country: dict[str, str] = {}
    for zone in [*zones, *([default_zone] if default_zone else [])]:
        if zone.id in seen_ids:
            problems.append(f"zone id {zone.id!r} is used twice")
        seen_ids.add(zone.id)
        for country in sorted(zone.countries):
            if country in zone_of_country:
                problems.append(
                    f"country {country} is in zones {zone_of_country[country]!r} and {zone.id!r}"
                )
            zone_of_country.setdefault(country, zone.id)

    if problems:
        raise RulesError("; ".join(problems))
    assert default_zone is not None and isinstance(currency, str)
    return Rules(
        currency=currency,
        zones=tuple(zones),
        default_zone=default_zone,
        version=rules_version(document),
    )


def load_rules(path: Path) -> Rules:
    """Reads and validates a rules file; raises RulesError naming the file and the problem."""
    document = json_files.read_json(path, max_bytes=RULES_MAX_BYTES, error=RulesError)
    try:
        return parse_rules(document)
    except RulesError as exc:
        raise RulesError(f"{path}: {exc}") from None


# --- quotes --------------------------------------------------------------------------------------


def _quote_id(
    rules: Rules,
    zone: Zone,
    country: str,
    weight_grams: int,
    subtotal: Money,
    cost: Money,
    free: bool,
) -> str:
    content = [
        rules.version,
        zone.id,
        country,
        weight_grams,
        subtotal.currency_code,
        subtotal.amount_minor,
        cost.amount_minor,
        free,
    ]
    digest = hashlib.sha256(json.dumps(content, separators=(",", ":")).encode()).hexdigest()
    return f"sq_{digest[:32]}"


def _check_country(v: Validator, path: str, raw: str) -> str:
    code = raw.strip().upper()
    if not code:
        v.add(path, "is required")
    elif not countries.is_known(code):
        v.add(path, "must be an ISO 3166-1 alpha-2 country code such as DE")
    return code


def quote(
    rules: Rules, *, destination_country: str, total_weight_grams: int, subtotal: Money
) -> Quote:
    """Validates the request, looks up the rates and prices it (see ShippingService)."""
    v = Validator()
    country = _check_country(v, "destination_country_code", destination_country)
    v.check(
        0 <= total_weight_grams <= MAX_WEIGHT_GRAMS,
        "total_weight_grams",
        f"must be between 0 and {MAX_WEIGHT_GRAMS}",
    )
    currency = exchange_rates.check_code(v, "subtotal.currency_code", subtotal.currency_code)
    v.check(subtotal.amount_minor >= 0, "subtotal.amount_minor", "must not be negative")
    v.raise_if_any()
    found = exchange_rates.supported_rates(v, {"subtotal.currency_code": currency})
    v.raise_if_any()
    if rules.currency not in found:
        found.update(exchange_rates.rates([rules.currency]))
    if rules.currency not in found:
        # Start-up refuses rules in a currency without a rate, and rates are never deleted.
        raise RuntimeError(f"the shipping rules' currency {rules.currency} has no exchange rate")
    return price(
        rules,
        country=country,
        weight_grams=total_weight_grams,
        subtotal=Money(currency, subtotal.amount_minor),
        rates=found,
    )


def price(
    rules: Rules,
    *,
    country: str,
    weight_grams: int,
    subtotal: Money,
    rates: Mapping[str, Rate],
) -> Quote:
    """Prices a validated request with the given rates of the rules' and the subtotal's
    currencies; raises InvalidArgument if the result does not fit in an int64."""
    currency = subtotal.currency_code
    zone = rules.zone_for(country)
    try:
        threshold = None
        if zone.free_shipping_threshold_minor is not None:
            threshold = exchange_rates.convert_with(
                rates, Money(rules.currency, zone.free_shipping_threshold_minor), currency
            )
        free = threshold is not None and subtotal.amount_minor >= threshold.amount_minor
        cost = (
            Money(currency, 0)
            if free
            else exchange_rates.convert_with(
                rates, Money(rules.currency, zone.cost_minor(weight_grams)), currency
            )
        )
    except OverflowError:
        raise InvalidArgument(
            "The shipping cost is too large to express in this currency.",
            violations=[
                FieldViolation(
                    "subtotal.currency_code",
                    "the shipping cost or free-shipping threshold does not fit in an int64 in "
                    "this currency",
                )
            ],
        ) from None
    return Quote(
        quote_id=_quote_id(rules, zone, country, weight_grams, subtotal, cost, free),
        zone_id=zone.id,
        rules_version=rules.version,
        service_level=zone.service_level,
        cost=cost,
        free_shipping=free,
        free_shipping_threshold=threshold,
        min_delivery_days=zone.min_delivery_days,
        max_delivery_days=zone.max_delivery_days,
    )
