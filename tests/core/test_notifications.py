"""The notification outbox: idempotent enqueue, delivery through pluggable senders,
retries with backoff, and no double send by concurrent workers (real PostgreSQL)."""

import threading
import time
from datetime import timedelta

import pytest
from django.core import mail
from django.db import connection, transaction
from django.utils import timezone

from core.exceptions import NotFound, ValidationError
from core.models import Notification, NotificationStatus
from core.notifications import SendError
from core.services import notifications as svc
from core.services.notifications import (
    notification_cancel,
    notification_deliver,
    notification_enqueue,
    notifications_for_customer,
    notifications_requeue_due,
)

# --- test senders (named by dotted path in settings.NOTIFICATION_SENDERS) ------------------


class RecordingSender:
    """Counts sends; sleeps first so that a concurrent worker has time to interfere."""

    calls: list = []
    delay = 0.0
    lock = threading.Lock()

    def send(self, notification):
        time.sleep(type(self).delay)
        with type(self).lock:
            type(self).calls.append(notification.pk)
        return f"rec-{notification.pk}"


class FailingSender:
    calls = 0

    def send(self, notification):
        type(self).calls += 1
        raise ConnectionError("gateway unreachable")


class FlakySender:
    """Fails the first time, then delivers."""

    calls = 0

    def send(self, notification):
        type(self).calls += 1
        if type(self).calls == 1:
            raise SendError("gateway busy")
        return "flaky-ok"


class RejectingSender:
    def send(self, notification):
        raise SendError("number is on the provider's block list", permanent=True)


@pytest.fixture(autouse=True)
def _reset_senders():
    RecordingSender.calls = []
    RecordingSender.delay = 0.0
    FailingSender.calls = 0
    FlakySender.calls = 0


@pytest.fixture
def scheduled(monkeypatch):
    """Delivery scheduling as (id, at) calls instead of messages to the broker."""
    calls = []
    monkeypatch.setattr(
        svc, "_schedule_delivery", lambda notification_id, *, at=None: calls.append((notification_id, at))
    )
    return calls


@pytest.fixture
def use_sender(settings):
    def use(channel, name):
        settings.NOTIFICATION_SENDERS = {
            **settings.NOTIFICATION_SENDERS,
            channel: f"tests.core.test_notifications.{name}",
        }

    return use


def _sms(**overrides):
    values = dict(channel="sms", topic="low_balance_1", recipient="13812345678", body="余额不足，请缴费。")
    values.update(overrides)
    return notification_enqueue(**values)


# --- enqueue ---------------------------------------------------------------------------------


@pytest.mark.django_db
def test_enqueue_records_pending_and_schedules_after_commit(scheduled, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        n = _sms(customer_id=7, account_id=70)
        assert scheduled == []  # nothing leaves before the commit
    n.refresh_from_db()
    assert n.status == NotificationStatus.PENDING
    assert n.recipient == "+8613812345678"  # stored in E.164
    assert (n.customer_id, n.account_id, n.attempts) == (7, 70, 0)
    assert n.next_attempt_at is not None  # due now
    assert scheduled == [(n.pk, None)]


@pytest.mark.django_db
def test_enqueue_is_idempotent_on_dedupe_key(scheduled, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        first = _sms(dedupe_key="low_balance_1:account:70:2026-10-01")
        again = _sms(dedupe_key="low_balance_1:account:70:2026-10-01", body="another text")
    assert again.pk == first.pk
    assert again.body == "余额不足，请缴费。"  # the first one, unchanged
    assert Notification.objects.filter(dedupe_key="low_balance_1:account:70:2026-10-01").count() == 1
    assert scheduled == [(first.pk, None)]  # queued once
    # No key: two events, two notifications.
    _sms()
    _sms()
    assert Notification.objects.filter(dedupe_key__isnull=True).count() == 2


@pytest.mark.django_db
@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(channel="sms", recipient=""), "recipient"),
        (dict(channel="sms", recipient="12345"), "recipient"),
        (dict(channel="sms", recipient="010-62345678"), "recipient"),  # a Beijing landline: no SMS
        (dict(channel="email", recipient="zhang.san@"), "recipient"),
        (dict(channel="email", recipient="13812345678"), "recipient"),
        (dict(channel="portal", recipient=""), "customer_id"),
        (dict(channel="fax", recipient="123"), "channel"),
        (dict(channel="sms", recipient="13812345678", body="   "), "body"),
    ],
)
def test_enqueue_rejects_a_recipient_that_does_not_fit_the_channel(scheduled, english, kwargs, field):
    values = dict(topic="other", body="hello")
    values.update(kwargs)
    with pytest.raises(ValidationError) as err:
        notification_enqueue(**values)
    assert field in err.value.field_errors
    assert Notification.objects.count() == 0


