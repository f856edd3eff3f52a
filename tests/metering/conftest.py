"""Meters on service points for the reading tests: ``install_meter`` creates an installed
meter and its installation record, as a meter exchange or a new connection leaves them."""

import itertools
from datetime import datetime, time, timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from customers.models import ServicePoint
from metering.models import Meter, MeterInstallation, MeterStatus

_addresses = itertools.count(1)
_sp_numbers = itertools.count(1)


def next_address() -> str:
    return f"{910_000_000_000 + next(_addresses):012d}"


def local_midnight(day):
    return timezone.make_aware(datetime.combine(day, time.min))


def reading(meter, day, total, **extra) -> dict:
    """A reading as an external system would send it: strings, read 15 minutes after the
    freeze."""
    data = {
        "meter": meter.comm_address if isinstance(meter, Meter) else meter,
        "read_date": day.isoformat(),
        "read_at": (local_midnight(day) + timedelta(minutes=15)).isoformat(),
        "forward_total": str(total),
    }
    data.update({k: (str(v) if isinstance(v, Decimal) else v) for k, v in extra.items()})
    return data


@pytest.fixture
def install_meter(db):
    def install(service_point, *, address=None, installed_at, initial_total=Decimal("0"), **meter_fields):
        address = address or next_address()
        meter = Meter.objects.create(
            asset_number=f"AS{address}",
            comm_address=address,
            manufacturer="威胜",
            model="DDZY102",
            status=MeterStatus.INSTALLED,
            transformer_area=service_point.transformer_area,
            service_point=service_point,
            **meter_fields,
        )
        MeterInstallation.objects.create(
            meter=meter,
            service_point=service_point,
            transformer_area=service_point.transformer_area,
            installed_at=installed_at,
            initial_registers={"forward_total": str(initial_total)},
            reason="new connection",
        )
        return meter

    return install


@pytest.fixture
def customer(make_customer):
    """A residential customer with 8 kVA contracted: at most 8 × 24 × 1.2 = 230.40 kWh a day."""
    return make_customer(contracted_capacity_kva=Decimal("8"))


@pytest.fixture
def service_point(customer):
    return customer.service_points.get()


@pytest.fixture
def make_service_point(customer):
    """More service points of the same customer, made directly (fast) for bulk tests."""

    def make(*, ct_ratio=1, pt_ratio=1):
        first = customer.service_points.order_by("pk").first()
        return ServicePoint.objects.create(
            number=f"79{next(_sp_numbers):010d}",
            customer=customer,
            account=first.account,
            address="青溪县城关镇解放路12号",
            transformer_area=first.transformer_area,
            ct_ratio=ct_ratio,
            pt_ratio=pt_ratio,
        )

    return make


@pytest.fixture
def today():
    return timezone.localdate()


@pytest.fixture
def meter(install_meter, service_point, today):
    """Installed 60 days ago with its register at 100.00 kWh."""
    return install_meter(
        service_point,
        installed_at=local_midnight(today - timedelta(days=60)) + timedelta(hours=10),
        initial_total=Decimal("100.00"),
    )
