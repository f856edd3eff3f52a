"""A prepaid residential account on a remote cost-control meter, a simple tariff and a
cost-control policy, for the rating, ledger and policy service tests."""

import itertools
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
from django.utils import timezone

from billing.models import AccountTariff, CostControlPolicy, Tariff, TariffTier, TariffVersion
from metering.models import CostControlMode, Meter, MeterInstallation, MeterStatus
from metering.services.readings import readings_ingest

SHANGHAI = ZoneInfo("Asia/Shanghai")
_addresses = itertools.count(1)
_batches = itertools.count(1)


def at(y, m, d, hh=10, mm=0):
    """An aware local (Asia/Shanghai) moment."""
    return datetime(y, m, d, hh, mm, tzinfo=SHANGHAI)


@pytest.fixture
def flat_tariff(db):
    tariff = Tariff.objects.create(code="T-FLAT", name="Flat 0.60", category="residential")
    TariffVersion.objects.create(tariff=tariff, effective_from="2020-01-01", price_flat=Decimal("0.600000"))
    return tariff


@pytest.fixture
def tier_tariff(db):
    """Annual blocks 2160 / 4200 kWh, 0.5283 + 0.05 / + 0.30 (NDRC 2011 shape)."""
    tariff = Tariff.objects.create(code="T-TIER", name="Residential tiers", category="residential")
    v = TariffVersion.objects.create(
        tariff=tariff, effective_from="2020-01-01", price_flat=Decimal("0.528300"), tier_basis="annual"
    )
    TariffTier.objects.create(version=v, number=1, upper_kwh=Decimal("2160"), price_adder=0)
    TariffTier.objects.create(version=v, number=2, upper_kwh=Decimal("4200"), price_adder=Decimal("0.05"))
    TariffTier.objects.create(version=v, number=3, upper_kwh=None, price_adder=Decimal("0.30"))
    return tariff


@pytest.fixture
def policy(db):
    """Warn at 30 / 10 yuan, trip below 0, close above 5; level-2 warning and 2 h grace first;
    no trips 22:00-07:00 or on public holidays."""
    return CostControlPolicy.objects.create(
        code="DEFAULT",
        name="Default",
        warning1_threshold=Decimal("30"),
        warning2_threshold=Decimal("10"),
        trip_threshold=Decimal("0"),
        close_threshold=Decimal("5"),
        required_warning=2,
        grace_hours=Decimal("2"),
        night_start=time(22, 0),
        night_end=time(7, 0),
        no_trip_on_holidays=True,
    )


@pytest.fixture
def make_prepaid(make_customer, policy):
    """make_prepaid(tariff) -> (account, meter): a prepaid customer with a remote cost-control
    meter installed 60 days ago, on ``tariff`` from the account's opening day."""

    def make(tariff, **customer_fields):
        customer = make_customer(**customer_fields)
        sp = customer.service_points.get()
        account = sp.account
        account.opened_on = date(2020, 1, 1)
        account.save(update_fields=["opened_on"])
        address = f"{920_000_000_000 + next(_addresses):012d}"
        meter = Meter.objects.create(
            asset_number=f"AS{address}",
            comm_address=address,
            manufacturer="威胜",
            model="DDZY102",
            status=MeterStatus.INSTALLED,
            cost_control_mode=CostControlMode.REMOTE,
            transformer_area=sp.transformer_area,
            service_point=sp,
        )
        MeterInstallation.objects.create(
            meter=meter,
            service_point=sp,
            transformer_area=sp.transformer_area,
            installed_at=timezone.now() - timedelta(days=60),
            initial_registers={"forward_total": "0"},
            reason="new connection",
        )
        AccountTariff.objects.create(account=account, tariff=tariff, effective_from=date(2020, 1, 1))
        return account, meter

    return make


def ingest(meter, day, total, *, source="external", **extra):
    """Store one daily reading through the real ingest path; returns the batch."""
    read_at = timezone.make_aware(datetime.combine(day, time.min)) + timedelta(minutes=15)
    reading = {
        "meter": meter.comm_address,
        "read_date": day.isoformat(),
        "read_at": read_at.isoformat(),
        "forward_total": str(total),
        **{k: str(v) for k, v in extra.items()},
    }
    batch = readings_ingest(source=source, external_id=f"t{next(_batches)}", readings=[reading])
    assert batch.accepted == 1, list(batch.rejections.values_list("reason", "message"))
    return batch
