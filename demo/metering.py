"""Demo metering: terminals, a meter on every service point and every transformer area,
and a history of daily readings stored through the real ingest path."""

import random
from datetime import date, datetime, time, timedelta
from decimal import Decimal

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from core.models import TransformerArea
from customers.models import CustomerCategory, ServicePoint, SettlementMode
from metering.models import (
    CostControlMode,
    Meter,
    MeterInstallation,
    MeterRole,
    MeterStatus,
    ReadingSource,
    Terminal,
)
from metering.partitions import ensure_partitions
from metering.services.collection import collection_stats_refresh
from metering.services.readings import readings_ingest

BATCH = 5000
GATEWAY_PORTS = 4  # the simulator serves the fleet on this many consecutive ports
LOCAL_SHARE = 0.15  # prepaid customers still on local (IC-card) cost-control meters
MANUFACTURERS = (
    ("威胜集团", "DDZY1980C-Z"),
    ("林洋能源", "DDZY71-Z"),
    ("华立科技", "DDZY285-Z"),
    ("炬华科技", "DTZY1296"),
    ("三星医疗", "DDZY1689-Z"),
)
# Mean kWh per day by category (with contracted capacity as a scale for non-residential).
DAILY_KWH = {
    CustomerCategory.RESIDENTIAL: (Decimal("6"), Decimal("14")),
    CustomerCategory.AGRICULTURE: (Decimal("20"), Decimal("120")),
    CustomerCategory.COMMERCIAL: (Decimal("40"), Decimal("400")),
    CustomerCategory.LARGE_INDUSTRY: (Decimal("2000"), Decimal("12000")),
}
TOU_SHARES = (Decimal("0.10"), Decimal("0.30"), Decimal("0.35"))  # sharp, peak, flat; valley = rest


def _endpoint(index: int) -> str:
    host, port = settings.METERING_DEFAULT_ENDPOINT.rsplit(":", 1)
    return f"{host}:{int(port) + index % GATEWAY_PORTS}"


@transaction.atomic
def build_meters(rng: random.Random) -> int:
    areas = list(TransformerArea.objects.order_by("code"))
    terminals = Terminal.objects.bulk_create(
        [
            Terminal(
                address=f"T{i + 1:07d}",
                endpoint=_endpoint(i),
                transformer_area=area,
                channel=rng.choices(("gprs", "carrier", "rf"), (0.5, 0.35, 0.15))[0],
            )
            for i, area in enumerate(areas)
        ],
        batch_size=BATCH,
    )
    terminal_of = {t.transformer_area_id: t for t in terminals}
    points = list(
        ServicePoint.objects.select_related("account", "customer").order_by("pk").iterator(chunk_size=BATCH)
    )
    meters, plans = [], []
    serial = 0
    for sp in points:
        serial += 1
        if sp.account.settlement_mode == SettlementMode.PREPAID:
            mode = CostControlMode.LOCAL if rng.random() < LOCAL_SHARE else CostControlMode.REMOTE
        else:
            mode = CostControlMode.NONE
        maker, model = rng.choice(MANUFACTURERS)
        three_phase = sp.customer.category != CustomerCategory.RESIDENTIAL
        meters.append(
            Meter(
                asset_number=f"ZJ{serial:010d}",
                comm_address=f"31{serial:010d}",
                manufacturer=maker,
                model=model.replace("DDZY", "DTZY") if three_phase else model,
                phases=3 if three_phase else 1,
                cost_control_mode=mode,
                firmware_version=rng.choice(("V2.1.3", "V2.2.0", "V3.0.1")),
                status=MeterStatus.INSTALLED,
                interval_metering=sp.customer.category == CustomerCategory.LARGE_INDUSTRY,
                terminal=terminal_of.get(sp.transformer_area_id),
                service_point=sp,
                transformer_area_id=sp.transformer_area_id,
            )
        )
        plans.append(sp.account.opened_on)
    for area in areas:
        serial += 1
        meters.append(
            Meter(
                asset_number=f"ZJ{serial:010d}",
                comm_address=f"31{serial:010d}",
                manufacturer="威胜集团",
                model="DTZ341",
                phases=3,
                role=MeterRole.AREA,
                cost_control_mode=CostControlMode.NONE,
                status=MeterStatus.INSTALLED,
                terminal=terminal_of[area.pk],
                transformer_area=area,
            )
        )
        plans.append(date(2015, 1, 1))
    created = Meter.objects.bulk_create(meters, batch_size=BATCH)
    tz = timezone.get_current_timezone()
    MeterInstallation.objects.bulk_create(
        [
            MeterInstallation(
                meter=m,
                service_point_id=m.service_point_id,
                transformer_area_id=m.transformer_area_id,
                installed_at=datetime.combine(opened, time(10), tz),
                initial_registers={"forward_total": "0.00"},
                reason="新装",
            )
            for m, opened in zip(created, plans, strict=True)
        ],
        batch_size=BATCH,
    )
    return len(created)