@pytest.mark.django_db
def test_enqueue_email_and_portal(scheduled):
    email = notification_enqueue(
        channel="email",
        topic="payment_receipt",
        recipient="zhang.san@example.cn",
        subject="Receipt",
        body="Paid",
    )
    portal = notification_enqueue(channel="portal", topic="trip", customer_id=7, body="Supply cut off")
    assert email.recipient == "zhang.san@example.cn"
    assert (portal.recipient, portal.customer_id) == ("", 7)


# --- delivery ----------------------------------------------------------------------------------


@pytest.mark.django_db
def test_deliver_sms_through_the_console_sender(scheduled, capsys):
    n = _sms()
    result = notification_deliver(notification_id=n.pk)
    assert result.status == NotificationStatus.SENT
    assert result.attempts == 1
    assert result.provider_message_id.startswith("console-sms-")
    assert result.sent_at is not None and result.lease_until is None and result.next_attempt_at is None
    out = capsys.readouterr().out
    assert out.count("\n") == 1
    assert "+8613812345678" in out and "余额不足" in out
    # Delivering again changes nothing and sends nothing.
    again = notification_deliver(notification_id=n.pk)
    assert again.status == NotificationStatus.SENT and again.attempts == 1
    assert capsys.readouterr().out == ""


@pytest.mark.django_db
def test_deliver_email_through_django_mail(scheduled):
    n = notification_enqueue(
        channel="email",
        topic="payment_receipt",
        recipient="zhang.san@example.cn",
        subject="Receipt",
        body="Paid",
    )
    result = notification_deliver(notification_id=n.pk)
    assert result.status == NotificationStatus.SENT
    assert len(mail.outbox) == 1
    message = mail.outbox[0]
    assert (message.subject, message.to, message.body) == ("Receipt", ["zhang.san@example.cn"], "Paid")
    assert message.extra_headers["Message-ID"] == result.provider_message_id


@pytest.mark.django_db
def test_portal_notification_is_sent_without_outside_delivery(scheduled):
    n = notification_enqueue(channel="portal", topic="trip", customer_id=7, body="Supply cut off")
    result = notification_deliver(notification_id=n.pk)
    assert (result.status, result.provider_message_id) == (NotificationStatus.SENT, f"portal-{n.pk}")


@pytest.mark.django_db
def test_retry_with_backoff_then_failure(scheduled, settings, use_sender, django_capture_on_commit_callbacks):
    use_sender("sms", "FailingSender")
    settings.NOTIFICATION_MAX_ATTEMPTS = 3
    settings.NOTIFICATION_BACKOFF_SECONDS = [30, 120]
    n = _sms()

    before = timezone.now()
    with django_capture_on_commit_callbacks(execute=True):
        first = notification_deliver(notification_id=n.pk)
    after = timezone.now()
    assert (first.status, first.attempts) == (NotificationStatus.PENDING, 1)
    assert "gateway unreachable" in first.last_error
    # Attempt 1 failed: the next one is 30 s later (first backoff step).
    assert before + timedelta(seconds=30) <= first.next_attempt_at <= after + timedelta(seconds=30)
    assert scheduled[-1] == (n.pk, first.next_attempt_at)

    # Not due yet: a redelivered task sends nothing.
    early = notification_deliver(notification_id=n.pk)
    assert (early.status, early.attempts, FailingSender.calls) == (NotificationStatus.PENDING, 1, 1)

    Notification.objects.filter(pk=n.pk).update(next_attempt_at=timezone.now() - timedelta(seconds=1))
    before = timezone.now()
    second = notification_deliver(notification_id=n.pk)
    after = timezone.now()
    assert (second.status, second.attempts) == (NotificationStatus.PENDING, 2)
    # Attempt 2 failed: 120 s (second step).
    assert before + timedelta(seconds=120) <= second.next_attempt_at <= after + timedelta(seconds=120)

    Notification.objects.filter(pk=n.pk).update(next_attempt_at=timezone.now() - timedelta(seconds=1))
    third = notification_deliver(notification_id=n.pk)
    assert (third.status, third.attempts, FailingSender.calls) == (NotificationStatus.FAILED, 3, 3)
    assert third.last_error == "attempt 3: ConnectionError: gateway unreachable"
    assert third.next_attempt_at is None and third.sent_at is None

    # Failed is final.
    assert notification_deliver(notification_id=n.pk).attempts == 3
    assert FailingSender.calls == 3


