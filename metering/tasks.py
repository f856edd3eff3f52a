"""Celery tasks of metering: ids and dates in, a service call, bounded retries."""

import os
from datetime import date, timedelta

import structlog
from celery import shared_task
from django.db import InterfaceError, OperationalError
from django.utils import timezone

from core.exceptions import NotFound
from metering.partitions import ensure_partitions
from metering.services.collection import collection_estimate_gaps, collection_run
from metering.services.commands import command_dispatch, commands_requeue_stale

logger = structlog.get_logger(__name__)


def _day(value: str | None) -> date:
    return date.fromisoformat(value) if value else timezone.localdate()


@shared_task(
    name="metering.collection_run", bind=True, max_retries=2, default_retry_delay=300, acks_late=True
)
def collection_run_task(self, day: str | None = None):
    """Read the meters still missing today's reading (safe to repeat: each run reads only
    the gaps, and readings are idempotent per meter and day)."""
    return collection_run(day=_day(day)).as_dict()


@shared_task(name="metering.collection_estimate_gaps", acks_late=True)
def collection_estimate_task(day: str | None = None):
    return collection_estimate_gaps(day=_day(day))


@shared_task(name="metering.partitions_maintain")
def partitions_maintain_task():
    """Keep monthly reading partitions ready from last month to three months ahead."""
    today = timezone.localdate()
    return ensure_partitions(
        first_month=(today.replace(day=1) - timedelta(days=1)).replace(day=1),
        last_month=(today.replace(day=28) + timedelta(days=100)).replace(day=1),
    )


# --- remote commands ----------------------------------------------------------------------


@shared_task(
    name="metering.command_dispatch",
    bind=True,
    acks_late=True,
    # A worker killed mid-dispatch gets its message back: safe, because the next dispatch
    # reads the meter back before it sends anything (metering.services.commands).
    reject_on_worker_lost=True,
    autoretry_for=(OperationalError, InterfaceError),
    retry_backoff=5,
    retry_backoff_max=300,
    max_retries=8,
)
def command_dispatch_task(self, command_id: int):
    """One attempt at a remote command. Head-end errors are handled by the service (it
    reschedules this task with a backoff); only database trouble is retried here."""
    worker = f"{self.request.hostname or 'local'}/{os.getpid()}"
    try:
        command = command_dispatch(command_id=command_id, worker=worker)
    except NotFound:
        logger.warning("command_dispatch_unknown_command", command=command_id)
        return None
    return command.status


@shared_task(name="metering.commands_reap")
def commands_reap_task():
    """Requeue commands whose dispatcher died (they are read back before any resend) and
    reschedule queued commands whose task was lost."""
    return commands_requeue_stale()
