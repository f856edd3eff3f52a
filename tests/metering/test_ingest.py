"""readings_ingest: the one path for daily readings, on real PostgreSQL.

The meter fixture belongs to an 8 kVA residential customer (CT = PT = 1), so the most its
register can advance is 8 kVA × 24 h × 1.2 = 230.40 kWh a day. It was installed 60 days
ago at 10:00 with its register at 100.00 kWh.
"""

import itertools
import json
import threading
from datetime import timedelta
from decimal import Decimal
from io import StringIO

import pytest
from django.core.management import call_command
from django.db import connection, transaction
from django.db.models import F
from django.utils import timezone

from core.exceptions import Conflict, ValidationError
from metering import hooks
from metering.models import (
    DailyReading,
    Meter,
    MeterInstallation,
    MeterStatus,
    ReadingBatch,
    ReadingQuality,
    ReadingSource,
    RejectedReading,
    RejectionReason,
)
from metering.services import reading_lane
from metering.services import readings as readings_module
from metering.services.readings import readings_ingest
from tests.metering.conftest import local_midnight, next_address, reading

pytestmark = [pytest.mark.usefixtures("fast_password_hashing", "english")]

_batch_ids = itertools.count(1)

# The set-based lane, chunking and concurrent deliveries are PostgreSQL's; the portable
# (SQLite) path runs the rest of this module.
postgres_only = pytest.mark.skipif(
    connection.vendor != "postgresql", reason="PostgreSQL path (lane, chunks, concurrent deliveries)"
)


def ingest(readings, *, batch_id=None, source=ReadingSource.EXTERNAL):
    return readings_ingest(
        source=source, external_id=batch_id or f"test-{next(_batch_ids)}", readings=readings
    )


def stored(meter, day):
    return DailyReading.objects.get(meter=meter, read_date=day)


def only_rejection(batch) -> RejectedReading:
    assert batch.rejected == 1, list(batch.rejections.values("reason", "message"))
    return batch.rejections.get()


# --- accepted ----------------------------------------------------------------------------


@pytest.mark.django_db
def test_first_reading_is_measured_from_the_installation_and_stored(meter, service_point, today):
    day = today - timedelta(days=3)
    payload = reading(
        meter,
        day,
        "105.50",
        forward_sharp="1.00",
        forward_peak="2.00",
        forward_flat="1.50",
        forward_valley="101.00",
        reactive_total="3.2",
        max_demand_kw="1.2345",
        remaining_balance="-12.5",
    )
    batch = ingest([payload])

    assert (batch.accepted, batch.duplicates, batch.rejected, batch.flagged) == (1, 0, 0, 0)
    assert batch.completed_at is not None and batch.first_delivery is True
    row = stored(meter, day)
    assert row.forward_total == Decimal("105.50")
    assert row.forward_valley == Decimal("101.00")
    assert row.reactive_total == Decimal("3.20")
    assert row.max_demand_kw == Decimal("1.2345")
    assert row.remaining_balance == Decimal("-12.50")
    assert row.quality == ReadingQuality.VALID  # a new connection, not an exchange
    assert row.service_point_id == service_point.pk
    assert row.source == ReadingSource.EXTERNAL and row.batch_id == batch.pk
    assert row.read_at == local_midnight(day) + timedelta(minutes=15)


@pytest.mark.django_db
def test_meter_id_datetime_and_decimal_input_as_collection_passes_it(meter, today):
    day = today - timedelta(days=1)
    batch = ingest(
        [
            {
                "meter_id": meter.pk,
                "read_date": day,
                "read_at": timezone.now(),
                "forward_total": Decimal("120"),
            }
        ],
        source=ReadingSource.COLLECTED,
    )
    assert batch.accepted == 1
    assert stored(meter, day).source == ReadingSource.COLLECTED


# --- one test per rejection reason, with the input kept ------------------------------------


@pytest.mark.django_db
def test_unknown_meter_is_rejected_and_kept(meter, today):
    payload = reading("999999999999", today - timedelta(days=1), "10.00", note_from_sender="x")
    batch = ingest([reading(meter, today - timedelta(days=1), "110.00"), payload])

    assert (batch.accepted, batch.rejected) == (1, 1)
    rejection = only_rejection(batch)
    assert rejection.reason == RejectionReason.UNKNOWN_METER
    assert rejection.payload == payload
    assert rejection.meter_address == "999999999999" and rejection.meter is None
    assert rejection.position == 1
    assert rejection.read_date == today - timedelta(days=1)
    assert "999999999999" in rejection.message


@pytest.mark.django_db
def test_meter_in_stock_is_not_installed(service_point, today):
    in_stock = Meter.objects.create(
        asset_number="AS-STOCK",
        comm_address=next_address(),
        manufacturer="x",
        model="y",
        status=MeterStatus.IN_STOCK,
    )
    payload = reading(in_stock, today - timedelta(days=1), "5.00")
    rejection = only_rejection(ingest([payload]))
    assert rejection.reason == RejectionReason.METER_NOT_INSTALLED
    assert rejection.meter == in_stock
    assert rejection.payload == payload
    assert "not installed" in rejection.message


