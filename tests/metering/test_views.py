"""Staff pages of metering: scope, the chart data, manual control with a reason, and the
collection success page."""

from datetime import timedelta
from decimal import Decimal

import pytest

from metering.models import CollectionDayStat, RemoteCommand
from metering.services.readings import readings_ingest
from tests.metering.command_fixtures import scheduled  # noqa: F401  (fixture)
from tests.metering.conftest import local_midnight


@pytest.fixture
def english(settings):
    settings.LANGUAGE_CODE = "en"


@pytest.fixture
def with_history(meter, today):
    readings_ingest(
        source="external",
        external_id="view-history",
        readings=[
            {
                "meter_id": meter.pk,
                "read_date": today - timedelta(days=d),
                "read_at": local_midnight(today - timedelta(days=d)) + timedelta(minutes=10),
                "forward_total": Decimal("500.00") - 7 * d,
            }
            for d in range(10, -1, -1)
        ],
    )
    return meter


def test_meter_page_shows_registers_chart_data_and_commands(client, staff, with_history, english):
    client.force_login(staff["inspector"])
    response = client.get(f"/metering/meters/{with_history.asset_number}/")
    assert response.status_code == 200
    body = response.content.decode()
    assert with_history.comm_address in body
    assert "500.00 kWh" in body  # last reading
    series = response.context["series"]
    assert len(series) == 10 and all(point["kwh"] == "7.00" for point in series)
    assert 'id="readings-data"' in body and "echarts.min.js" in body
    assert "control-form" not in body  # inspectors may look, not command


def test_out_of_scope_meter_is_404(client, staff, meter):
    client.force_login(staff["inspector_bs"])
    assert client.get(f"/metering/meters/{meter.asset_number}/").status_code == 404


def test_manager_trips_with_a_reason_and_the_command_is_queued(
    client,
    staff,
    meter,
    scheduled,  # noqa: F811
    english,
    django_capture_on_commit_callbacks,  # noqa: F811
):
    client.force_login(staff["manager"])
    page = client.get(f"/metering/meters/{meter.asset_number}/")
    assert "control-form" in page.content.decode()
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(
            f"/metering/meters/{meter.asset_number}/control/",
            {"action": "trip", "reason": "安全隐患，临时停电检修"},
            follow=True,
        )
    assert response.status_code == 200
    command = RemoteCommand.objects.get(meter=meter)
    assert (command.action, command.status, command.origin) == ("trip", "queued", "staff")
    assert command.requested_by == staff["manager"]
    assert scheduled and scheduled[0][0] == command.pk
    # The request is in the audit trail with who asked and why.
    from metering.models import RemoteCommandEvent

    event = RemoteCommandEvent.objects.filter(pgh_obj=command, pgh_label="insert").get()
    assert event.reason == "安全隐患，临时停电检修"
    assert event.pgh_context.metadata["user"] == staff["manager"].pk


def test_control_without_reason_or_by_counter_staff_is_refused(client, staff, meter, scheduled):  # noqa: F811
    client.force_login(staff["manager"])
    client.post(f"/metering/meters/{meter.asset_number}/control/", {"action": "trip", "reason": ""})
    assert not RemoteCommand.objects.exists()
    client.force_login(staff["counter"])
    response = client.post(
        f"/metering/meters/{meter.asset_number}/control/", {"action": "trip", "reason": "欠费"}
    )
    assert response.status_code == 403
    assert not RemoteCommand.objects.exists()


def test_collection_page_shows_the_rate_per_area_for_the_chosen_day(
    client, staff, meter, areas, today, english
):
    day = today - timedelta(days=1)
    CollectionDayStat.objects.create(
        day=day, transformer_area=areas["qx_s1"], expected=50, collected=40, estimated=6
    )
    CollectionDayStat.objects.create(day=day, transformer_area=areas["bs_s1"], expected=10, collected=10)
    client.force_login(staff["manager"])  # 青溪 county: sees QX areas only
    response = client.get("/metering/collection/", {"day": day.isoformat()})
    assert response.status_code == 200
    assert response.context["totals"]["success_rate"] == 80.0
    body = response.content.decode()
    assert areas["qx_s1"].code in body and areas["bs_s1"].code not in body
    client.force_login(staff["auditor"])
    response = client.get("/metering/collection/", {"day": day.isoformat()})
    assert response.context["totals"]["expected"] == 60
    assert response.context["totals"]["success_rate"] == round(100 * 50 / 60, 1)
    client.force_login(staff["counter"])
    assert client.get("/metering/collection/").status_code == 403
