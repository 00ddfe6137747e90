"""CurrencyService servicer: unpacks requests, calls one domain function, packs responses."""

from __future__ import annotations

import grpc
from storefront.v1 import currency_service_pb2, currency_service_pb2_grpc

from server import call_context
from server.domain import exchange_rates
from server.domain.exchange_rates import Rate
from server.services.converters import money_from_proto, money_to_proto, rate_text, timestamp

pb = currency_service_pb2


def rate_to_proto(rate: Rate) -> currency_service_pb2.ExchangeRate:
    """Converts a domain rate to its message."""
    return pb.ExchangeRate(
        currency_code=rate.currency_code,
        rate=rate_text(rate.rate),
        update_time=timestamp(rate.update_time),
    )


def currency_to_proto(rate: Rate) -> currency_service_pb2.Currency:
    """Converts a supported currency's rate to its Currency message."""
    return pb.Currency(
        code=rate.currency_code,
        minor_unit_digits=rate.exponent,
        rate=rate_text(rate.rate),
        base=rate.is_base,
        rate_update_time=timestamp(rate.update_time),
    )


class CurrencyServicer(currency_service_pb2_grpc.CurrencyServiceServicer):
    """Implements storefront.v1.CurrencyService."""

    def ListCurrencies(
        self, request: pb.ListCurrenciesRequest, context: grpc.ServicerContext
    ) -> pb.ListCurrenciesResponse:
        return pb.ListCurrenciesResponse(
            currencies=[currency_to_proto(rate) for rate in exchange_rates.list_()],
            base_currency_code=exchange_rates.BASE_CURRENCY,
        )

    def ConvertMoney(
        self, request: pb.ConvertMoneyRequest, context: grpc.ServicerContext
    ) -> pb.ConvertMoneyResponse:
        conversion = exchange_rates.convert(
            amount=money_from_proto(request.money),
            target_currency=request.target_currency_code,
        )
        return pb.ConvertMoneyResponse(
            converted=money_to_proto(conversion.converted),
            rate=rate_text(conversion.cross_rate),
            source_rate=rate_to_proto(conversion.source_rate),
            target_rate=rate_to_proto(conversion.target_rate),
            rate_update_time=timestamp(conversion.rate_update_time),
        )

    def UpdateExchangeRates(
        self, request: pb.UpdateExchangeRatesRequest, context: grpc.ServicerContext
    ) -> pb.UpdateExchangeRatesResponse:
        rates = exchange_rates.update(
            [(entry.currency_code, entry.rate) for entry in request.rates],
            actor=call_context.principal(),
        )
        return pb.UpdateExchangeRatesResponse(rates=[rate_to_proto(rate) for rate in rates])