@pytest.mark.django_db
def test_a_failed_attempt_then_success(scheduled, use_sender):
    use_sender("sms", "FlakySender")
    n = _sms()
    assert notification_deliver(notification_id=n.pk).status == NotificationStatus.PENDING
    Notification.objects.filter(pk=n.pk).update(next_attempt_at=timezone.now() - timedelta(seconds=1))
    done = notification_deliver(notification_id=n.pk)
    assert (done.status, done.attempts, done.provider_message_id) == (NotificationStatus.SENT, 2, "flaky-ok")
    assert done.last_error == "attempt 1: gateway busy"  # kept as history of the delivery


@pytest.mark.django_db
def test_permanent_error_fails_at_once(scheduled, use_sender):
    use_sender("sms", "RejectingSender")
    result = notification_deliver(notification_id=_sms().pk)
    assert (result.status, result.attempts) == (NotificationStatus.FAILED, 1)
    assert "block list" in result.last_error


@pytest.mark.django_db
def test_unknown_notification_and_cancel(scheduled, use_sender):
    with pytest.raises(NotFound):
        notification_deliver(notification_id=987654321)
    use_sender("sms", "RecordingSender")
    n = _sms()
    cancelled = notification_cancel(notification_id=n.pk, reason="customer paid")
    assert cancelled.status == NotificationStatus.CANCELLED
    assert notification_deliver(notification_id=n.pk).status == NotificationStatus.CANCELLED
    assert RecordingSender.calls == []


@pytest.mark.django_db
def test_a_worker_that_lost_its_claim_writes_nothing(scheduled, use_sender):
    """Worker A claims, hangs past its lease; worker B claims and delivers; A's late result
    must not overwrite B's."""
    use_sender("sms", "RecordingSender")
    n = _sms()
    _, token_a = svc._claim(n.pk)
    Notification.objects.filter(pk=n.pk).update(lease_until=timezone.now() - timedelta(seconds=1))
    b = notification_deliver(notification_id=n.pk, worker="B")
    assert (b.status, b.attempts, b.provider_message_id) == (NotificationStatus.SENT, 2, f"rec-{n.pk}")
    late = svc._record_failure(n.pk, token_a, "timeout", permanent=False, worker="A")
    assert (late.status, late.attempts, late.last_error) == (NotificationStatus.SENT, 2, "")


@pytest.mark.django_db
def test_sweep_requeues_overdue_pending_and_expired_claims(scheduled):
    now = timezone.now()
    overdue = _sms()
    fresh = _sms()
    stuck = _sms()
    done = _sms()
    Notification.objects.filter(pk=overdue.pk).update(next_attempt_at=now - timedelta(minutes=10))
    Notification.objects.filter(pk=fresh.pk).update(next_attempt_at=now - timedelta(seconds=30))
    Notification.objects.filter(pk=stuck.pk).update(
        status="sending",
        attempts=1,
        lease_until=now - timedelta(minutes=5),
        next_attempt_at=now - timedelta(minutes=5),
    )
    Notification.objects.filter(pk=done.pk).update(status="sent", sent_at=now, next_attempt_at=None)
    scheduled.clear()

    assert notifications_requeue_due(now=now) == 2
    assert sorted(pk for pk, _ in scheduled) == sorted([overdue.pk, stuck.pk])

    # The stuck one is claimed again: its earlier attempt counts (at-least-once delivery).
    resent = notification_deliver(notification_id=stuck.pk)
    assert (resent.status, resent.attempts) == (NotificationStatus.SENT, 2)