@pytest.mark.django_db
def test_reading_from_before_the_installation_is_rejected(meter, today):
    # Installed 60 days ago at 10:00: that day's 00:00 freeze was before the meter was there.
    payload = reading(meter, today - timedelta(days=60), "100.00")
    rejection = only_rejection(ingest([payload]))
    assert rejection.reason == RejectionReason.METER_NOT_INSTALLED
    assert "was not installed on" in rejection.message
    assert ingest([reading(meter, today - timedelta(days=59), "100.00")]).accepted == 1


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        ({"forward_total": None}, "forward_total is missing"),
        ({"forward_total": "-1.00"}, "forward_total is negative"),
        ({"forward_total": "12,5"}, "forward_total is not a number"),
        ({"forward_total": "NaN"}, "forward_total is not a number"),
        ({"forward_total": 12.5}, "forward_total is not a number"),  # float is never accepted
        ({"forward_total": "12345678901.00"}, "too large"),
        ({"forward_peak": "abc"}, "forward_peak is not a number"),
        ({"max_demand_kw": "-2"}, "max_demand_kw is out of range"),
        ({"read_date": "2026-13-01"}, "read_date 2026-13-01 is not a date"),
        ({"read_date": None}, "read_date is missing"),
        ({"read_at": "yesterday"}, "read_at yesterday is not an ISO 8601"),
        ({"read_at": "2026-01-01T00:15:00"}, "no time zone offset"),
        ({"meter": "12345"}, "is not 12 decimal digits"),
        ({"meter": None}, "names no meter"),
        ({"quality": "excellent"}, "quality may only be"),
    ],
)
def test_malformed_readings_are_rejected_with_the_input_kept(meter, today, change, fragment):
    payload = reading(meter, today - timedelta(days=2), "110.00")
    payload.update(change)
    rejection = only_rejection(ingest([payload]))
    assert rejection.reason == RejectionReason.MALFORMED
    assert fragment in rejection.message
    expected = {k: (str(v) if isinstance(v, float) else v) for k, v in payload.items()}
    assert rejection.payload == expected


@pytest.mark.django_db
def test_a_reading_that_is_not_an_object_is_rejected(meter):
    rejection = only_rejection(ingest(["meter 1, 12.00"]))
    assert rejection.reason == RejectionReason.MALFORMED
    assert rejection.payload == "meter 1, 12.00"


@pytest.mark.django_db
def test_future_timestamps_are_rejected(meter, today):
    in_an_hour = reading(meter, today, "110.00", read_at=(timezone.now() + timedelta(hours=1)).isoformat())
    tomorrow = reading(meter, today + timedelta(days=1), "111.00")
    tomorrow["read_at"] = timezone.now().isoformat()
    read_before_freeze = reading(
        meter,
        today - timedelta(days=1),
        "109.00",
        read_at=(local_midnight(today - timedelta(days=1)) - timedelta(hours=2)).isoformat(),
    )
    within_skew = reading(meter, today, "112.00", read_at=(timezone.now() + timedelta(minutes=4)).isoformat())
    batch = ingest([in_an_hour, tomorrow, read_before_freeze, within_skew])

    assert (batch.accepted, batch.rejected) == (1, 3)
    rejections = list(batch.rejections.order_by("position"))
    assert [r.reason for r in rejections] == [RejectionReason.FUTURE_TIMESTAMP] * 3
    assert "in the future" in rejections[0].message
    assert "after today" in rejections[1].message
    assert "after the time the reading was taken" in rejections[2].message
    assert [r.payload for r in rejections] == [in_an_hour, tomorrow, read_before_freeze]


@pytest.mark.django_db
def test_register_decrease_is_rejected(meter, today):
    ingest([reading(meter, today - timedelta(days=2), "500.00")])
    payload = reading(meter, today - timedelta(days=1), "499.99")
    rejection = only_rejection(ingest([payload]))
    assert rejection.reason == RejectionReason.REGISTER_DECREASE
    assert rejection.payload == payload
    assert "499.99 kWh" in rejection.message and "500.00 kWh" in rejection.message
    assert not DailyReading.objects.filter(meter=meter, read_date=today - timedelta(days=1)).exists()


@pytest.mark.django_db
def test_first_reading_below_the_initial_register_is_a_decrease(meter, today):
    rejection = only_rejection(ingest([reading(meter, today - timedelta(days=5), "99.00")]))
    assert rejection.reason == RejectionReason.REGISTER_DECREASE
    assert "at installation" in rejection.message


@pytest.mark.django_db
def test_impossible_jump_is_rejected_against_capacity(meter, today):
    ingest([reading(meter, today - timedelta(days=3), "1000.00")])
    # 8 kVA × 24 h × 1.2 = 230.40 kWh/day: 2 days allow 460.80.
    assert ingest([reading(meter, today - timedelta(days=1), "1460.80")]).accepted == 1
    payload = reading(meter, today, "1691.21")  # 230.41 in one day
    rejection = only_rejection(ingest([payload]))
    assert rejection.reason == RejectionReason.IMPOSSIBLE_JUMP
    assert "230.41 kWh in 1 day(s)" in rejection.message and "230.40 kWh" in rejection.message
    assert rejection.payload == payload


@pytest.mark.django_db
def test_impossible_jump_uses_the_multiplier_because_registers_are_secondary(
    install_meter, make_service_point, today
):
    # CT 50/5 (ratio 10) × PT 10 kV/100 V (ratio 100): the register moves 1/1000 of the energy.
    point = make_service_point(ct_ratio=10, pt_ratio=100)
    ct_meter = install_meter(
        point, installed_at=local_midnight(today - timedelta(days=30)), initial_total=Decimal("9.00")
    )
    ingest([reading(ct_meter, today - timedelta(days=2), "10.00")])
    assert ingest([reading(ct_meter, today - timedelta(days=1), "10.23")]).accepted == 1  # ≤ 0.2304
    rejection = only_rejection(ingest([reading(ct_meter, today, "10.47")]))
    assert rejection.reason == RejectionReason.IMPOSSIBLE_JUMP