def build_history(rng: random.Random, *, days: int, today: date, success_rate: float = 0.97) -> int:
    """``days`` daily readings per customer meter up to yesterday, plus the area meters'
    (their customers' sum plus 3-8% line loss). A few reads are missing, as in life."""
    first = today - timedelta(days=days)  # up to yesterday: today is for the live collection
    ensure_partitions(first_month=first.replace(day=1), last_month=today.replace(day=1))
    meters = list(
        Meter.objects.filter(status=MeterStatus.INSTALLED)
        .values_list(
            "pk",
            "role",
            "transformer_area_id",
            "service_point__customer__category",
            "service_point__customer__contracted_capacity_kva",
            "service_point__ct_ratio",
            "service_point__pt_ratio",
            "service_point__account__opened_on",
        )
        .order_by("pk")
    )
    tz = timezone.get_current_timezone()
    area_totals: dict[tuple[int, date], Decimal] = {}
    registers: dict[int, Decimal] = {}
    stored = 0
    batch_no = 0
    pending = []

    def flush():
        nonlocal stored, batch_no, pending
        if pending:
            batch_no += 1
            batch = readings_ingest(
                source=ReadingSource.COLLECTED, external_id=f"demo-history-{batch_no}", readings=pending
            )
            stored += batch.accepted
            pending = []

    customer_meters = [m for m in meters if m[1] == MeterRole.CUSTOMER]
    for pk, _role, area_id, category, capacity, ct_ratio, pt_ratio, opened_on in customer_meters:
        # A CT/PT-connected meter registers primary energy divided by its multiplier.
        multiplier = (ct_ratio or 1) * (pt_ratio or 1)
        low, high = DAILY_KWH[category]
        if category != CustomerCategory.RESIDENTIAL:
            scale = max(Decimal("0.2"), min(Decimal("1"), (capacity or Decimal(50)) / Decimal(2000)))
            high = max(low * 2, high * scale)
        mean = low + (high - low) * Decimal(str(round(rng.random(), 3)))
        # The register started at 0 when the meter was installed (account opening): what it
        # shows at the start of the history is what the customer used since, at about this rate.
        since_opened = max(0, (first - opened_on).days)
        total = (mean * since_opened * Decimal("0.9") / multiplier).quantize(Decimal("0.01")) % Decimal(
            1_000_000
        )
        for offset in range(days):
            day = first + timedelta(days=offset)
            if day <= opened_on:
                continue  # not connected yet: the register stays at its installation value
            if offset:
                weekend = (
                    Decimal("0.7") if category == CustomerCategory.COMMERCIAL and day.weekday() >= 5 else 1
                )
                used = (mean * weekend * Decimal(str(round(rng.uniform(0.6, 1.4), 3)))).quantize(
                    Decimal("0.01")
                )
                total += (used / multiplier).quantize(Decimal("0.01"))
                if category != CustomerCategory.LARGE_INDUSTRY:  # on dedicated transformers
                    area_totals[(area_id, day)] = area_totals.get((area_id, day), Decimal(0)) + used
            if rng.random() > success_rate and offset not in (0, days - 1):
                continue  # a read that failed
            sharp, peak, flat = ((total * s).quantize(Decimal("0.01")) for s in TOU_SHARES)
            pending.append(
                {
                    "meter_id": pk,
                    "read_date": day,
                    "read_at": datetime.combine(day, time(1, rng.randrange(0, 59)), tz),
                    "forward_total": total,
                    "forward_sharp": sharp,
                    "forward_peak": peak,
                    "forward_flat": flat,
                    "forward_valley": total - sharp - peak - flat,
                    "reactive_total": (total * Decimal("0.35")).quantize(Decimal("0.01")),
                }
            )
            if len(pending) >= 50_000:
                flush()
        registers[pk] = total
    for pk, role, area_id, *_rest in meters:
        if role != MeterRole.AREA:
            continue
        total = Decimal(rng.randrange(10_000, 90_000))
        for offset in range(days):
            day = first + timedelta(days=offset)
            loss = Decimal(str(round(rng.uniform(1.03, 1.08), 3)))
            total += (area_totals.get((area_id, day), Decimal(0)) * loss).quantize(Decimal("0.01"))
            pending.append(
                {
                    "meter_id": pk,
                    "read_date": day,
                    "read_at": datetime.combine(day, time(0, 30), tz),
                    "forward_total": total,
                }
            )
            if len(pending) >= 50_000:
                flush()
    flush()
    # The collection figures of the history, as the daily runs would have left them.
    for offset in range(days):
        collection_stats_refresh(day=first + timedelta(days=offset))
    return stored
