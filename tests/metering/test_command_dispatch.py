"""Dispatching remote commands to simulated meters over real TCP: confirmation by read-back,
retries with backoff, refusals, work orders, and no duplicate execution when a dispatcher
dies mid-dispatch (in-process, and with a real Celery worker process that is killed)."""

import threading
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from metering.headend.client import Dlt645Adapter
from metering.models import (
    CommandStatus,
    FieldWorkOrder,
    Meter,
    MeterEvent,
    RelayState,
    RemoteCommand,
)
from metering.services import commands as command_services
from metering.services.commands import (
    command_cancel,
    command_dispatch,
    command_request,
    commands_requeue_stale,
)
from tests.celery_worker import celery_worker, wait_until
from tests.metering.command_fixtures import *  # noqa: F403  (fixtures)
from tests.metering.command_fixtures import KEEP_POWER, LOCAL_EMPTY, NOT_IN_FLEET, REMOTE_A, REMOTE_B

pytestmark = pytest.mark.usefixtures("fast_password_hashing", "english")

STATUS3_RELAY_OPEN = 0x10


class WorkerKilled(BaseException):
    """Stands in for the process dying: nothing in the service catches a BaseException."""


def request(meter, action="trip", *, reason="余额低于跳闸阈值", **extra):
    return command_request(meter=meter, action=action, reason=reason, origin="policy", **extra)


def dispatch(cmd):
    return command_dispatch(command_id=cmd.pk, worker="test-dispatcher")


def expire_lease(cmd):
    RemoteCommand.objects.filter(pk=cmd.pk).update(lease_until=timezone.now() - timedelta(seconds=1))


@pytest.fixture
def meter_a(simulator, make_meter):
    return make_meter(REMOTE_A, endpoint=simulator.endpoint_for(REMOTE_A))


# --- confirmation by read-back ----------------------------------------------------------


@pytest.mark.django_db
def test_a_trip_is_confirmed_by_read_back(meter_a, fleet, scheduled):
    cmd = request(meter_a, "trip")

    cmd = dispatch(cmd)

    assert cmd.status == CommandStatus.CONFIRMED
    assert int(cmd.meter_response["status_word_3"], 16) & STATUS3_RELAY_OPEN
    assert cmd.meter_response["relay_open"] is True and cmd.meter_response["frame_sent"] is True
    assert cmd.requested_at <= cmd.queued_at <= cmd.sent_at <= cmd.confirmed_at == cmd.finished_at
    assert cmd.latency_seconds is not None and cmd.lease_until is None
    # exactly one control frame reached the meter, and it tripped
    assert fleet.control_count(REMOTE_A) == 1
    assert fleet.control_count(REMOTE_A, "trip") == 1
    assert fleet.registers(REMOTE_A)["relay_open"] is True
    meter_a.refresh_from_db()
    assert meter_a.relay_state == RelayState.OPEN
    assert meter_a.relay_state_at == cmd.confirmed_at
    (attempt,) = cmd.attempt_log.all()
    assert (attempt.number, attempt.outcome, attempt.worker) == (1, "confirmed", "test-dispatcher")
    assert attempt.sent_at is not None and attempt.finished_at is not None
    # the relay change is audited with the command's context
    event = (
        MeterEvent.objects.filter(pgh_obj_id=meter_a.pk).order_by("-pgh_id").select_related("pgh_context")[0]
    )
    assert event.relay_state == RelayState.OPEN
    meta = event.pgh_context.metadata
    assert meta["action"] == "meter.command_confirmed"
    assert meta["command"] == cmd.pk and meta["reason"] == "余额低于跳闸阈值" and meta["origin"] == "policy"
    assert scheduled == []
    assert not FieldWorkOrder.objects.exists()