@pytest.mark.django_db
def test_without_a_service_point_the_configured_ceiling_applies(areas, today, settings):
    settings.METERING_DAILY_CEILING_KWH = Decimal("50")
    area_meter = Meter.objects.create(  # a customer meter not yet tied to a service point
        asset_number="AS-AREA",
        comm_address=next_address(),
        manufacturer="x",
        model="y",
        status=MeterStatus.INSTALLED,
        transformer_area=areas["qx_s1"],
    )
    MeterInstallation.objects.create(
        meter=area_meter,
        transformer_area=areas["qx_s1"],
        installed_at=local_midnight(today - timedelta(days=10)),
        initial_registers={"forward_total": "0"},
    )
    batch = ingest(
        [
            reading(area_meter, today - timedelta(days=3), "30.00"),
            reading(area_meter, today - timedelta(days=2), "80.00"),
            reading(area_meter, today - timedelta(days=1), "130.01"),
        ]
    )
    assert (batch.accepted, batch.rejected) == (2, 1)
    assert only_rejection(batch).reason == RejectionReason.IMPOSSIBLE_JUMP


@pytest.mark.django_db
def test_an_area_meter_is_limited_by_its_transformer(areas, today, settings):
    # 400 kVA × 24 h × 1.2 = 11,520.00 kWh a day, whatever the configured fallback ceiling.
    settings.METERING_DAILY_CEILING_KWH = Decimal("50")
    area_meter = Meter.objects.create(
        asset_number="AS-AREA2",
        comm_address=next_address(),
        manufacturer="x",
        model="y",
        role="area",
        status=MeterStatus.INSTALLED,
        transformer_area=areas["qx_s1"],
    )
    MeterInstallation.objects.create(
        meter=area_meter,
        transformer_area=areas["qx_s1"],
        installed_at=local_midnight(today - timedelta(days=10)),
        initial_registers={"forward_total": "0"},
    )
    batch = ingest(
        [
            reading(area_meter, today - timedelta(days=3), "11520.00"),
            reading(area_meter, today - timedelta(days=2), "23040.01"),
        ]
    )
    assert (batch.accepted, batch.rejected) == (1, 1)
    assert only_rejection(batch).reason == RejectionReason.IMPOSSIBLE_JUMP


@pytest.mark.django_db
def test_same_meter_and_day_with_other_values_is_a_conflicting_duplicate(meter, today):
    day = today - timedelta(days=1)
    ingest([reading(meter, day, "150.00")])
    payload = reading(meter, day, "151.00")
    rejection = only_rejection(ingest([payload]))
    assert rejection.reason == RejectionReason.CONFLICTING_DUPLICATE
    assert "150.00 kWh" in rejection.message and "151.00 kWh" in rejection.message
    assert rejection.payload == payload
    assert stored(meter, day).forward_total == Decimal("150.00")


@pytest.mark.django_db
def test_out_of_order_reading_that_does_not_fit_is_rejected(meter, today):
    ingest(
        [
            reading(meter, today - timedelta(days=4), "200.00"),
            reading(meter, today - timedelta(days=2), "220.00"),
        ]
    )
    payload = reading(meter, today - timedelta(days=3), "225.00")  # above the later reading
    rejection = only_rejection(ingest([payload]))
    assert rejection.reason == RejectionReason.OUT_OF_ORDER_INCONSISTENT
    assert "does not fit between its neighbours" in rejection.message
    assert "200.00 kWh" in rejection.message and "220.00 kWh" in rejection.message
    assert rejection.payload == payload


# --- accepted with a quality ---------------------------------------------------------------


@pytest.mark.django_db
def test_out_of_order_reading_that_fits_is_accepted(meter, today):
    ingest(
        [
            reading(meter, today - timedelta(days=4), "200.00"),
            reading(meter, today - timedelta(days=2), "220.00"),
        ]
    )
    batch = ingest([reading(meter, today - timedelta(days=3), "210.00")])
    assert batch.accepted == 1
    assert stored(meter, today - timedelta(days=3)).quality == ReadingQuality.OUT_OF_ORDER


@pytest.mark.django_db
def test_register_rollover_is_accepted(install_meter, service_point, today):
    meter = install_meter(
        service_point, installed_at=local_midnight(today - timedelta(days=9)), initial_total=Decimal("999900")
    )
    ingest([reading(meter, today - timedelta(days=2), "999990.00")])
    batch = ingest([reading(meter, today - timedelta(days=1), "15.00")])  # 25.00 kWh consumed
    assert (batch.accepted, batch.rejected) == (1, 0)
    row = stored(meter, today - timedelta(days=1))
    assert row.quality == ReadingQuality.ROLLOVER
    assert "rolled over" in row.quality_note


@pytest.mark.django_db
def test_a_rollover_bigger_than_the_capacity_is_a_decrease(install_meter, service_point, today):
    meter = install_meter(
        service_point, installed_at=local_midnight(today - timedelta(days=9)), initial_total=Decimal("998900")
    )
    ingest([reading(meter, today - timedelta(days=2), "999000.00")])
    rejection = only_rejection(ingest([reading(meter, today - timedelta(days=1), "500.00")]))  # 1,500 kWh
    assert rejection.reason == RejectionReason.REGISTER_DECREASE