@pytest.mark.django_db
def test_notifications_for_customer_newest_first(scheduled):
    a = notification_enqueue(channel="portal", topic="trip", customer_id=7, body="1")
    b = notification_enqueue(channel="portal", topic="restore", customer_id=7, body="2")
    c = _sms(customer_id=7)
    notification_enqueue(channel="portal", topic="trip", customer_id=8, body="other customer")
    assert [n.pk for n in notifications_for_customer(customer_id=7, limit=10)] == [c.pk, b.pk, a.pk]
    assert [n.pk for n in notifications_for_customer(customer_id=7, limit=2)] == [c.pk, b.pk]


# --- concurrency on PostgreSQL ------------------------------------------------------------------


def _in_threads(count, target):
    barrier = threading.Barrier(count)
    results, errors = [None] * count, []

    def run(i):
        try:
            barrier.wait()
            results[i] = target(i)
        except Exception as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert errors == []
    return results


@pytest.mark.django_db(transaction=True)
def test_concurrent_deliver_sends_once(scheduled, use_sender):
    use_sender("sms", "RecordingSender")
    RecordingSender.delay = 0.5  # the send outlasts the other worker's claim attempt
    n = _sms()

    results = _in_threads(2, lambda i: notification_deliver(notification_id=n.pk, worker=f"w{i}").status)

    assert RecordingSender.calls == [n.pk]
    n.refresh_from_db()
    assert (n.status, n.attempts) == (NotificationStatus.SENT, 1)
    # One worker delivered; the other found the row locked or claimed and left it alone.
    assert NotificationStatus.SENT in results


@pytest.mark.django_db(transaction=True)
def test_concurrent_enqueue_with_one_dedupe_key_queues_once(scheduled):
    def enqueue(i):
        with transaction.atomic():
            n = _sms(dedupe_key="trip:account:70:1", body=f"from {i}")
            time.sleep(0.3)  # hold the transaction open while the other one inserts
            return n.pk

    pks = _in_threads(2, enqueue)
    assert pks[0] == pks[1]
    assert Notification.objects.filter(dedupe_key="trip:account:70:1").count() == 1
    assert [pk for pk, _ in scheduled] == [pks[0]]


@pytest.mark.django_db(transaction=True)
def test_end_to_end_enqueue_commit_then_task_delivers(use_sender):
    """Through the real on_commit hook and Celery task (run eagerly, no broker)."""
    from config.celery import app

    use_sender("sms", "RecordingSender")
    eager = app.conf.task_always_eager
    app.conf.task_always_eager = True
    try:
        with transaction.atomic():
            n = _sms(dedupe_key="e2e:1")
            assert RecordingSender.calls == []  # not before the commit
    finally:
        app.conf.task_always_eager = eager
    assert RecordingSender.calls == [n.pk]
    n.refresh_from_db()
    assert n.status == NotificationStatus.SENT


# --- enqueue many ------------------------------------------------------------------------------


@pytest.fixture
def scheduled_many(monkeypatch):
    """Bulk delivery scheduling as lists of ids instead of messages to the broker."""
    calls = []
    monkeypatch.setattr(svc, "_schedule_delivery_many", lambda ids: calls.append(list(ids)))
    return calls


def _item(**overrides):
    values = dict(channel="sms", topic="low_balance_1", recipient="13812345678", body="余额不足，请缴费。")
    values.update(overrides)
    return values