@pytest.mark.django_db
def test_close_after_trip(meter_a, fleet, actors):
    dispatch(request(meter_a, "trip"))
    close = command_request(
        meter=meter_a, action="close", reason="客户已缴费", origin="staff", actor=actors["manager"]
    )

    close = dispatch(close)

    assert close.status == CommandStatus.CONFIRMED
    assert close.meter_response["relay_open"] is False
    assert fleet.registers(REMOTE_A)["relay_open"] is False
    assert [fleet.control_count(REMOTE_A, a) for a in ("trip", "close")] == [1, 1]
    meter_a.refresh_from_db()
    assert meter_a.relay_state == RelayState.CLOSED
    event = (
        MeterEvent.objects.filter(pgh_obj_id=meter_a.pk).order_by("-pgh_id").select_related("pgh_context")[0]
    )
    assert event.pgh_context.metadata["username"] == "manager"
    assert event.pgh_context.metadata["org_unit"] == "JN-LC-QX"


@pytest.mark.django_db
def test_dispatching_a_confirmed_command_again_does_nothing(meter_a, fleet):
    cmd = dispatch(request(meter_a, "trip"))
    confirmed_at = cmd.confirmed_at

    again = dispatch(cmd)

    assert again.status == CommandStatus.CONFIRMED and again.confirmed_at == confirmed_at
    assert again.attempts == 1 and again.attempt_log.count() == 1
    assert fleet.control_count(REMOTE_A) == 1


@pytest.mark.django_db
def test_a_meter_already_in_the_commanded_state_is_confirmed_without_a_frame(meter_a, fleet):
    cmd = dispatch(request(meter_a, "close", reason="已缴费"))  # the relay is closed already

    assert cmd.status == CommandStatus.CONFIRMED
    assert cmd.meter_response["frame_sent"] is False
    assert cmd.sent_at is None
    assert cmd.attempt_log.get().outcome == "already_in_state"
    assert fleet.control_count(REMOTE_A) == 0


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("action", "flag", "value"),
    [("alarm_on", "alarm", True), ("keep_power_on", "keep_power", True)],
)
def test_alarm_and_keep_power_commands_are_confirmed_by_their_status_bits(
    meter_a, fleet, action, flag, value
):
    cmd = dispatch(request(meter_a, action, reason="欠费预警"))

    assert cmd.status == CommandStatus.CONFIRMED
    assert cmd.meter_response[flag] is value
    assert fleet.registers(REMOTE_A)[flag] is value
    meter_a.refresh_from_db()
    assert getattr(meter_a, "alarm_on" if flag == "alarm" else flag) is value


# --- refusals: fail at once, one work order ---------------------------------------------


@pytest.mark.django_db
def test_keep_power_blocks_a_trip(simulator, make_meter, fleet):
    meter = make_meter(KEEP_POWER, endpoint=simulator.endpoint_for(KEEP_POWER))
    cmd = request(meter, "trip")

    cmd = dispatch(cmd)

    assert cmd.status == CommandStatus.FAILED
    assert "keep-power (保电) is set" in cmd.last_error and "release keep-power first" in cmd.last_error
    assert cmd.attempts == 1 and cmd.finished_at is not None
    assert fleet.control_count(KEEP_POWER) == 0  # read back first: no frame it would refuse
    assert fleet.registers(KEEP_POWER)["relay_open"] is False
    work_order = FieldWorkOrder.objects.get()
    assert (work_order.command_id, work_order.meter_id, work_order.kind) == (
        cmd.pk,
        meter.pk,
        "command_failed",
    )
    assert "trip" in work_order.description and meter.asset_number in work_order.description
    assert "keep-power" in work_order.description
    meter.refresh_from_db()
    assert meter.keep_power is True  # what the meter reported is recorded

    assert dispatch(cmd).status == CommandStatus.FAILED  # again: nothing more
    assert FieldWorkOrder.objects.count() == 1