@pytest.mark.django_db
def test_meter_exchange_is_accepted_from_the_new_meters_initial_registers(
    install_meter, service_point, meter, today
):
    ingest(
        [
            reading(meter, today - timedelta(days=6), "5000.00"),
            reading(meter, today - timedelta(days=5), "5010.00"),
        ]
    )
    # Exchange at 14:00 four days ago: the old meter leaves with 5,015.00, the new one
    # starts at 3.00.
    exchanged_at = local_midnight(today - timedelta(days=4)) + timedelta(hours=14)
    MeterInstallation.objects.filter(meter=meter).update(
        removed_at=exchanged_at, final_registers={"forward_total": "5015.00"}
    )
    Meter.objects.filter(pk=meter.pk).update(status=MeterStatus.REMOVED, service_point=None)
    new_meter = install_meter(service_point, installed_at=exchanged_at, initial_total=Decimal("3.00"))

    batch = ingest(
        [
            reading(meter, today - timedelta(days=4), "5014.00"),  # old meter's last freeze, arriving late
            reading(new_meter, today - timedelta(days=3), "8.00"),
            reading(new_meter, today - timedelta(days=2), "18.00"),
            reading(meter, today - timedelta(days=3), "5015.00"),  # old meter after removal
        ]
    )
    assert (batch.accepted, batch.rejected) == (3, 1)
    assert stored(new_meter, today - timedelta(days=3)).quality == ReadingQuality.EXCHANGE
    assert stored(new_meter, today - timedelta(days=2)).quality == ReadingQuality.VALID
    assert stored(meter, today - timedelta(days=4)).quality == ReadingQuality.VALID
    assert only_rejection(batch).reason == RejectionReason.METER_NOT_INSTALLED


@pytest.mark.django_db
def test_a_reused_meter_starts_again_from_its_new_installation(
    install_meter, meter, make_service_point, today
):
    ingest([reading(meter, today - timedelta(days=10), "800.00")])
    moved_at = local_midnight(today - timedelta(days=8)) + timedelta(hours=9)
    MeterInstallation.objects.filter(meter=meter).update(removed_at=moved_at)
    point = make_service_point()
    MeterInstallation.objects.create(
        meter=meter,
        service_point=point,
        transformer_area=point.transformer_area,
        installed_at=moved_at + timedelta(hours=3),
        initial_registers={"forward_total": "0.00"},
    )
    Meter.objects.filter(pk=meter.pk).update(service_point=point)
    # The register was reset in the workshop: lower than before, but after the exchange.
    batch = ingest([reading(meter, today - timedelta(days=7), "4.00")])
    assert batch.accepted == 1
    row = stored(meter, today - timedelta(days=7))
    assert row.quality == ReadingQuality.EXCHANGE
    assert row.service_point_id == point.pk


@pytest.mark.django_db
def test_tou_registers_that_do_not_add_up_are_flagged_suspect(meter, today):
    day = today - timedelta(days=1)
    # Tolerance: 0.1% of the total + 0.02 kWh, i.e. 1.02 kWh at 1,000.00 and 1.03 at 1,010.00.
    good = reading(
        meter,
        day - timedelta(days=1),
        "1000.00",
        forward_sharp="100",
        forward_peak="300",
        forward_flat="300",
        forward_valley="301.02",
    )
    bad = reading(
        meter,
        day,
        "1010.00",
        forward_sharp="100",
        forward_peak="300",
        forward_flat="300",
        forward_valley="308.96",
    )
    batch = ingest([good, bad])
    assert (batch.accepted, batch.flagged, batch.rejected) == (2, 1, 0)
    assert stored(meter, day - timedelta(days=1)).quality == ReadingQuality.VALID
    row = stored(meter, day)
    assert row.quality == ReadingQuality.SUSPECT
    assert "add up to 1,008.96 kWh" in row.quality_note


@pytest.mark.django_db
def test_many_readings_of_one_meter_in_mixed_order_are_validated_in_date_order(meter, today):
    days = [today - timedelta(days=n) for n in range(6, 0, -1)]  # oldest first
    totals = ["110.00", "120.00", "125.00", "118.00", "140.00", "150.00"]  # day 4 went backwards
    payloads = [reading(meter, d, t) for d, t in zip(days, totals, strict=True)]
    mixed = [payloads[i] for i in (4, 0, 5, 2, 3, 1)]
    batch = ingest(mixed)

    assert (batch.accepted, batch.rejected, batch.duplicates) == (5, 1, 0)
    rejection = only_rejection(batch)
    assert rejection.reason == RejectionReason.REGISTER_DECREASE
    assert rejection.position == 4 and rejection.payload == payloads[3]
    # None of them counts as out of order: arrival order inside a batch does not matter.
    assert set(DailyReading.objects.filter(meter=meter).values_list("quality", flat=True)) == {"valid"}
    # day 5 (140.00) was checked against day 3 (125.00), the previous accepted one.
    assert stored(meter, days[4]).forward_total == Decimal("140.00")


# --- duplicates and idempotency ------------------------------------------------------------


@pytest.mark.django_db
def test_a_batch_delivered_twice_is_stored_once(meter, today):
    payloads = [reading(meter, today - timedelta(days=2), "120.00"), reading("999999999999", today, "1")]
    first = ingest(payloads, batch_id="ext-1")
    again = ingest(payloads, batch_id="ext-1")
    assert again.pk == first.pk and again.first_delivery is False
    assert (again.accepted, again.duplicates, again.rejected) == (1, 0, 1)
    assert DailyReading.objects.filter(meter=meter).count() == 1
    assert RejectedReading.objects.count() == 1


