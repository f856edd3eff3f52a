"""REST API of billing: the quote interface (itemised charges for a usage description).

``POST /api/v1/billing/quote`` computes, posts nothing, and is the same engine that real-time
rating and bill runs use, so other systems and independent checkers can compare figures.
"""

from django.utils.translation import gettext_lazy as _
from drf_spectacular.utils import OpenApiExample, extend_schema
from rest_framework import serializers
from rest_framework.generics import GenericAPIView
from rest_framework.response import Response

from billing.rating.engine import quote_to_dict
from billing.rating.model import BANDS, TOTAL, Usage
from billing.services.tariffs import tariff_quote
from core.permissions import Cap, require
from metering.api import DecimalJSONParser

ENERGY_FIELD = {"max_digits": 14, "decimal_places": 2, "min_value": 0}


class KwhIn(serializers.Serializer):
    sharp = serializers.DecimalField(required=False, **ENERGY_FIELD)
    peak = serializers.DecimalField(required=False, **ENERGY_FIELD)
    flat = serializers.DecimalField(required=False, **ENERGY_FIELD)
    valley = serializers.DecimalField(required=False, **ENERGY_FIELD)
    total = serializers.DecimalField(
        required=False, help_text=_("For a single-register tariff: billed at the flat price."), **ENERGY_FIELD
    )

    def validate(self, attrs):
        if not attrs:
            raise serializers.ValidationError(_("Give kWh for at least one register."))
        if TOTAL in attrs and any(b in attrs for b in BANDS):
            raise serializers.ValidationError(
                _("Give either a total or kWh per time-of-use register, not both.")
            )
        return attrs


class QuoteIn(serializers.Serializer):
    tariff = serializers.CharField(max_length=32, help_text=_("Tariff code, e.g. RES-TIER."))
    period_start = serializers.DateField()
    period_end = serializers.DateField(help_text=_("Inclusive."))
    kwh = KwhIn(help_text=_("kWh per time-of-use register (sharp, peak, flat, valley) or a total."))
    kvarh = serializers.DecimalField(required=False, allow_null=True, **ENERGY_FIELD)
    max_demand_kw = serializers.DecimalField(
        max_digits=12, decimal_places=4, min_value=0, required=False, allow_null=True
    )
    capacity_kva = serializers.DecimalField(
        max_digits=12, decimal_places=2, min_value=0, required=False, allow_null=True
    )
    tier_kwh_used = serializers.DecimalField(
        required=False,
        default=0,
        help_text=_("kWh already used in the current tier year (or month) before period_start."),
        **ENERGY_FIELD,
    )
    active_from = serializers.DateField(
        required=False, allow_null=True, help_text=_("Account opened (annual blocks are prorated).")
    )
    active_to = serializers.DateField(required=False, allow_null=True, help_text=_("Account closed."))

    def validate(self, attrs):
        if attrs["period_end"] < attrs["period_start"]:
            raise serializers.ValidationError({"period_end": _("The period ends before it starts.")})
        if (attrs["period_end"] - attrs["period_start"]).days > 366:
            raise serializers.ValidationError({"period_end": _("A quote covers at most one year.")})
        return attrs


class ChargeLineOut(serializers.Serializer):
    kind = serializers.ChoiceField(choices=["energy", "basic", "power_factor", "surcharge_included"])
    description = serializers.CharField()
    band = serializers.CharField(allow_null=True)
    tier = serializers.IntegerField(allow_null=True)
    quantity = serializers.CharField(help_text=_("Decimal as a string."))
    unit = serializers.CharField()
    unit_price = serializers.CharField(help_text=_("Yuan, decimal as a string."))
    amount = serializers.CharField(help_text=_("Yuan to the fen, as a string."))
    period_start = serializers.DateField()
    period_end = serializers.DateField()


class QuoteOut(serializers.Serializer):
    tariff = serializers.CharField()
    total = serializers.CharField(
        help_text=_("Yuan to the fen, as a string (the funds lines are included in it).")
    )
    power_factor = serializers.CharField(allow_null=True)
    pf_adjustment_percent = serializers.CharField(allow_null=True)
    tier_kwh_after = serializers.CharField()
    lines = ChargeLineOut(many=True)


def usage_from(data: dict) -> Usage:
    return Usage(
        period_start=data["period_start"],
        period_end=data["period_end"],
        kwh=dict(data["kwh"]),
        kvarh=data.get("kvarh"),
        max_demand_kw=data.get("max_demand_kw"),
        capacity_kva=data.get("capacity_kva"),
        tier_kwh_used=data.get("tier_kwh_used") or 0,
        active_from=data.get("active_from"),
        active_to=data.get("active_to"),
    )


class QuoteApi(GenericAPIView):
    parser_classes = [DecimalJSONParser]  # numbers stay Decimal, never float
    serializer_class = QuoteIn

    @extend_schema(
        request=QuoteIn,
        responses={200: QuoteOut},
        summary="Itemised charges for a usage description (nothing is posted)",
        examples=[
            OpenApiExample(
                "Residential annual tiers",
                value={
                    "tariff": "RES-TIER",
                    "period_start": "2026-10-01",
                    "period_end": "2026-10-31",
                    "kwh": {"total": "320"},
                    "tier_kwh_used": "2000",
                },
                request_only=True,
            )
        ],
    )
    def post(self, request):
        require(request.user, Cap.TARIFF_QUOTE)
        data = QuoteIn(data=request.data)
        data.is_valid(raise_exception=True)
        quote = tariff_quote(tariff_code=data.validated_data["tariff"], usage=usage_from(data.validated_data))
        return Response({"tariff": data.validated_data["tariff"], **quote_to_dict(quote)})