@pytest.mark.django_db
def test_a_local_meter_without_credit_refuses_to_close(simulator, make_meter, fleet):
    meter = make_meter(LOCAL_EMPTY, endpoint=simulator.endpoint_for(LOCAL_EMPTY), cost_control_mode="local")

    cmd = dispatch(request(meter, "close", reason="补发合闸"))

    assert cmd.status == CommandStatus.FAILED
    assert cmd.attempts == 1  # a refusal is not retried
    assert "refused" in cmd.last_error and "balance" in cmd.last_error
    assert fleet.control_count(LOCAL_EMPTY, "close") == 1
    assert cmd.attempt_log.get().outcome == "refused"
    assert FieldWorkOrder.objects.get().command_id == cmd.pk


# --- retries ----------------------------------------------------------------------------


@pytest.mark.django_db
def test_a_meter_that_never_answers_is_retried_with_backoff_then_fails_with_one_work_order(
    make_meter, closed_endpoint, scheduled, settings, django_capture_on_commit_callbacks
):
    settings.METERING_COMMAND_BACKOFF_SECONDS = [10, 30, 90]
    meter = make_meter(REMOTE_A, endpoint=closed_endpoint)
    cmd = request(meter, "trip")

    for attempt, wait in ((1, 10), (2, 30), (3, 90)):
        before = timezone.now()
        with django_capture_on_commit_callbacks(execute=True):
            cmd = dispatch(cmd)
        assert cmd.status == CommandStatus.QUEUED
        assert cmd.attempts == attempt
        assert (
            before + timedelta(seconds=wait)
            <= cmd.next_attempt_at
            <= timezone.now() + timedelta(seconds=wait)
        )
        assert scheduled[-1] == (cmd.pk, cmd.next_attempt_at)
        assert "connection refused" in cmd.last_error
        # not due yet: another delivery of the task changes nothing
        assert dispatch(cmd).attempts == attempt
        RemoteCommand.objects.filter(pk=cmd.pk).update(next_attempt_at=timezone.now() - timedelta(seconds=1))

    cmd = dispatch(cmd)

    assert cmd.status == CommandStatus.FAILED
    assert cmd.attempts == cmd.max_attempts == 4
    assert cmd.last_error.startswith("attempt 4 of 4: read-back before sending failed")
    assert [a.outcome for a in cmd.attempt_log.all()] == ["connection"] * 4
    work_order = FieldWorkOrder.objects.get()
    assert work_order.command_id == cmd.pk and "connection refused" in work_order.description
    assert dispatch(cmd).status == CommandStatus.FAILED
    assert FieldWorkOrder.objects.count() == 1


@pytest.mark.django_db
def test_a_silent_meter_times_out_and_is_requeued(simulator, make_meter, fleet, settings):
    settings.METERING_COMMAND_TIMEOUT = 0.3
    meter = make_meter(NOT_IN_FLEET, endpoint=simulator.endpoint_for(REMOTE_A))

    cmd = dispatch(request(meter, "trip"))

    assert cmd.status == CommandStatus.QUEUED and cmd.attempts == 1
    assert "no reply" in cmd.last_error
    assert cmd.attempt_log.get().outcome == "timeout"


@pytest.mark.django_db
def test_an_acknowledged_command_is_not_confirmed_until_the_read_back_shows_it(meter_a, fleet):
    # A meter that answers 9Ch but does not act (it happens): the acknowledgement is not enough.
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Dlt645Adapter, "control_sync", lambda self, *args, **kwargs: None)
        cmd = dispatch(request(meter_a, "trip"))

    assert cmd.status == CommandStatus.QUEUED and cmd.attempts == 1
    assert "acknowledged trip but reads back relay closed" in cmd.last_error
    assert cmd.attempt_log.get().outcome == "unconfirmed"

    RemoteCommand.objects.filter(pk=cmd.pk).update(next_attempt_at=timezone.now())
    cmd = dispatch(cmd)
    assert cmd.status == CommandStatus.CONFIRMED and cmd.attempts == 2
    assert fleet.control_count(REMOTE_A) == 1