@pytest.mark.django_db
def test_the_same_reading_in_another_batch_is_a_duplicate(meter, today):
    payload = reading(meter, today - timedelta(days=2), "120.00", forward_peak="20.5")
    ingest([payload])
    again = ingest(
        [dict(payload, forward_total="120", forward_peak="20.50", read_at=timezone.now().isoformat())]
    )
    assert (again.accepted, again.duplicates, again.rejected) == (0, 1, 0)
    same_batch = ingest([payload, payload])
    assert (same_batch.accepted, same_batch.duplicates) == (0, 2)


@pytest.mark.django_db
def test_repeats_inside_one_batch(meter, today):
    day = today - timedelta(days=1)
    batch = ingest(
        [reading(meter, day, "130.00"), reading(meter, day, "130.00"), reading(meter, day, "131.00")]
    )
    assert (batch.accepted, batch.duplicates, batch.rejected) == (1, 1, 1)
    assert only_rejection(batch).reason == RejectionReason.CONFLICTING_DUPLICATE


@pytest.mark.django_db
def test_an_actual_reading_replaces_an_estimate(meter, today):
    day = today - timedelta(days=1)
    ingest([reading(meter, day - timedelta(days=1), "120.00")])
    estimate = ingest([reading(meter, day, "135.00")], source=ReadingSource.ESTIMATED)
    assert stored(meter, day).quality == ReadingQuality.ESTIMATED
    row_id = stored(meter, day).pk

    actual = ingest([reading(meter, day, "131.00")])
    assert (actual.accepted, actual.rejected) == (1, 0)
    row = stored(meter, day)
    assert (row.pk, row.forward_total, row.source, row.quality, row.batch_id) == (
        row_id,
        Decimal("131.00"),
        ReadingSource.EXTERNAL,
        ReadingQuality.VALID,
        actual.pk,
    )
    # An estimate is no baseline: the next actual reading is checked against 120.00 / 131.00.
    assert estimate.accepted == 1
    again = ingest([reading(meter, day, "140.00")], source=ReadingSource.ESTIMATED)
    assert only_rejection(again).reason == RejectionReason.CONFLICTING_DUPLICATE


@pytest.mark.django_db
def test_a_late_actual_reading_replaces_an_estimate_between_actual_ones(meter, today):
    ingest(
        [
            reading(meter, today - timedelta(days=3), "120.00"),
            reading(meter, today - timedelta(days=1), "140.00"),
        ]
    )
    ingest([reading(meter, today - timedelta(days=2), "131.00")], source=ReadingSource.ESTIMATED)
    batch = ingest([reading(meter, today - timedelta(days=2), "129.00")])
    assert (batch.accepted, batch.rejected, batch.duplicates) == (1, 0, 0)
    row = stored(meter, today - timedelta(days=2))
    assert (row.forward_total, row.source, row.quality) == (
        Decimal("129.00"),
        ReadingSource.EXTERNAL,
        ReadingQuality.OUT_OF_ORDER,
    )


@pytest.mark.django_db
def test_estimates_are_not_used_as_neighbours(meter, today):
    ingest([reading(meter, today - timedelta(days=3), "120.00")])
    ingest([reading(meter, today - timedelta(days=2), "160.00")], source=ReadingSource.ESTIMATED)
    batch = ingest([reading(meter, today - timedelta(days=1), "130.00")])  # below the estimate: fine
    assert batch.accepted == 1
    assert stored(meter, today - timedelta(days=1)).quality == ReadingQuality.VALID


# --- batch-level behaviour ----------------------------------------------------------------


@pytest.mark.django_db
def test_bad_source_or_batch_id_raise():
    with pytest.raises(ValidationError):
        readings_ingest(source="carrier-pigeon", external_id="x", readings=[])
    with pytest.raises(ValidationError):
        readings_ingest(source=ReadingSource.EXTERNAL, external_id="", readings=[])


@postgres_only
@pytest.mark.django_db
def test_an_interrupted_batch_is_resumed_by_its_redelivery(
    meter, make_service_point, install_meter, today, monkeypatch
):
    meters = [meter] + [
        install_meter(make_service_point(), installed_at=local_midnight(today - timedelta(days=9)))
        for _ in range(4)
    ]
    day = today - timedelta(days=1)
    payloads = [reading(m, day, "150.00") for m in meters] + [reading("999999999999", day, "1")]
    monkeypatch.setattr(readings_module, "CHUNK_SIZE", 2)
    real_store = readings_module._store_chunk
    calls = itertools.count()

    def dying_store(*args, **kwargs):
        if next(calls) == 1:
            raise RuntimeError("worker killed")
        return real_store(*args, **kwargs)

    monkeypatch.setattr(readings_module, "_store_chunk", dying_store)
    with pytest.raises(RuntimeError):
        ingest(payloads, batch_id="crash-1")
    half = ReadingBatch.objects.get(external_id="crash-1")
    assert half.completed_at is None and half.accepted == 2

    resumed = ingest(payloads, batch_id="crash-1")
    assert resumed.completed_at is not None and resumed.first_delivery is False
    assert (resumed.accepted, resumed.duplicates, resumed.rejected) == (5, 0, 1)
    assert DailyReading.objects.filter(read_date=day).count() == 5
    assert RejectedReading.objects.filter(batch=resumed).count() == 1


