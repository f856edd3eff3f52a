"""Remote commands requested in bulk by the system (``commands_request_many``): the same
rules as ``command_request`` one after another — idempotency by key, supersession of the
meter's active relay command, checks — with fewer statements."""

from datetime import timedelta

import pytest
from django.utils import timezone

from core.exceptions import Conflict, NotFound, ValidationError
from metering.models import CommandStatus, CostControlMode, MeterStatus, RemoteCommand
from metering.services.commands import command_dispatch, command_request, commands_request_many
from tests.metering.command_fixtures import *  # noqa: F403  (fixtures)
from tests.metering.command_fixtures import REMOTE_A, REMOTE_B

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("fast_password_hashing", "english")]


@pytest.fixture
def meters(make_meter, closed_endpoint):
    return make_meter(REMOTE_A, endpoint=closed_endpoint), make_meter(REMOTE_B, endpoint=closed_endpoint)


def test_bulk_request_queues_each_command_and_schedules_dispatch_after_commit(
    meters, scheduled, django_capture_on_commit_callbacks
):
    a, b = meters
    with django_capture_on_commit_callbacks(execute=True):
        got = commands_request_many(
            [(b.pk, "trip", "余额不足", "k:b"), (a.pk, "trip", "余额不足", "k:a")], origin="policy"
        )
        assert scheduled == []  # nothing leaves before the commit
    assert set(got) == {"k:a", "k:b"}
    for key, meter in (("k:a", a), ("k:b", b)):
        cmd = RemoteCommand.objects.get(pk=got[key].pk)
        assert (cmd.meter_id, cmd.action, cmd.origin, cmd.reason) == (meter.pk, "trip", "policy", "余额不足")
        assert cmd.status == CommandStatus.QUEUED and cmd.queued_at is not None
        assert cmd.next_attempt_at is None and cmd.attempts == 0 and cmd.requested_by_id is None
        assert cmd.valid_until - cmd.requested_at == pytest.approx(
            timedelta(minutes=30), abs=timedelta(seconds=1)
        )
    assert sorted(scheduled) == sorted([(got["k:a"].pk, None), (got["k:b"].pk, None)])


def test_the_same_key_twice_gives_one_command_and_a_replay_returns_it(meters):
    a, _b = meters
    got = commands_request_many([(a.pk, "trip", "余额不足", "k:1"), (a.pk, "trip", "again", "k:1")])
    assert RemoteCommand.objects.count() == 1
    assert got["k:1"].reason == "余额不足"  # the first request of the key
    # A replay of the call (and a single request with the key) returns the same command.
    again = commands_request_many([(a.pk, "trip", "重复投递", "k:1")])
    assert again["k:1"].pk == got["k:1"].pk
    assert command_request(meter=a, action="trip", reason="x", origin="policy", idempotency_key="k:1").pk == (
        got["k:1"].pk
    )
    assert RemoteCommand.objects.count() == 1
    # A key names one meter and one action.
    with pytest.raises(Conflict):
        commands_request_many([(a.pk, "close", "已缴费", "k:1")])
    with pytest.raises(Conflict):
        commands_request_many([(a.pk, "trip", "r", "k:2"), (a.pk, "close", "r", "k:2")])


def test_bulk_request_supersedes_the_active_relay_command_like_command_request(meters):
    a, b = meters
    queued_trip = command_request(meter=a, action="trip", reason="余额不足", origin="policy")
    in_flight_trip = command_request(meter=b, action="trip", reason="余额不足", origin="policy")
    lease_until = timezone.now() + timedelta(seconds=20)
    RemoteCommand.objects.filter(pk=in_flight_trip.pk).update(
        status=CommandStatus.SENT, sent_at=timezone.now(), attempts=1, lease_until=lease_until
    )

    got = commands_request_many([(a.pk, "close", "已缴费", "close:a"), (b.pk, "close", "已缴费", "close:b")])

    queued_trip.refresh_from_db()
    in_flight_trip.refresh_from_db()
    close_a, close_b = got["close:a"], got["close:b"]
    assert queued_trip.status == in_flight_trip.status == CommandStatus.CANCELLED
    assert queued_trip.last_error == f"superseded by command {close_a.pk} (close)"
    assert in_flight_trip.last_error.startswith(f"superseded by command {close_b.pk} (close) while in flight")
    assert close_a.next_attempt_at is None
    assert close_b.next_attempt_at == lease_until  # held until the old frame can no longer arrive
    assert command_dispatch(command_id=close_b.pk).attempts == 0  # not before then
    # one active relay command per meter
    active = RemoteCommand.objects.filter(status__in=["requested", "queued", "sent"])
    assert sorted(active.values_list("pk", flat=True)) == sorted([close_a.pk, close_b.pk])


def test_two_keys_for_one_meter_are_taken_in_order(meters):
    a, _b = meters
    got = commands_request_many([(a.pk, "trip", "余额不足", "t"), (a.pk, "close", "已缴费", "c")])
    trip = RemoteCommand.objects.get(pk=got["t"].pk)
    assert trip.status == CommandStatus.CANCELLED
    assert trip.last_error == f"superseded by command {got['c'].pk} (close)"
    assert got["c"].status == CommandStatus.QUEUED


def test_bulk_request_checks(meters, make_meter, closed_endpoint):
    a, _b = meters
    with pytest.raises(ValidationError):
        commands_request_many([(a.pk, "trip", "r", "s")], origin="staff")  # staff go one by one
    with pytest.raises(ValidationError):
        commands_request_many([(a.pk, "trip", "  ", "blank")])
    with pytest.raises(ValidationError):
        commands_request_many([(a.pk, "trip", "r", "")])
    with pytest.raises(NotFound):
        commands_request_many([(a.pk + 10_000, "trip", "r", "nope")])
    removed = make_meter("930000000555", endpoint=closed_endpoint, status=MeterStatus.REMOVED)
    with pytest.raises(ValidationError):
        commands_request_many([(removed.pk, "trip", "r", "removed")])
    manual = make_meter("930000000556", endpoint=closed_endpoint, cost_control_mode=CostControlMode.NONE)
    with pytest.raises(ValidationError):
        commands_request_many([(manual.pk, "trip", "r", "manual")])
    assert RemoteCommand.objects.count() == 0