# --- no duplicate execution -------------------------------------------------------------


def dispatch_and_die(cmd):
    """Dispatch ``cmd`` in a dispatcher that dies right after the meter acknowledged."""

    def die():
        raise WorkerKilled()

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(command_services, "_test_hook_after_send", die)
        with pytest.raises(WorkerKilled):
            dispatch(cmd)


@pytest.mark.django_db
def test_a_dispatcher_that_died_after_sending_is_resumed_by_read_back_without_a_second_frame(
    meter_a, fleet, scheduled, django_capture_on_commit_callbacks
):
    cmd = request(meter_a, "trip")
    dispatch_and_die(cmd)
    cmd.refresh_from_db()
    assert cmd.status == CommandStatus.SENT and fleet.control_count(REMOTE_A) == 1
    assert fleet.registers(REMOTE_A)["relay_open"] is True  # the meter acted; nobody recorded it

    # The task comes back at once (reject_on_worker_lost): the lease is still live.
    with django_capture_on_commit_callbacks(execute=True):
        assert dispatch(cmd).status == CommandStatus.SENT
    assert scheduled == [(cmd.pk, cmd.lease_until + timedelta(seconds=1))]

    expire_lease(cmd)
    cmd = dispatch(cmd)

    assert cmd.status == CommandStatus.CONFIRMED
    assert cmd.meter_response["frame_sent"] is False
    assert fleet.control_count(REMOTE_A) == 1
    assert cmd.attempts == 1
    (attempt,) = cmd.attempt_log.all()
    assert attempt.outcome == "confirmed_after_resume" and "resumed by test-dispatcher" in attempt.detail
    meter_a.refresh_from_db()
    assert meter_a.relay_state == RelayState.OPEN


@pytest.mark.django_db
def test_the_reaper_requeues_a_dead_dispatchers_command_and_the_next_dispatch_confirms_it(
    meter_a, fleet, scheduled
):
    cmd = request(meter_a, "trip")
    dispatch_and_die(cmd)

    assert commands_requeue_stale(now=timezone.now() + timedelta(minutes=5)) == 1
    cmd.refresh_from_db()
    assert cmd.status == CommandStatus.QUEUED  # back to the queue, nothing resent
    assert fleet.control_count(REMOTE_A) == 1

    cmd = dispatch(cmd)
    assert cmd.status == CommandStatus.CONFIRMED
    assert fleet.control_count(REMOTE_A) == 1


@pytest.mark.django_db
def test_a_frame_that_never_took_effect_is_sent_again_after_the_read_back(meter_a, fleet):
    cmd = request(meter_a, "trip")
    # A dispatcher recorded the send and died before its frame left: the relay is closed.
    now = timezone.now()
    RemoteCommand.objects.filter(pk=cmd.pk).update(
        status=CommandStatus.SENT, attempts=1, sent_at=now, lease_until=now - timedelta(seconds=1)
    )
    cmd.attempt_log.create(number=1, worker="dead", started_at=now, sent_at=now)

    cmd = dispatch(cmd)

    assert cmd.status == CommandStatus.CONFIRMED and cmd.meter_response["frame_sent"] is True
    assert fleet.control_count(REMOTE_A) == 1
    assert cmd.attempts == 2
    assert [(a.number, a.outcome) for a in cmd.attempt_log.all()] == [(1, "not_executed"), (2, "confirmed")]


@pytest.mark.django_db
def test_an_unresolved_last_attempt_that_did_not_take_effect_fails_without_resending(meter_a, fleet):
    cmd = request(meter_a, "trip")
    now = timezone.now()
    RemoteCommand.objects.filter(pk=cmd.pk).update(
        status=CommandStatus.SENT, attempts=4, sent_at=now, lease_until=now - timedelta(seconds=1)
    )
    cmd.attempt_log.create(number=4, worker="dead", started_at=now, sent_at=now)

    cmd = dispatch(cmd)

    assert cmd.status == CommandStatus.FAILED and cmd.attempts == 4
    assert fleet.control_count(REMOTE_A) == 0
    assert FieldWorkOrder.objects.get().command_id == cmd.pk