@pytest.mark.django_db
def test_a_batch_advanced_by_someone_else_meanwhile_is_a_conflict(
    meter, make_service_point, install_meter, today, monkeypatch
):
    other = install_meter(make_service_point(), installed_at=local_midnight(today - timedelta(days=9)))
    day = today - timedelta(days=1)
    monkeypatch.setattr(readings_module, "CHUNK_SIZE", 1)
    real_store = readings_module._store_chunk

    def store_while_another_delivery_works(*args, **kwargs):
        counts = real_store(*args, **kwargs)
        # Meanwhile another delivery of the same batch counted a reading too.
        ReadingBatch.objects.filter(external_id="busy-1").update(duplicates=F("duplicates") + 1)
        return counts

    monkeypatch.setattr(readings_module, "_store_chunk", store_while_another_delivery_works)
    with pytest.raises(Conflict):
        ingest([reading(meter, day, "150.00"), reading(other, day, "10.00")], batch_id="busy-1")


@pytest.mark.django_db
def test_the_portable_path_gives_the_same_results(meter, today, monkeypatch):
    monkeypatch.setattr(readings_module, "_pg_fast_path", lambda: False)
    day = today - timedelta(days=1)
    ingest(
        [reading(meter, day - timedelta(days=3), "200.00"), reading(meter, day - timedelta(days=1), "220.00")]
    )
    ingest([reading(meter, day, "230.00")], source=ReadingSource.ESTIMATED)
    batch = ingest(
        [
            reading(meter, day - timedelta(days=2), "210.00"),  # out of order, fits
            reading(meter, day - timedelta(days=1), "220.00"),  # duplicate
            reading(meter, day, "225.00"),  # replaces the estimate
            reading(meter, today, "224.00"),  # decrease
        ]
    )
    assert (batch.accepted, batch.duplicates, batch.rejected) == (2, 1, 1)
    assert stored(meter, day - timedelta(days=2)).quality == ReadingQuality.OUT_OF_ORDER
    assert stored(meter, day).forward_total == Decimal("225.00")
    assert stored(meter, day).source == ReadingSource.EXTERNAL
    assert only_rejection(batch).reason == RejectionReason.REGISTER_DECREASE


# --- the set-based lane (PostgreSQL) and the Python validator agree ------------------------


@pytest.mark.django_db
@pytest.mark.parametrize("lane", [True, False], ids=["set-based lane", "python validator"])
def test_a_mixed_delivery_gives_the_same_results_through_the_lane_and_in_python(
    meter, make_service_point, install_meter, today, monkeypatch, lane
):
    if not lane:
        monkeypatch.setattr(readings_module, "_lane_fast_path", lambda: False)
    nine_days_ago = local_midnight(today - timedelta(days=9))
    rolling = install_meter(make_service_point(), installed_at=nine_days_ago, initial_total=Decimal("999900"))
    repeated = install_meter(make_service_point(), installed_at=nine_days_ago)
    by_id = install_meter(make_service_point(), installed_at=nine_days_ago)
    ingest([reading(repeated, today - timedelta(days=3), "10.00")])
    t = {n: today - timedelta(days=n) for n in range(1, 6)}
    batch = ingest(
        [
            # `meter` (from 100.00 at installation, at most 230.40 kWh a day):
            reading(meter, t[5], "150.00"),  # 50.00 kWh since installation 55 days ago
            reading(meter, t[4], "160.00"),  # +10.00
            reading(meter, t[3], "155.00"),  # below 160.00: rejected
            reading(meter, t[2], "170.00"),  # +10.00 over 2 days from 160.00
            # `rolling` (from 999,900.00 at installation 9 days ago):
            reading(rolling, t[2], "999990.00"),  # +90.00 in 7 days
            reading(rolling, t[1], "15.00"),  # 15.00 + 1,000,000.00 - 999,990.00 = 25.00 kWh
            # `repeated` (10.00 stored for t-3): the same day twice in the batch
            reading(repeated, t[2], "20.00"),
            reading(repeated, t[2], "20.00"),
            # `by_id`: once by id, once by address
            {**reading(by_id, t[2], "5.00"), "meter": None, "meter_id": str(by_id.pk)},
            reading(by_id, t[1], "7.00"),
            reading("999999999999", t[1], "1.00"),
        ]
    )
    # accepted: meter 3 + rolling 2 + repeated 1 + by_id 2 = 8; one duplicate; rejected:
    # the decrease and the unknown meter = 2; 8 + 1 + 2 = 11 readings.
    assert (batch.accepted, batch.duplicates, batch.rejected, batch.flagged) == (8, 1, 2, 0)
    assert dict(batch.rejections.values_list("position", "reason")) == {
        2: RejectionReason.REGISTER_DECREASE,
        10: RejectionReason.UNKNOWN_METER,
    }
    assert "160.00 kWh on" in batch.rejections.get(position=2).message
    rows = DailyReading.objects.filter(meter=meter).order_by("read_date")
    assert [(r.read_date, r.forward_total, r.quality) for r in rows] == [
        (t[5], Decimal("150.00"), ReadingQuality.VALID),
        (t[4], Decimal("160.00"), ReadingQuality.VALID),
        (t[2], Decimal("170.00"), ReadingQuality.VALID),
    ]
    rolled = stored(rolling, t[1])
    assert rolled.quality == ReadingQuality.ROLLOVER
    assert rolled.quality_note == "register rolled over at 1,000,000.00 kWh"
    assert stored(rolling, t[2]).quality == ReadingQuality.VALID
    assert stored(rolling, t[2]).service_point_id == rolling.service_point_id
    assert stored(repeated, t[2]).forward_total == Decimal("20.00")
    assert [r.forward_total for r in DailyReading.objects.filter(meter=by_id)] == [
        Decimal("5.00"),
        Decimal("7.00"),
    ]
    assert DailyReading.objects.filter(batch=batch).count() == 8
    assert set(DailyReading.objects.filter(batch=batch).values_list("source", flat=True)) == {"external"}


