"""Billing admin: every model registered, the read-only ones read-only, tariff versions checked
as a whole before they are saved, and tariff tables exported and imported by natural keys."""

from datetime import time
from decimal import Decimal

import pytest
import tablib
from django.contrib import admin

from billing import models as bm
from billing.admin import (
    TariffResource,
    TariffSurchargeResource,
    TariffTierResource,
    TariffVersionResource,
    TouPeriodResource,
)

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("fast_password_hashing", "english")]

BILLING_MODELS = [
    bm.Tariff,
    bm.TariffVersion,
    bm.TariffTier,
    bm.TariffSurcharge,
    bm.TouPeriod,
    bm.PowerFactorRow,
    bm.AccountTariff,
    bm.CostControlPolicy,
    bm.NoTripEvent,
    bm.AccountBilling,
    bm.TierAccumulator,
    bm.RatingCursor,
    bm.LedgerEntry,
    bm.PolicyDecision,
    bm.AdjustmentRequest,
]


@pytest.fixture
def admin_client(client, staff):
    client.force_login(staff["admin"])
    return client


def _admin_url(model, view="changelist", *args):
    from django.urls import reverse

    return reverse(f"admin:billing_{model._meta.model_name}_{view}", args=args)


def test_every_billing_model_is_registered_and_lists(admin_client, prepaid_account, post_entry):
    post_entry(prepaid_account, "payment", "10.00")
    for model in BILLING_MODELS:
        assert admin.site.is_registered(model), model
        assert admin_client.get(_admin_url(model)).status_code == 200, model


@pytest.mark.parametrize(
    "model", [bm.LedgerEntry, bm.PolicyDecision, bm.PowerFactorRow, bm.AdjustmentRequest]
)
def test_service_written_models_are_read_only(admin_client, rf, staff, model):
    model_admin = admin.site._registry[model]
    request = rf.get("/")
    request.user = staff["admin"]
    assert not model_admin.has_add_permission(request)
    assert not model_admin.has_change_permission(request)
    assert not model_admin.has_delete_permission(request)
    assert admin_client.get(_admin_url(model, "add")).status_code == 403


def test_power_factor_table_is_viewable(admin_client):
    row = bm.PowerFactorRow.objects.order_by("pk").first()
    assert row is not None  # loaded by migration 0002
    response = admin_client.get(_admin_url(bm.PowerFactorRow, "change", row.pk))
    assert response.status_code == 200
    assert response.context["has_change_permission"] is False


def test_account_billing_admin_saves_only_the_terms(
    admin_client, prepaid_account, post_entry, cost_control_policy
):
    post_entry(prepaid_account, "payment", "40.00")
    url = _admin_url(bm.AccountBilling, "change", prepaid_account.pk)
    assert admin_client.get(url).status_code == 200
    # a payment lands after the page was read; the admin save must not overwrite the balance
    post_entry(prepaid_account, "payment", "2.00")
    response = admin_client.post(url, {"credit_allowance": "12.00", "policy": cost_control_policy.pk})
    assert response.status_code == 302
    state = bm.AccountBilling.objects.get(pk=prepaid_account.pk)
    assert state.credit_allowance == Decimal("12.00") and state.policy == cost_control_policy
    assert state.balance == Decimal("42.00")  # 40.00 + 2.00


# --- tariff version validation --------------------------------------------------------------


