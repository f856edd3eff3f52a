"""Remote commands: the life cycle without the meter's side (request, supersede, cancel,
permissions, expiry, the reaper, latency figures). Dispatch against the simulator is in
test_command_dispatch.py."""

from datetime import timedelta

import pytest
from django.utils import timezone

from core.exceptions import Conflict, NotFound, PermissionDenied, ValidationError
from metering.models import (
    COMMAND_TRANSITIONS,
    CommandAttempt,
    CommandStatus,
    CostControlMode,
    FieldWorkOrder,
    MeterStatus,
    RemoteCommand,
)
from metering.services.commands import (
    _transition,
    backoff_seconds,
    command_cancel,
    command_dispatch,
    command_latency_stats,
    command_request,
    commands_requeue_stale,
)
from tests.metering.command_fixtures import *  # noqa: F403  (fixtures)
from tests.metering.command_fixtures import REMOTE_A

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("fast_password_hashing", "english")]

ALL_STATUSES = list(CommandStatus)


def request(meter, action="trip", *, actor=None, origin="policy", reason="余额不足", **extra):
    return command_request(meter=meter, action=action, reason=reason, origin=origin, actor=actor, **extra)


@pytest.fixture
def meter(make_meter, closed_endpoint):
    return make_meter(REMOTE_A, endpoint=closed_endpoint)


# --- the transition table -----------------------------------------------------------------


@pytest.mark.parametrize("source", ALL_STATUSES)
@pytest.mark.parametrize("target", ALL_STATUSES)
def test_only_the_transitions_in_the_table_are_allowed(source, target):
    cmd = RemoteCommand(status=source)  # unsaved: _transition only sets fields
    if target in COMMAND_TRANSITIONS[source]:
        _transition(cmd, target)
        assert cmd.status == target
    else:
        with pytest.raises(Conflict):
            _transition(cmd, target)
        assert cmd.status == source


def test_each_step_stamps_its_time_and_final_steps_end_the_lease():
    now = timezone.now()
    cmd = RemoteCommand(status=CommandStatus.REQUESTED)
    _transition(cmd, CommandStatus.QUEUED, now=now)
    assert cmd.queued_at == now
    _transition(
        cmd, CommandStatus.SENT, now=now + timedelta(seconds=1), lease_until=now + timedelta(minutes=1)
    )
    assert cmd.sent_at == now + timedelta(seconds=1)
    # back to the queue for another attempt: queued_at keeps the first queueing
    _transition(cmd, CommandStatus.QUEUED, now=now + timedelta(seconds=2))
    assert cmd.queued_at == now
    _transition(cmd, CommandStatus.CONFIRMED, now=now + timedelta(seconds=3))
    assert cmd.confirmed_at == cmd.finished_at == now + timedelta(seconds=3)
    assert cmd.lease_until is None and cmd.next_attempt_at is None
    with pytest.raises(Conflict):
        _transition(cmd, CommandStatus.QUEUED)


def test_backoff_grows_and_is_capped(settings):
    settings.METERING_COMMAND_BACKOFF_SECONDS = [10, 30, 90]
    assert [backoff_seconds(n) for n in (1, 2, 3, 4, 9)] == [10, 30, 90, 90, 90]


# --- request ----------------------------------------------------------------------------