@pytest.fixture
def judged_in_python(monkeypatch):
    """The positions the Python validator is given, chunk by chunk."""
    seen = []
    real_parse = readings_module._parse_chunk

    def parse(chunk, now):
        seen.append([position for position, _raw in chunk])
        return real_parse(chunk, now)

    monkeypatch.setattr(readings_module, "_parse_chunk", parse)
    return seen


@postgres_only
@pytest.mark.django_db
def test_plain_readings_are_stored_by_the_lane_and_the_rest_judged_in_python(
    meter, make_service_point, install_meter, today, judged_in_python
):
    other = install_meter(make_service_point(), installed_at=local_midnight(today - timedelta(days=9)))
    day = today - timedelta(days=1)
    batch = ingest(
        [
            reading(meter, day, "110.00", forward_peak="60.00", forward_valley="50.00"),
            reading(other, day, "12.345"),  # three decimals: not the lane's form
            reading(meter, day, "110.00", quality="suspect") | {"meter": "000000000001"},  # unknown
        ]
    )
    assert judged_in_python == [[1, 2]]
    assert (batch.accepted, batch.rejected) == (2, 1)
    row = stored(meter, day)
    assert (row.forward_peak, row.forward_valley, row.quality) == (
        Decimal("60.00"),
        Decimal("50.00"),
        ReadingQuality.VALID,
    )
    assert stored(other, day).forward_total == Decimal("12.35")  # 12.345 rounded half-up


@pytest.mark.django_db
def test_the_lane_leaves_a_meter_to_python_when_it_cannot_judge_it(meter, today, judged_in_python):
    ingest([reading(meter, today - timedelta(days=20), "150.00")])
    judged_in_python.clear()
    # Silent for longer than the look-back (7 days): the lane does not search further
    # back, Python does: 60.00 kWh in 18 days from 150.00.
    batch = ingest([reading(meter, today - timedelta(days=2), "210.00")])
    assert judged_in_python == [[0]]
    assert batch.accepted == 1
    assert stored(meter, today - timedelta(days=2)).quality == ReadingQuality.VALID


@pytest.mark.django_db
def test_the_lane_passes_time_of_use_registers_that_do_not_add_up_to_python(meter, today, judged_in_python):
    day = today - timedelta(days=1)
    # 10.00 + 20.00 = 30.00 against a total of 110.00: off by more than 0.11 + 0.02 kWh.
    batch = ingest([reading(meter, day, "110.00", forward_peak="10.00", forward_valley="20.00")])
    assert judged_in_python == [[0]]
    assert (batch.accepted, batch.flagged) == (1, 1)
    assert stored(meter, day).quality == ReadingQuality.SUSPECT


def test_split_chunk_takes_only_plain_strings_for_the_lane():
    now = timezone.now()
    day = timezone.localdate(now) - timedelta(days=1)
    plain = {
        "meter": "000000000001",
        "read_date": day.isoformat(),
        "read_at": f"{day.isoformat()}T00:15:00+08:00",
        "forward_total": "1.00",
    }
    tomorrow = (day + timedelta(days=2)).isoformat()
    chunk = list(
        enumerate(
            [
                plain,
                plain | {"forward_total": "1e3"},
                plain | {"forward_total": " 1.00"},
                plain | {"forward_total": "1.005"},
                plain | {"forward_total": Decimal("1.00")},
                plain | {"read_at": f"{day.isoformat()}T00:15:00"},  # no offset
                plain | {"read_date": tomorrow, "read_at": f"{tomorrow}T00:15:00+08:00"},
                plain | {"read_date": "2026-02-30"},
                plain | {"meter": "00000000000\t"},
                plain | {"comment": "x"},
                plain | {"max_demand_kw": "1.2345", "remaining_balance": "-3.5", "meter": "000000000002"},
                "not a reading",
            ]
        )
    )
    split = reading_lane.split_chunk(chunk, now, timedelta(minutes=5))
    # Reading 0 names the same meter as readings that go to Python, so it goes too.
    assert [position for position, _raw in split.rest] == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 11]
    assert split.lane_size == 1
    assert [shape.lines for shape in split.shapes] == [
        [f"10\t000000000002\t{day}\t{day}T00:15:00+08:00\t1.00\t1.2345\t-3.5\n"]
    ]


# --- after commit: the listener --------------------------------------------------------------


@pytest.fixture
def listener():
    heard = []

    def listen(batch_id):
        heard.append(batch_id)

    hooks.register_readings_listener(listen)
    yield heard
    hooks.unregister_readings_listener(listen)


@pytest.mark.django_db(transaction=True)
def test_the_listener_hears_of_a_batch_only_after_commit(meter, today, listener):
    with transaction.atomic():
        batch = ingest([reading(meter, today - timedelta(days=1), "120.00")])
        assert listener == []
    assert listener == [batch.pk]

    with pytest.raises(RuntimeError), transaction.atomic():
        ingest([reading(meter, today, "125.00")])
        raise RuntimeError("caller rolls back")
    assert listener == [batch.pk]

    ingest([reading("999999999999", today, "1")])  # nothing accepted: nothing to rate
    assert listener == [batch.pk]