def _version_post(version, *, tiers=None, surcharges=None, periods=None, **fields):
    """The change form of ``version`` as the admin posts it, with its inlines."""
    data = {
        "tariff": version.tariff_id,
        "effective_from": version.effective_from.isoformat(),
        "effective_to": version.effective_to.isoformat() if version.effective_to else "",
        "price_flat": str(version.price_flat),
        "price_sharp": str(version.price_sharp or ""),
        "price_peak": str(version.price_peak or ""),
        "price_valley": str(version.price_valley or ""),
        "tier_basis": version.tier_basis,
        "basic_basis": version.basic_basis,
        "basic_price": str(version.basic_price),
        "pf_standard": version.pf_standard,
        "note": version.note,
    }
    data.update(fields)
    existing = {
        "tiers": list(version.tiers.all()) if version.pk else [],
        "surcharges": list(version.surcharges.all()) if version.pk else [],
        "tou_periods": list(version.tou_periods.all()) if version.pk else [],
    }
    rows = {
        "tiers": tiers
        if tiers is not None
        else [
            {"number": t.number, "upper_kwh": t.upper_kwh or "", "price_adder": t.price_adder}
            for t in existing["tiers"]
        ],
        "surcharges": surcharges
        if surcharges is not None
        else [
            {"code": s.code, "name": s.name, "price_per_kwh": s.price_per_kwh} for s in existing["surcharges"]
        ],
        "tou_periods": periods
        if periods is not None
        else [
            {"months": p.months, "start": f"{p.start:%H:%M}", "end": f"{p.end:%H:%M}", "band": p.band}
            for p in existing["tou_periods"]
        ],
    }
    for prefix, values in rows.items():
        old = existing[prefix]
        data[f"{prefix}-TOTAL_FORMS"] = str(max(len(values), len(old)))
        data[f"{prefix}-INITIAL_FORMS"] = str(len(old))
        data[f"{prefix}-MIN_NUM_FORMS"] = "0"
        data[f"{prefix}-MAX_NUM_FORMS"] = "1000"
        for i in range(max(len(values), len(old))):
            if i < len(old):
                data[f"{prefix}-{i}-id"] = str(old[i].pk)
            if version.pk:
                data[f"{prefix}-{i}-version"] = str(version.pk)
            if i < len(values):
                data.update({f"{prefix}-{i}-{k}": str(v) for k, v in values[i].items()})
            else:
                data[f"{prefix}-{i}-DELETE"] = "on"
    return data


def _errors(response) -> str:
    assert response.status_code == 200, "the form was expected to be rejected"
    return response.content.decode()


def test_a_valid_change_of_a_version_is_saved(admin_client, tariff):
    version = tariff.versions.get()
    url = _admin_url(bm.TariffVersion, "change", version.pk)
    assert admin_client.get(url).status_code == 200
    response = admin_client.post(url, _version_post(version, price_peak="0.610000"))
    assert response.status_code == 302, response.content.decode()[:2000]
    version.refresh_from_db()
    assert version.price_peak == Decimal("0.610000")


def test_overlapping_tou_periods_are_rejected(admin_client, tariff):
    version = tariff.versions.get()
    periods = [
        {"months": "1,2,3,4,5,6,7,8,9,10,11,12", "start": "08:00", "end": "22:00", "band": "peak"},
        {"months": "1,2,3,4,5,6,7,8,9,10,11,12", "start": "21:00", "end": "08:00", "band": "valley"},
    ]
    response = admin_client.post(
        _admin_url(bm.TariffVersion, "change", version.pk), _version_post(version, periods=periods)
    )
    body = _errors(response)
    # 21:00-22:00 lies in both periods: the half hours 21:00 and 21:30, in every month
    assert "Month 1: periods overlap at 21:00, 21:30." in body
    assert sorted(f"{p.start:%H:%M}" for p in version.tou_periods.all()) == ["08:00", "22:00"]  # unchanged


def test_a_gap_in_the_day_is_rejected(admin_client, tariff):
    version = tariff.versions.get()
    periods = [
        {"months": "1,2,3,4,5,6,7,8,9,10,11,12", "start": "08:00", "end": "22:00", "band": "peak"},
        {"months": "1,2,3,4,5,6,7,8,9,10,11,12", "start": "22:30", "end": "08:00", "band": "valley"},
    ]
    response = admin_client.post(
        _admin_url(bm.TariffVersion, "change", version.pk), _version_post(version, periods=periods)
    )
    assert "Month 12: no period covers 22:00." in _errors(response)


def test_unordered_tiers_are_rejected(admin_client, tariff):
    version = tariff.versions.get()
    tiers = [
        {"number": 1, "upper_kwh": "4200", "price_adder": "0"},
        {"number": 2, "upper_kwh": "2160", "price_adder": "0.05"},
        {"number": 3, "upper_kwh": "", "price_adder": "0.30"},
    ]
    response = admin_client.post(
        _admin_url(bm.TariffVersion, "change", version.pk), _version_post(version, tiers=tiers)
    )
    assert "Block upper bounds must be positive and strictly ascending." in _errors(response)
    assert list(version.tiers.values_list("upper_kwh", flat=True)) == [Decimal("2160"), Decimal("4200"), None]


