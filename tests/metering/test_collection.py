"""Daily collection over real sockets: the fleet simulator (20% of meters silent per attempt,
as the article reports) behind terminals, the head-end adapter, the ingest path, success
figures per transformer area, retries that read only the gaps, and estimation."""

from datetime import timedelta
from decimal import Decimal

import pytest
from django.test import override_settings

from metering.models import CollectionDayStat, DailyReading, Meter, ReadingSource, RelayState, Terminal
from metering.services.collection import collection_estimate_gaps, collection_run, collection_stats_refresh
from metering.services.readings import readings_ingest
from metering.simulator.fleet import Fleet, MeterSpec
from metering.simulator.server import run_in_thread
from tests.metering.conftest import local_midnight

FLEET_SIZE = 40


@pytest.fixture
def fleet():
    # Households only: the test service points are 8 kVA residential ones.
    return Fleet.generate(
        count=FLEET_SIZE,
        seed=5,
        failure_rate=0.2,
        gateways=2,
        local_share=0.2,
        category_weights={"residential": 1.0},
        near_rollover_share=0.0,
    )


@pytest.fixture
def simulator(fleet):
    with run_in_thread(fleet) as handle:
        yield handle


@pytest.fixture
def fleet_meters(fleet, simulator, install_meter, make_service_point, today):
    """A database meter for every simulated one, reached through a terminal on the port the
    simulator serves its gateway on."""
    terminals = {}
    meters = []
    for address in fleet.addresses:
        endpoint = simulator.endpoint_for(address)
        sp = make_service_point()
        if endpoint not in terminals:
            terminals[endpoint] = Terminal.objects.create(
                address=f"T{len(terminals) + 1:05d}", endpoint=endpoint, transformer_area=sp.transformer_area
            )
        meters.append(
            install_meter(
                sp,
                address=address,
                installed_at=local_midnight(today - timedelta(days=400)),
                terminal=terminals[endpoint],
                cost_control_mode="local" if address in fleet.local_addresses() else "remote",
            )
        )
    return meters


def _stat(day):
    stats = CollectionDayStat.objects.filter(day=day)
    return sum(s.expected for s in stats), sum(s.collected for s in stats), sum(s.estimated for s in stats)


@override_settings(METERING_READ_TIMEOUT=0.5, METERING_READ_CONCURRENCY=20)
def test_first_pass_reads_about_four_in_five_and_retries_read_only_the_gaps(fleet_meters, today):
    first = collection_run(day=today)
    assert first.attempted == FLEET_SIZE
    assert first.read_ok + first.failed == FLEET_SIZE
    # Deterministic for the seed; the article's ~80% per attempt.
    assert 0.6 * FLEET_SIZE <= first.read_ok <= 0.95 * FLEET_SIZE
    assert first.failed >= 1
    assert first.accepted == first.read_ok
    stored = DailyReading.objects.filter(read_date=today, source=ReadingSource.COLLECTED)
    assert stored.count() == first.read_ok
    reading = stored.first()
    assert reading.forward_total > 0 and isinstance(reading.forward_total, Decimal)
    assert reading.forward_sharp is not None and reading.reactive_total is not None
    assert _stat(today) == (FLEET_SIZE, first.read_ok, 0)

    second = collection_run(day=today)
    assert second.attempted == first.failed  # only the gaps are read again
    assert second.read_ok >= 1
    assert stored.count() == first.read_ok + second.read_ok
    assert _stat(today)[1] == first.read_ok + second.read_ok
    for _ in range(8):
        if not collection_run(day=today).attempted:
            break
    assert DailyReading.objects.filter(read_date=today).count() == FLEET_SIZE
    # A repeated pass over a complete day reads nothing and stores nothing twice.
    again = collection_run(day=today)
    assert (again.attempted, again.accepted) == (0, 0)


@override_settings(METERING_READ_TIMEOUT=0.5, METERING_READ_CONCURRENCY=20)
def test_local_meters_report_their_own_balance(fleet_meters, fleet, today):
    for _ in range(8):
        if not collection_run(day=today).attempted:
            break
    for address in fleet.local_addresses():
        reading = DailyReading.objects.get(meter__comm_address=address, read_date=today)
        assert reading.remaining_balance is not None
    remote = DailyReading.objects.filter(read_date=today).exclude(
        meter__comm_address__in=fleet.local_addresses()
    )
    assert not remote.exclude(remaining_balance=None).exists()


@override_settings(METERING_READ_TIMEOUT=0.5)
def test_relay_state_reported_by_the_meter_is_recorded(install_meter, make_service_point, today):
    fleet = Fleet.from_specs(
        [MeterSpec(address="950000000001", relay_open=True), MeterSpec(address="950000000002")],
        seed=1,
        failure_rate=0.0,
        clock_drift_share=0.0,
        event_share=0.0,
    )
    with run_in_thread(fleet) as simulator:
        for address in fleet.addresses:
            terminal = Terminal.objects.create(
                address=f"T{address[-4:]}", endpoint=simulator.endpoint_for(address)
            )
            install_meter(
                make_service_point(),
                address=address,
                installed_at=local_midnight(today - timedelta(days=30)),
                terminal=terminal,
            )
        result = collection_run(day=today)
    assert result.read_ok == 2
    assert result.relay_changes == 1
    tripped = Meter.objects.get(comm_address="950000000001")
    assert tripped.relay_state == RelayState.OPEN and tripped.relay_state_at is not None
    assert Meter.objects.get(comm_address="950000000002").relay_state == RelayState.CLOSED


@override_settings(METERING_READ_TIMEOUT=0.3)
def test_gaps_left_at_the_end_of_the_day_are_estimated_from_recent_use(meter, today):
    # Two weeks of history: 10 kWh a day; nothing answers at the meter's address today.
    start = today - timedelta(days=14)
    readings_ingest(
        source=ReadingSource.EXTERNAL,
        external_id="history",
        readings=[
            {
                "meter_id": meter.pk,
                "read_date": start + timedelta(days=i),
                "read_at": local_midnight(start + timedelta(days=i)) + timedelta(minutes=15),
                "forward_total": Decimal("200.00") + 10 * i,
            }
            for i in range(13)  # up to the day before yesterday: yesterday is a gap too
        ],
    )
    assert collection_estimate_gaps(day=today) == 1
    estimate = DailyReading.objects.get(meter=meter, read_date=today)
    # Last actual: 320.00 kWh two days ago; 10 kWh a day → 340.00.
    assert estimate.forward_total == Decimal("340.00")
    assert estimate.source == ReadingSource.ESTIMATED
    assert _stat(today) == (1, 0, 1)
    # Estimating again does not add a second estimate.
    assert collection_estimate_gaps(day=today) == 0


def test_a_meter_with_no_history_is_not_invented(meter, today):
    assert collection_estimate_gaps(day=today) == 0
    assert not DailyReading.objects.filter(meter=meter).exists()


def test_stats_count_each_area_once_and_never_exceed_expected(meter, today):
    collection_stats_refresh(day=today)
    collection_stats_refresh(day=today)
    assert CollectionDayStat.objects.filter(day=today).count() == 1
    assert _stat(today) == (1, 0, 0)