# --- concurrency -------------------------------------------------------------------------------


def _run_in_threads(*jobs):
    barrier = threading.Barrier(len(jobs))
    results, errors = [None] * len(jobs), []

    def run(i, job):
        try:
            barrier.wait()
            results[i] = job()
        except Exception as exc:  # reported to the test below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=run, args=(i, job)) for i, job in enumerate(jobs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    return results


@postgres_only
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("same_values", [True, False])
@pytest.mark.parametrize("lane", [True, False], ids=["set-based lane", "python validator"])
def test_overlapping_batches_at_the_same_time_store_each_reading_once(
    customer, make_service_point, install_meter, today, monkeypatch, same_values, lane
):
    meters = [
        install_meter(make_service_point(), installed_at=local_midnight(today - timedelta(days=9)))
        for _ in range(12)
    ]
    day = today - timedelta(days=1)
    first = [reading(m, day, "10.00") for m in meters[:8]]
    second = [reading(m, day, "10.00" if same_values else "11.00") for m in meters[4:]]
    # Both deliveries look up the stored readings before either inserts: the database's
    # unique key has to settle the overlap.
    looked_up = threading.Barrier(2)
    if lane:
        # The lane looks up and inserts in one statement: both start it together, and
        # the one that loses on the unique key hands its chunk to the Python validator.
        real_store_lane = reading_lane.store_lane

        def wait_then_store_lane(*args, **kwargs):
            looked_up.wait(10)
            return real_store_lane(*args, **kwargs)

        monkeypatch.setattr(reading_lane, "store_lane", wait_then_store_lane)
    else:
        monkeypatch.setattr(readings_module, "_lane_fast_path", lambda: False)
        real_context = readings_module._context_postgres

        def context_then_wait(*args, **kwargs):
            result = real_context(*args, **kwargs)
            looked_up.wait(10)
            return result

        monkeypatch.setattr(readings_module, "_context_postgres", context_then_wait)
    a, b = _run_in_threads(lambda: ingest(first, batch_id="A"), lambda: ingest(second, batch_id="B"))

    assert DailyReading.objects.filter(read_date=day).count() == 12
    assert a.accepted + b.accepted == 12
    for batch, size in ((a, 8), (b, 8)):
        assert batch.accepted + batch.duplicates + batch.rejected == size
    if same_values:
        assert (a.duplicates + b.duplicates, a.rejected + b.rejected) == (4, 0)
    else:
        assert (a.duplicates + b.duplicates, a.rejected + b.rejected) == (0, 4)
        reasons = set(RejectedReading.objects.values_list("reason", flat=True))
        assert reasons == {RejectionReason.CONFLICTING_DUPLICATE}
    assert (
        DailyReading.objects.filter(read_date=day, meter__in=meters[4:8]).values("meter").distinct().count()
        == 4
    )


@postgres_only
@pytest.mark.django_db(transaction=True)
def test_the_same_batch_delivered_twice_at_once_is_stored_once(meter, today):
    payloads = [reading(meter, today - timedelta(days=1), "120.00")]

    def deliver():
        try:
            return ingest(payloads, batch_id="twice")
        except Conflict:
            return None

    results = _run_in_threads(deliver, deliver)
    batches = [b for b in results if b is not None]
    assert batches
    assert DailyReading.objects.filter(meter=meter).count() == 1
    final = ReadingBatch.objects.get(external_id="twice")
    assert (final.accepted, final.duplicates) == (1, 0) and final.completed_at is not None


# --- the management command -----------------------------------------------------------------


@pytest.mark.django_db
def test_ingest_readings_command_streams_a_csv_file(meter, today, tmp_path):
    day = today - timedelta(days=1)
    path = tmp_path / "readings.csv"
    path.write_text(
        "meter,read_date,read_at,forward_total,forward_peak\n"
        f"{meter.comm_address},{day},{day}T00:15:00+08:00,150.00,\n"
        f"999999999999,{day},{day}T00:15:00+08:00,1.00,\n",
        encoding="utf-8",
    )
    out = StringIO()
    call_command("ingest_readings", str(path), "--batch-id", "file-1", stdout=out)
    assert "accepted 1, duplicates 0, rejected 1, flagged 0" in out.getvalue()
    assert "unknown_meter" in out.getvalue()
    assert stored(meter, day).forward_total == Decimal("150.00")

    again = StringIO()
    call_command("ingest_readings", str(path), "--batch-id", "file-1", stdout=again)
    assert "delivered before" in again.getvalue()
    assert DailyReading.objects.filter(meter=meter).count() == 1


@pytest.mark.django_db
def test_ingest_readings_command_keeps_a_broken_json_line(meter, today, tmp_path):
    day = today - timedelta(days=1)
    path = tmp_path / "readings.jsonl"
    good = json.dumps(reading(meter, day, "150.00"))
    path.write_text(f"{good}\n{{not json\n", encoding="utf-8")
    call_command("ingest_readings", str(path), "--batch-id", "file-2", stdout=StringIO())
    batch = ReadingBatch.objects.get(external_id="file-2")
    assert (batch.accepted, batch.rejected) == (1, 1)
    assert batch.rejections.get().payload == "{not json"