def test_a_request_is_queued_with_its_timestamps_and_dispatched_after_commit(
    meter, actors, scheduled, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        cmd = request(meter, actor=actors["manager"], origin="staff", reason="客户申请停电检修")

    cmd.refresh_from_db()
    assert cmd.status == CommandStatus.QUEUED
    assert cmd.requested_by_id == actors["manager"].user_id
    assert cmd.requested_at <= cmd.queued_at
    assert cmd.valid_until - cmd.requested_at == pytest.approx(
        timedelta(minutes=30), abs=timedelta(seconds=1)
    )
    assert cmd.attempts == 0 and cmd.sent_at is None
    assert scheduled == [(cmd.pk, None)]


def test_nothing_is_scheduled_when_the_transaction_rolls_back(
    meter, scheduled, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks() as callbacks:
        request(meter)
    assert len(callbacks) == 1  # registered for the commit, not run before it
    assert scheduled == []


def test_the_same_idempotency_key_returns_the_same_command(meter, make_meter, closed_endpoint):
    first = request(meter, idempotency_key="policy:trip:42")
    again = request(meter, idempotency_key="policy:trip:42", reason="重复投递")
    assert again.pk == first.pk
    assert again.reason == first.reason
    assert RemoteCommand.objects.count() == 1

    other = make_meter("930000000777", endpoint=closed_endpoint)
    with pytest.raises(Conflict):
        request(other, idempotency_key="policy:trip:42")
    with pytest.raises(Conflict):
        request(meter, "close", idempotency_key="policy:trip:42")


def test_a_new_relay_command_supersedes_the_queued_one(meter):
    trip = request(meter, "trip")
    close = request(meter, "close", reason="已缴费")

    trip.refresh_from_db()
    assert trip.status == CommandStatus.CANCELLED
    assert trip.finished_at is not None
    assert trip.last_error == f"superseded by command {close.pk} (close)"
    assert close.status == CommandStatus.QUEUED and close.next_attempt_at is None
    # alarm and keep-power commands are not relay commands: they do not supersede
    alarm = request(meter, "alarm_on", reason="预警")
    close.refresh_from_db()
    assert close.status == alarm.status == CommandStatus.QUEUED


def test_superseding_a_command_in_flight_holds_the_new_one_until_the_old_lease_ends(meter):
    trip = request(meter, "trip")
    lease_until = timezone.now() + timedelta(seconds=20)
    RemoteCommand.objects.filter(pk=trip.pk).update(
        status=CommandStatus.SENT, sent_at=timezone.now(), attempts=1, lease_until=lease_until
    )

    close = request(meter, "close", reason="已缴费")

    trip.refresh_from_db()
    assert trip.status == CommandStatus.CANCELLED
    assert "while in flight" in trip.last_error
    assert close.next_attempt_at == lease_until
    # dispatching the close before then does nothing (and reaches no meter)
    assert command_dispatch(command_id=close.pk).attempts == 0


# --- permissions and checks --------------------------------------------------------------


def test_who_may_request_a_command(meter, actors, make_meter, closed_endpoint):
    with pytest.raises(PermissionDenied):
        request(meter, actor=actors["inspector"], origin="staff")
    with pytest.raises(PermissionDenied):
        request(meter, actor=actors["counter"], origin="staff")
    with pytest.raises(PermissionDenied):
        request(meter, actor=None, origin="staff")
    with pytest.raises(NotFound):  # a manager of the other county does not see the meter
        request(meter, actor=actors["manager_bs"], origin="staff")

    by_manager = request(meter, actor=actors["manager"], origin="staff")
    assert by_manager.requested_by_id == actors["manager"].user_id
    bs_meter = make_meter("930000000555", endpoint=closed_endpoint, area_key="bs_s1")
    assert request(bs_meter, actor=actors["manager_bs"], origin="staff").status == CommandStatus.QUEUED
    assert request(bs_meter, "close", actor=actors["admin"], origin="staff").status == CommandStatus.QUEUED
    assert RemoteCommand.objects.count() == 3


def test_a_reason_is_required(meter, actors):
    with pytest.raises(ValidationError) as excinfo:
        request(meter, actor=actors["manager"], origin="staff", reason="  ")
    assert "reason" in excinfo.value.field_errors
    assert not RemoteCommand.objects.exists()


def test_only_installed_meters_with_cost_control_take_relay_commands(
    meter, actors, make_meter, closed_endpoint
):
    in_stock = make_meter("930000000321", endpoint=closed_endpoint, status=MeterStatus.IN_STOCK)
    with pytest.raises(ValidationError):
        request(in_stock, actor=actors["admin"], origin="staff")

    no_control = make_meter("930000000322", endpoint=closed_endpoint, cost_control_mode=CostControlMode.NONE)
    with pytest.raises(ValidationError):
        request(no_control, actor=actors["manager"], origin="staff")
    with pytest.raises(ValidationError):
        request(no_control, origin="policy")
    assert request(no_control, "alarm_on", actor=actors["manager"], origin="staff").action == "alarm_on"
    assert request(no_control, actor=actors["admin"], origin="staff").status == CommandStatus.QUEUED


# --- cancel -----------------------------------------------------------------------------


def test_cancel_a_queued_command(meter, actors):
    cmd = request(meter)
    with pytest.raises(PermissionDenied):
        command_cancel(command=cmd, actor=actors["inspector"], reason="误操作")
    with pytest.raises(NotFound):
        command_cancel(command=cmd, actor=actors["manager_bs"], reason="误操作")
    with pytest.raises(ValidationError):
        command_cancel(command=cmd, actor=actors["manager"], reason="")

    cancelled = command_cancel(command=cmd, actor=actors["manager"], reason="误操作")
    assert cancelled.status == CommandStatus.CANCELLED
    assert cancelled.last_error == "cancelled by manager: 误操作"
    assert cancelled.finished_at is not None
    with pytest.raises(Conflict):
        command_cancel(command=cmd, actor=actors["manager"], reason="again")


def test_a_sent_command_cannot_be_cancelled(meter, actors):
    cmd = request(meter)
    RemoteCommand.objects.filter(pk=cmd.pk).update(status=CommandStatus.SENT, sent_at=timezone.now())
    with pytest.raises(Conflict):
        command_cancel(command=cmd, actor=actors["manager"], reason="太迟了")


# --- expiry and unsupported actions -------------------------------------------------------


def test_a_command_past_its_validity_times_out_without_reaching_the_meter(meter):
    cmd = request(meter, valid_for=timedelta(minutes=5))
    RemoteCommand.objects.filter(pk=cmd.pk).update(valid_until=timezone.now() - timedelta(seconds=1))

    cmd = command_dispatch(command_id=cmd.pk)

    assert cmd.status == CommandStatus.TIMED_OUT
    assert cmd.finished_at is not None
    assert "validity ended" in cmd.last_error
    assert cmd.attempts == 0 and not CommandAttempt.objects.exists()
    assert not FieldWorkOrder.objects.exists()


@pytest.mark.parametrize("action", ["parameter_download", "tariff_download", "firmware_upgrade"])
def test_actions_the_protocol_lacks_fail_at_once_without_a_work_order(meter, action):
    cmd = request(meter, action, parameters={"version": "2.1"}, reason="升级")
    assert cmd.status == CommandStatus.QUEUED

    cmd = command_dispatch(command_id=cmd.pk)

    assert cmd.status == CommandStatus.FAILED
    assert cmd.last_error == f"{action} is not supported by protocol dlt645-2007"
    assert cmd.attempts == 0
    assert not FieldWorkOrder.objects.exists()


def test_dispatching_an_unknown_command_is_not_found():
    with pytest.raises(NotFound):
        command_dispatch(command_id=987654)


# --- the reaper ---------------------------------------------------------------------------


def test_the_reaper_requeues_sent_commands_whose_lease_ran_out_and_nothing_else(
    meter, make_meter, closed_endpoint, scheduled, django_capture_on_commit_callbacks
):
    now = timezone.now()
    stale = request(meter)
    live_meter = make_meter("930000000401", endpoint=closed_endpoint)
    live = request(live_meter)
    fresh = request(make_meter("930000000402", endpoint=closed_endpoint))
    late = request(make_meter("930000000403", endpoint=closed_endpoint))
    RemoteCommand.objects.filter(pk=stale.pk).update(
        status=CommandStatus.SENT, sent_at=now, attempts=1, lease_until=now - timedelta(seconds=1)
    )
    RemoteCommand.objects.filter(pk=live.pk).update(
        status=CommandStatus.SENT, sent_at=now, attempts=1, lease_until=now + timedelta(seconds=30)
    )
    RemoteCommand.objects.filter(pk=late.pk).update(queued_at=now - timedelta(minutes=10))

    with django_capture_on_commit_callbacks(execute=True):
        assert commands_requeue_stale(now=now) == 2

    stale.refresh_from_db()
    assert stale.status == CommandStatus.QUEUED  # not resent: the next dispatch reads back first
    assert stale.lease_until is None and stale.attempts == 1
    assert "outcome unknown" in stale.last_error
    live.refresh_from_db()
    assert live.status == CommandStatus.SENT
    fresh.refresh_from_db()
    assert fresh.status == CommandStatus.QUEUED
    assert sorted(scheduled) == sorted([(stale.pk, None), (late.pk, None)])


# --- latency ------------------------------------------------------------------------------


def test_latency_figures_from_requested_to_confirmed(make_meter, closed_endpoint):
    assert command_latency_stats(RemoteCommand.objects.all()) == {
        "count": 0,
        "median": None,
        "p95": None,
        "max": None,
    }
    for i, seconds in enumerate([2, 4, 6, 8, 100]):
        cmd = request(make_meter(f"93000000070{i}", endpoint=closed_endpoint))
        RemoteCommand.objects.filter(pk=cmd.pk).update(
            status=CommandStatus.CONFIRMED, confirmed_at=cmd.requested_at + timedelta(seconds=seconds)
        )
    request(make_meter("930000000799", endpoint=closed_endpoint))  # not confirmed: not counted

    stats = command_latency_stats(RemoteCommand.objects.all())

    # percentile_cont: p95 lies between 8 and 100 at 0.95 × 4 = 3.8 → 8 + 0.8 × 92 = 81.6
    assert stats == {"count": 5, "median": 6.0, "p95": 81.6, "max": 100.0}
