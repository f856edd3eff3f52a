"""The quote interface: POST /api/v1/billing/quote and manage.py tariff_quote, with charges
worked out by hand."""

import json
from decimal import Decimal
from io import StringIO

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from rest_framework.test import APIClient

from billing.models import Tariff, TariffSurcharge, TariffTier, TariffVersion

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("fast_password_hashing", "english")]
URL = "/api/v1/billing/quote"


@pytest.fixture
def tariffs(db):
    t = Tariff.objects.create(code="Q-TIER", name="Residential tiers", category="residential")
    v = TariffVersion.objects.create(
        tariff=t, effective_from="2024-01-01", price_flat=Decimal("0.5283"), tier_basis="annual"
    )
    TariffTier.objects.create(version=v, number=1, upper_kwh=Decimal("2160"), price_adder=0)
    TariffTier.objects.create(version=v, number=2, upper_kwh=Decimal("4200"), price_adder=Decimal("0.05"))
    TariffTier.objects.create(version=v, number=3, upper_kwh=None, price_adder=Decimal("0.30"))
    TariffSurcharge.objects.create(version=v, code="NRL", name="农网还贷资金", price_per_kwh=Decimal("0.02"))
    li = Tariff.objects.create(code="Q-LI", name="Large industry", category="large_industry")
    TariffVersion.objects.create(
        tariff=li,
        effective_from="2024-01-01",
        price_flat=Decimal("0.60"),
        basic_basis="capacity",
        basic_price=Decimal("25"),
        pf_standard="0.90",
    )


def client_for(user):
    client = APIClient()
    client.force_authenticate(user)
    return client


def test_tiered_quote_with_funds_itemised_inside_the_price(staff, tariffs):
    body = {
        "tariff": "Q-TIER",
        "period_start": "2026-10-01",
        "period_end": "2026-10-31",
        "kwh": {"total": "320"},
        "tier_kwh_used": "2000",
    }
    response = client_for(staff["counter"]).post(URL, body, format="json")
    assert response.status_code == 200, response.content
    data = response.json()
    # 2000 used: 160 kWh left in block 1 -> 160 x 0.5283 = 84.528 -> 84.53;
    # 160 kWh in block 2 -> 160 x 0.5783 = 92.528 -> 92.53; total 177.06
    assert data["total"] == "177.06"
    energy = [(x["tier"], x["quantity"], x["amount"]) for x in data["lines"] if x["kind"] == "energy"]
    assert energy == [(1, "160.00", "84.53"), (2, "160.00", "92.53")]
    # of which 农网还贷资金 320 x 0.02 = 6.40, included, not added
    funds = [x for x in data["lines"] if x["kind"] == "surcharge_included"]
    assert [f["amount"] for f in funds] == ["6.40"]
    assert data["tier_kwh_after"] == "2320.00"


def test_two_part_quote_with_power_factor_surcharge(staff, tariffs):
    body = {
        "tariff": "Q-LI",
        "period_start": "2026-10-01",
        "period_end": "2026-10-31",
        "kwh": {"total": "100000"},
        "kvarh": "75000",
        "capacity_kva": "1000",
    }
    data = client_for(staff["auditor"]).post(URL, body, format="json").json()
    # basic 1000 kVA x 25 = 25000.00; energy 100000 x 0.60 = 60000.00
    # cos phi = 100000 / sqrt(100000^2 + 75000^2) = 100000 / 125000 = 0.80 -> standard 0.90: +5 %
    # adjustment (25000 + 60000) x 5 % = 4250.00; total 89250.00
    assert data["power_factor"] == "0.80" and Decimal(data["pf_adjustment_percent"]) == Decimal("5")
    assert {x["kind"]: x["amount"] for x in data["lines"]} == {
        "basic": "25000.00",
        "energy": "60000.00",
        "power_factor": "4250.00",
    }
    assert data["total"] == "89250.00"


def test_quote_errors_are_clear(staff, tariffs):
    client = client_for(staff["counter"])
    unknown = client.post(
        URL,
        {"tariff": "NOPE", "period_start": "2026-10-01", "period_end": "2026-10-31", "kwh": {"total": "1"}},
        format="json",
    )
    assert unknown.status_code == 404 and unknown.json()["code"] == "unknown_tariff"
    backwards = client.post(
        URL,
        {"tariff": "Q-TIER", "period_start": "2026-10-31", "period_end": "2026-10-01", "kwh": {"total": "1"}},
        format="json",
    )
    assert backwards.status_code == 400 and "period_end" in backwards.json()["errors"]
    negative = client.post(
        URL,
        {
            "tariff": "Q-TIER",
            "period_start": "2026-10-01",
            "period_end": "2026-10-31",
            "kwh": {"total": "-5"},
        },
        format="json",
    )
    assert negative.status_code == 400
    both = client.post(
        URL,
        {
            "tariff": "Q-TIER",
            "period_start": "2026-10-01",
            "period_end": "2026-10-31",
            "kwh": {"total": "5", "peak": "1"},
        },
        format="json",
    )
    assert both.status_code == 400
    no_capacity = client.post(
        URL,
        {
            "tariff": "Q-LI",
            "period_start": "2026-10-01",
            "period_end": "2026-10-31",
            "kwh": {"total": "5"},
            "kvarh": "1",
        },
        format="json",
    )
    assert no_capacity.status_code == 400


def test_quote_needs_a_signed_in_staff_member(tariffs):
    response = APIClient().post(URL, {"tariff": "Q-TIER"}, format="json")
    assert response.status_code in (401, 403)


def test_the_quote_is_in_the_openapi_schema(staff):
    schema = client_for(staff["admin"]).get("/api/schema/", {"format": "json"}).json()
    operation = schema["paths"]["/api/v1/billing/quote"]["post"]
    assert "requestBody" in operation and "200" in operation["responses"]


def test_tariff_quote_command_prints_the_same_figures(tariffs):
    out = StringIO()
    usage = {
        "period_start": "2026-10-01",
        "period_end": "2026-10-31",
        "kwh": {"total": "320"},
        "tier_kwh_used": "2000",
    }
    call_command("tariff_quote", "Q-TIER", json.dumps(usage), stdout=out)
    assert json.loads(out.getvalue())["total"] == "177.06"


def test_tariff_quote_command_fails_clearly(tariffs):
    with pytest.raises(CommandError, match="not valid JSON"):
        call_command("tariff_quote", "Q-TIER", "{oops")
    with pytest.raises(CommandError, match="NOPE"):
        call_command(
            "tariff_quote",
            "NOPE",
            '{"period_start": "2026-10-01", "period_end": "2026-10-31", "kwh": {"total": "1"}}',
        )


def test_ledger_check_command_reports_a_tampered_cache(tariffs, make_customer):
    from billing.models import AccountBilling
    from billing.services.ledger import ledger_post

    account = make_customer().accounts.get()
    ledger_post(
        account_id=account.pk,
        kind="payment",
        amount="10.00",
        source="payment",
        idempotency_key="k1",
        description="x",
    )
    call_command("ledger_check", stdout=StringIO())
    AccountBilling.objects.filter(pk=account.pk).update(balance=Decimal("11.00"))
    out = StringIO()
    with pytest.raises(SystemExit) as exit_info:
        call_command("ledger_check", stdout=out, stderr=StringIO())
    assert exit_info.value.code == 1
    assert account.number in out.getvalue() and "difference 1.00" in out.getvalue()