def test_only_the_last_tier_may_be_unbounded(admin_client, tariff):
    version = tariff.versions.get()
    tiers = [
        {"number": 1, "upper_kwh": "", "price_adder": "0"},
        {"number": 2, "upper_kwh": "4200", "price_adder": "0.05"},
    ]
    response = admin_client.post(
        _admin_url(bm.TariffVersion, "change", version.pk), _version_post(version, tiers=tiers)
    )
    body = _errors(response)
    assert "The last block must have no upper bound." in body
    assert "Only the last block may be without an upper bound." in body


def test_a_band_used_without_a_price_is_rejected(admin_client, tariff):
    version = tariff.versions.get()
    response = admin_client.post(
        _admin_url(bm.TariffVersion, "change", version.pk), _version_post(version, price_valley="")
    )
    assert "The valley band is used by the time-of-use periods but has no price." in _errors(response)


def test_overlapping_versions_of_a_tariff_are_rejected(admin_client, tariff):
    # the existing version runs from 2020-01-01 with no end: a version from 2026-07-01 overlaps it
    new = bm.TariffVersion(
        tariff=tariff, effective_from=tariff.versions.get().effective_from, price_flat=Decimal("0.58")
    )
    data = _version_post(new, effective_from="2026-07-01", periods=[], tiers=[], surcharges=[])
    response = admin_client.post(_admin_url(bm.TariffVersion, "add"), data)
    assert "The dates overlap the version from 2020-01-01" in _errors(response)
    assert tariff.versions.count() == 1

    # once the old version ends on 2026-07-01, the new one is accepted
    old = tariff.versions.get()
    response = admin_client.post(
        _admin_url(bm.TariffVersion, "change", old.pk), _version_post(old, effective_to="2026-07-01")
    )
    assert response.status_code == 302
    response = admin_client.post(_admin_url(bm.TariffVersion, "add"), data)
    assert response.status_code == 302, response.content.decode()[:3000]
    assert [str(v.effective_from) for v in tariff.versions.order_by("effective_from")] == [
        "2020-01-01",
        "2026-07-01",
    ]


def test_end_date_before_start_is_rejected(admin_client, tariff):
    version = tariff.versions.get()
    response = admin_client.post(
        _admin_url(bm.TariffVersion, "change", version.pk), _version_post(version, effective_to="2019-12-31")
    )
    assert response.status_code == 200
    version.refresh_from_db()
    assert version.effective_to is None


# --- import / export ------------------------------------------------------------------------

RESOURCES = [
    TariffResource,
    TariffVersionResource,
    TariffTierResource,
    TariffSurchargeResource,
    TouPeriodResource,
]


def _snapshot():
    return {
        "tariffs": list(bm.Tariff.objects.values_list("code", "name", "category", "holiday_band", "active")),
        "versions": list(
            bm.TariffVersion.objects.values_list(
                "tariff__code",
                "effective_from",
                "effective_to",
                "price_flat",
                "price_peak",
                "price_valley",
                "tier_basis",
            )
        ),
        "tiers": list(
            bm.TariffTier.objects.order_by("number").values_list(
                "version__tariff__code", "version__effective_from", "number", "upper_kwh", "price_adder"
            )
        ),
        "surcharges": list(
            bm.TariffSurcharge.objects.values_list("version__effective_from", "code", "name", "price_per_kwh")
        ),
        "periods": list(
            bm.TouPeriod.objects.order_by("start").values_list(
                "version__effective_from", "months", "start", "end", "band"
            )
        ),
    }


