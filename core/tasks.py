import os
import socket

import structlog
from celery import shared_task
from django.core.cache import cache
from django.db import InterfaceError, OperationalError
from django.utils import timezone

from core.exceptions import NotFound
from core.services.notifications import notification_deliver, notifications_flush, notifications_requeue_due

# A list task larger than this is split into tasks of this size, so that several workers
# share a large run of notifications (e.g. the warnings of a morning's rating).
DELIVER_MANY_CHUNK = 200

logger = structlog.get_logger(__name__)

HEARTBEAT_CACHE_KEY = "kilowatt:worker-heartbeat"


@shared_task(name="core.tasks.heartbeat", ignore_result=True)
def heartbeat():
    """Sent by beat every 30 s; /healthz reads when a worker last ran it."""
    cache.set(
        HEARTBEAT_CACHE_KEY,
        {"at": timezone.now().isoformat(), "host": socket.gethostname()},
        timeout=24 * 3600,
    )


# --- notification outbox ------------------------------------------------------------------


@shared_task(
    name="core.notification_deliver",
    bind=True,
    acks_late=True,
    # Redelivery after a worker died is safe: the claim (lease) decides who sends.
    reject_on_worker_lost=True,
    autoretry_for=(OperationalError, InterfaceError),
    retry_backoff=5,
    retry_backoff_max=300,
    max_retries=8,
    ignore_result=True,
)
def notification_deliver_task(self, notification_id: int):
    """One delivery attempt. Sender errors are handled (and rescheduled) by the service;
    only database trouble is retried here."""
    worker = f"{self.request.hostname or 'local'}/{os.getpid()}"
    try:
        return notification_deliver(notification_id=notification_id, worker=worker).status
    except NotFound:
        logger.warning("notification_deliver_unknown", notification=notification_id)
        return None


@shared_task(
    name="core.notifications_deliver_many",
    bind=True,
    acks_late=True,
    # Redelivery is safe for the same reason as above; notifications already final are skipped.
    reject_on_worker_lost=True,
    autoretry_for=(OperationalError, InterfaceError),
    retry_backoff=5,
    retry_backoff_max=300,
    max_retries=8,
    ignore_result=True,
)
def notifications_deliver_many_task(self, notification_ids: list[int]):
    """One delivery attempt for each of ``notification_ids`` (queued once per
    ``notifications_enqueue_many``). A long list is split into tasks of
    ``DELIVER_MANY_CHUNK`` ids first. A notification this task does not reach (the task is
    lost, retries run out) is still due and the sweep queues it again."""
    ids = list(notification_ids)
    if len(ids) > DELIVER_MANY_CHUNK:
        for start in range(0, len(ids), DELIVER_MANY_CHUNK):
            notifications_deliver_many_task.delay(ids[start : start + DELIVER_MANY_CHUNK])
        return None
    worker = f"{self.request.hostname or 'local'}/{os.getpid()}"
    for notification_id in ids:
        try:
            notification_deliver(notification_id=notification_id, worker=worker)
        except NotFound:
            logger.warning("notification_deliver_unknown", notification=notification_id)
    return len(ids)


@shared_task(name="core.notifications_sweep", ignore_result=True)
def notifications_sweep_task():
    """Re-queue overdue undelivered notifications (lost tasks, dead workers)."""
    return notifications_requeue_due()


@shared_task(name="core.notifications_flush", ignore_result=True)
def notifications_flush_task():
    """Queue delivery tasks for the notifications enqueued with ``dispatch="batched"``."""
    return notifications_flush()
