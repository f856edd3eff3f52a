"""Batched dispatch of the notification outbox (issue 5): ``notifications_enqueue_many(...,
dispatch="batched")`` pushes the new ids to a Redis list after commit instead of queueing a
task per call; the beat task ``core.notifications_flush`` turns the list into delivery tasks.
Run against the real Redis of ``REDIS_URL`` (skipped without one)."""

from unittest import mock

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from core.models import Notification
from core.services import notifications as svc
from core.tasks import notifications_flush_task

pytestmark = pytest.mark.django_db


@pytest.fixture
def batch(settings):
    """The batch list in the test Redis, empty before and after the test."""
    if not settings.REDIS_URL:
        pytest.skip("needs REDIS_URL")
    client = svc._batch_redis()
    client.delete(svc.BATCH_KEY)
    yield client
    client.delete(svc.BATCH_KEY)


def listed(client) -> list[int]:
    return [int(v) for v in client.lrange(svc.BATCH_KEY, 0, -1)]


def _portal(n: int, *, key: str | None = None, customer_id: int = 1) -> dict:
    return {
        "channel": "portal",
        "topic": "payment_receipt",
        "body": f"receipt {n}",
        "customer_id": customer_id,
        "dedupe_key": key,
    }


@pytest.fixture
def customer_id():
    return 7  # the outbox keeps the customer's id only


def test_batched_pushes_the_new_ids_after_commit_and_queues_no_task(
    batch, customer_id, django_capture_on_commit_callbacks
):
    with mock.patch("core.tasks.notifications_deliver_many_task.delay") as delay:
        with django_capture_on_commit_callbacks(execute=False) as callbacks:
            count = svc.notifications_enqueue_many(
                [
                    _portal(1, key="k1", customer_id=customer_id),
                    _portal(2, key="k2", customer_id=customer_id),
                ],
                dispatch="batched",
            )
        assert count == 2
        assert listed(batch) == []  # nothing before commit
        for callback in callbacks:  # the commit
            callback()
    ids = sorted(Notification.objects.filter(dedupe_key__in=["k1", "k2"]).values_list("pk", flat=True))
    assert listed(batch) == ids
    delay.assert_not_called()


def test_flush_queues_one_task_per_chunk_and_empties_the_list(batch, monkeypatch):
    monkeypatch.setattr("core.tasks.DELIVER_MANY_CHUNK", 3)
    batch.rpush(svc.BATCH_KEY, *range(101, 108))  # 7 ids: chunks of 3, 3, 1
    with mock.patch("core.tasks.notifications_deliver_many_task.delay") as delay:
        assert notifications_flush_task() == 7
    assert [c.args[0] for c in delay.call_args_list] == [[101, 102, 103], [104, 105, 106], [107]]
    assert listed(batch) == []
    with mock.patch("core.tasks.notifications_deliver_many_task.delay") as delay:
        assert svc.notifications_flush() == 0
    delay.assert_not_called()


def test_flush_takes_at_most_the_limit(batch):
    batch.rpush(svc.BATCH_KEY, *range(1, 11))
    with mock.patch("core.tasks.notifications_deliver_many_task.delay") as delay:
        assert svc.notifications_flush(limit=4) == 4
    assert [c.args[0] for c in delay.call_args_list] == [[1, 2, 3, 4]]
    assert listed(batch) == list(range(5, 11))


def test_without_redis_batched_falls_back_to_one_task(
    settings, customer_id, django_capture_on_commit_callbacks
):
    settings.REDIS_URL = ""
    with (
        mock.patch("core.tasks.notifications_deliver_many_task.delay") as delay,
        django_capture_on_commit_callbacks(execute=True),
    ):
        assert (
            svc.notifications_enqueue_many(
                [_portal(1, key="e1", customer_id=customer_id)], dispatch="batched"
            )
            == 1
        )
    delay.assert_called_once_with([Notification.objects.get(dedupe_key="e1").pk])
    assert svc.notifications_flush() == 0


def test_a_lost_push_leaves_the_notification_to_the_sweep(
    batch, customer_id, django_capture_on_commit_callbacks, monkeypatch
):
    from datetime import timedelta

    from django.utils import timezone

    class Down:
        def rpush(self, *args):
            raise ConnectionError("redis went away")

    monkeypatch.setattr(svc, "_batch_redis", lambda: Down())
    with django_capture_on_commit_callbacks(execute=True):
        svc.notifications_enqueue_many([_portal(1, key="lost", customer_id=customer_id)], dispatch="batched")
    notification = Notification.objects.get(dedupe_key="lost")
    assert notification.status == "pending"
    swept = []
    monkeypatch.setattr(svc, "_schedule_delivery", lambda pk, **kw: swept.append(pk))
    assert svc.notifications_requeue_due(now=timezone.now() + svc.SWEEP_GRACE + timedelta(seconds=1)) >= 1
    assert notification.pk in swept


def test_postgres_enqueue_many_dedupes_without_reading_the_stored_keys(customer_id):
    if connection.vendor != "postgresql":
        pytest.skip("the PostgreSQL path")
    first = svc.notifications_enqueue_many([_portal(1, key="d1", customer_id=customer_id)])
    assert first == 1
    items = [
        _portal(2, key="d1", customer_id=customer_id),  # stored already
        _portal(3, key="d2", customer_id=customer_id),
        _portal(4, key="d2", customer_id=customer_id),  # repeated in the call
        _portal(5, customer_id=customer_id),  # no key
    ]
    with CaptureQueriesContext(connection) as queries:
        assert svc.notifications_enqueue_many(items) == 2  # d2 once and the one without a key
    statements = [q["sql"] for q in queries.captured_queries]
    assert len(statements) == 1 and "INSERT INTO core_notification" in statements[0]
    assert Notification.objects.get(dedupe_key="d1").body == "receipt 1"  # the first one kept
    assert Notification.objects.get(dedupe_key="d2").body == "receipt 3"
    assert Notification.objects.filter(body="receipt 5").count() == 1


def test_unknown_dispatch_is_refused():
    with pytest.raises(ValueError, match="dispatch"):
        svc.notifications_enqueue_many([], dispatch="later")