@pytest.mark.django_db
def test_a_command_cancelled_during_the_read_back_is_not_sent(meter_a, fleet, actors, monkeypatch):
    cmd = request(meter_a, "trip")
    real_read = Dlt645Adapter.read_status_sync

    def read_then_cancel(self, *args, **kwargs):
        status = real_read(self, *args, **kwargs)
        command_cancel(command=cmd, actor=actors["manager"], reason="客户已缴费")
        return status

    monkeypatch.setattr(Dlt645Adapter, "read_status_sync", read_then_cancel)

    result = dispatch(cmd)

    assert result.status == CommandStatus.CANCELLED
    assert fleet.control_count(REMOTE_A) == 0
    assert cmd.attempt_log.get().outcome == "abandoned"


@pytest.mark.django_db(transaction=True)
def test_concurrent_dispatchers_send_one_frame(meter_a, fleet, scheduled):
    cmd = request(meter_a, "trip")
    start = threading.Barrier(6)
    results, errors = [], []

    def run(n):
        try:
            start.wait()
            results.append(command_dispatch(command_id=cmd.pk, worker=f"thread-{n}").status)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=run, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)

    assert errors == []
    cmd.refresh_from_db()
    assert cmd.status == CommandStatus.CONFIRMED
    assert fleet.control_count(REMOTE_A) == 1
    assert cmd.attempt_log.count() == 1
    assert results.count(CommandStatus.CONFIRMED) >= 1


# --- a real worker process, killed between send and record ------------------------------


@pytest.mark.celery_worker
@pytest.mark.django_db(transaction=True)
def test_a_worker_killed_mid_dispatch_does_not_send_the_command_twice(simulator, fleet, make_meter):
    from config.celery import app

    endpoint = simulator.endpoint_for(REMOTE_B)
    meter = make_meter(REMOTE_B)  # no terminal: the worker reaches it at its default endpoint
    app.control.purge()  # messages left in this Redis database by earlier runs
    worker_env = {
        "METERING_DEFAULT_ENDPOINT": endpoint,
        "KILOWATT_TEST_CRASH_AFTER_SEND": "1",  # the child dies right after the meter's ack
        "METERING_COMMAND_TIMEOUT": "1",
        "METERING_COMMAND_LEASE_SECONDS": "6",
    }
    with celery_worker(database_name=connection.settings_dict["NAME"], extra_env=worker_env) as proc:
        cmd = request(meter, "trip")  # committed: its dispatch task goes to the broker
        confirmed = wait_until(
            lambda: RemoteCommand.objects.filter(pk=cmd.pk, status=CommandStatus.CONFIRMED).exists(),
            timeout=45,
        )
    output = proc.stdout.read()

    cmd.refresh_from_db()
    assert confirmed, f"command {cmd.status}: {cmd.last_error}\nworker output:\n{output[-4000:]}"
    assert "exitcode 1" in output  # the worker child really died mid-dispatch
    assert fleet.control_count(REMOTE_B) == 1
    assert fleet.registers(REMOTE_B)["relay_open"] is True
    (attempt,) = cmd.attempt_log.all()
    assert attempt.outcome == "confirmed_after_resume"
    assert cmd.meter_response["frame_sent"] is False
    assert Meter.objects.get(pk=meter.pk).relay_state == RelayState.OPEN


def test_the_test_hook_is_off_unless_its_variable_is_set(monkeypatch):
    monkeypatch.delenv("KILOWATT_TEST_CRASH_AFTER_SEND", raising=False)
    command_services._test_hook_after_send()  # returns: the process lives on