@pytest.mark.django_db
def test_enqueue_many_inserts_new_ones_once_and_schedules_one_task_after_commit(
    scheduled, scheduled_many, django_capture_on_commit_callbacks
):
    stored = _sms(dedupe_key="many:stored")  # already in the outbox: not queued again
    scheduled.clear()
    with django_capture_on_commit_callbacks(execute=True):
        created = svc.notifications_enqueue_many(
            [
                _item(dedupe_key="many:stored", body="ignored"),
                _item(dedupe_key="many:1", customer_id=7, account_id=70),
                _item(dedupe_key="many:1", body="same key again: ignored"),
                _item(channel="portal", recipient="", customer_id=7, dedupe_key="many:2"),
                _item(channel="email", recipient="a@example.cn", subject="x" * 300, dedupe_key="many:3"),
                _item(),  # no key: always new
            ]
        )
        assert scheduled_many == []  # nothing leaves before the commit
    # 6 items - 1 stored key - 1 repeated key = 4 new rows
    assert created == 4
    rows = Notification.objects.exclude(pk=stored.pk).order_by("pk")
    assert [n.dedupe_key for n in rows] == ["many:1", "many:2", "many:3", None]
    first = rows[0]
    assert first.recipient == "+8613812345678"  # E.164, as notification_enqueue stores it
    assert (first.customer_id, first.account_id, first.body) == (7, 70, "余额不足，请缴费。")
    assert all(n.status == NotificationStatus.PENDING and n.next_attempt_at is not None for n in rows)
    assert len(rows[2].subject) == 200
    assert Notification.objects.get(pk=stored.pk).body == "余额不足，请缴费。"  # unchanged
    assert scheduled_many == [[n.pk for n in rows]]  # one task for all of them
    assert scheduled == []  # and no task per notification
    # Again with the same keys: nothing new, no task.
    with django_capture_on_commit_callbacks(execute=True):
        assert svc.notifications_enqueue_many([_item(dedupe_key="many:1"), _item(dedupe_key="many:2")]) == 0
    assert len(scheduled_many) == 1


@pytest.mark.django_db
def test_enqueue_many_refuses_the_whole_call_for_one_bad_recipient(scheduled_many, english):
    with pytest.raises(ValidationError) as err:
        svc.notifications_enqueue_many(
            [_item(dedupe_key="bad:1"), _item(recipient="12345", dedupe_key="bad:2")]
        )
    assert "recipient" in err.value.field_errors
    assert not Notification.objects.filter(dedupe_key__startswith="bad:").exists()


@pytest.mark.django_db(transaction=True)
def test_enqueue_many_end_to_end_the_task_delivers_every_one(use_sender, monkeypatch):
    """Through the real on_commit hook and Celery task (eager); 5 ids with chunks of 2 are
    split into 3 tasks (2 + 2 + 1) and every notification is sent exactly once."""
    from config.celery import app
    from core import tasks

    use_sender("sms", "RecordingSender")
    monkeypatch.setattr(tasks, "DELIVER_MANY_CHUNK", 2)
    eager = app.conf.task_always_eager
    app.conf.task_always_eager = True
    try:
        with transaction.atomic():
            assert svc.notifications_enqueue_many([_item(dedupe_key=f"e2e-many:{i}") for i in range(5)]) == 5
            assert RecordingSender.calls == []  # not before the commit
    finally:
        app.conf.task_always_eager = eager
    ids = sorted(Notification.objects.filter(dedupe_key__startswith="e2e-many:").values_list("pk", flat=True))
    assert sorted(RecordingSender.calls) == ids
    assert set(Notification.objects.filter(pk__in=ids).values_list("status", flat=True)) == {"sent"}


@pytest.mark.django_db
def test_enqueue_many_rows_a_lost_task_leaves_are_picked_up_by_the_sweep(scheduled, scheduled_many):
    """The bulk rows are due at once, like single ones: if their task is lost, the sweep
    queues each of them once the grace period has passed."""
    svc.notifications_enqueue_many([_item(dedupe_key="lost:1"), _item(dedupe_key="lost:2")])
    ids = sorted(Notification.objects.filter(dedupe_key__startswith="lost:").values_list("pk", flat=True))
    later = timezone.now() + svc.SWEEP_GRACE + timedelta(seconds=5)
    assert notifications_requeue_due(now=later) == 2
    assert sorted(pk for pk, _at in scheduled) == ids