def test_export_then_import_into_an_empty_tariff_table(tariff):
    before = _snapshot()
    exported = {resource: resource().export().csv for resource in RESOURCES}
    assert "RES-TOU,2020-01-01,1,2160" in exported[TariffTierResource].replace(".00", "")
    assert exported[TouPeriodResource].splitlines()[0] == "tariff,effective_from,months,start,end,band"

    bm.TariffVersion.objects.all().delete()  # blocks, funds and periods go with their versions
    bm.Tariff.objects.all().delete()
    assert not bm.TariffTier.objects.exists()

    for resource in RESOURCES:  # tariffs, versions, then their parts
        result = resource().import_data(
            tablib.Dataset().load(exported[resource], format="csv"), dry_run=False
        )
        assert not result.has_errors() and not result.has_validation_errors(), resource
    assert _snapshot() == before


def test_import_of_a_changed_price_updates_the_version_in_place(tariff):
    version = tariff.versions.get()
    data = TariffVersionResource().export()
    data = tablib.Dataset().load(data.csv.replace("0.600000", "0.615000"), format="csv")
    result = TariffVersionResource().import_data(data, dry_run=False)
    assert not result.has_errors()
    assert result.totals["update"] == 1 and result.totals["new"] == 0
    version.refresh_from_db()
    assert version.price_peak == Decimal("0.615000")
    assert bm.TariffVersion.objects.count() == 1


def test_an_import_that_breaks_a_version_is_rolled_back(tariff):
    csv = (
        "tariff,effective_from,months,start,end,band\n"
        'RES-TOU,2020-01-01,"1,2,3,4,5,6,7,8,9,10,11,12",21:00:00,23:00:00,valley\n'
    )
    result = TouPeriodResource().import_data(tablib.Dataset().load(csv, format="csv"), dry_run=False)
    assert result.has_errors()
    messages = " ".join(str(e.error) for e in result.base_errors)
    # 21:00-22:00 was peak already; 22:00-23:00 valley already
    assert "periods overlap at 21:00, 21:30, 22:00, 22:30" in messages
    assert bm.TouPeriod.objects.count() == 2 and not bm.TouPeriod.objects.filter(start=time(21, 0)).exists()


def test_an_import_naming_an_unknown_version_fails(tariff):
    csv = "tariff,effective_from,number,upper_kwh,price_adder\nRES-TOU,2019-01-01,1,100,0\n"
    result = TariffTierResource().import_data(tablib.Dataset().load(csv, format="csv"), dry_run=False)
    assert result.has_errors() or result.has_validation_errors()
    assert bm.TariffTier.objects.count() == 3


def test_admin_import_and_export_pages_render(admin_client, tariff):
    for model in (bm.Tariff, bm.TariffVersion, bm.TariffTier, bm.TariffSurcharge, bm.TouPeriod):
        assert admin_client.get(_admin_url(model, "import")).status_code == 200, model
        assert admin_client.get(_admin_url(model, "export")).status_code == 200, model


# --- editable terms -------------------------------------------------------------------------


def test_no_trip_event_records_who_declared_it(admin_client, staff):
    response = admin_client.post(
        _admin_url(bm.NoTripEvent, "add"),
        {
            "name": "高考保电",
            "starts_at_0": "2026-06-07",
            "starts_at_1": "00:00:00",
            "ends_at_0": "2026-06-10",
            "ends_at_1": "00:00:00",
        },
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    assert bm.NoTripEvent.objects.get().created_by == staff["admin"]


def test_cost_control_policy_thresholds_must_be_ordered(admin_client):
    data = {
        "code": "BAD",
        "name": "阈值颠倒",
        "category": "",
        "importance_grade": "",
        "warning1_threshold": "20.00",
        "warning2_threshold": "50.00",  # above warning 1: refused by the database rule
        "trip_threshold": "0.00",
        "close_threshold": "10.00",
        "credit_allowance": "0",
        "required_warning": "2",
        "grace_hours": "24",
        "night_start": "20:00",
        "night_end": "08:00",
        "no_trip_on_holidays": "on",
    }
    response = admin_client.post(_admin_url(bm.CostControlPolicy, "add"), data)
    assert response.status_code == 200 and not bm.CostControlPolicy.objects.exists()
    data["warning2_threshold"] = "15.00"
    assert admin_client.post(_admin_url(bm.CostControlPolicy, "add"), data).status_code == 302
    assert bm.CostControlPolicy.objects.get().code == "BAD"
