"""Celery tasks of billing: ids in, a service call, bounded retries."""

from celery import shared_task
from django.db import InterfaceError, OperationalError

from billing.services.policy import policy_sweep
from billing.services.rating import rate_batch


@shared_task(
    name="billing.rate_batch",
    acks_late=True,
    reject_on_worker_lost=True,  # safe: rating is idempotent per meter and freeze date
    autoretry_for=(OperationalError, InterfaceError),
    retry_backoff=5,
    retry_backoff_max=300,
    max_retries=8,
)
def rate_batch_task(batch_id: int) -> dict:
    result = rate_batch(batch_id)
    return {"readings": result.readings, "entries": result.entries, "decisions": result.decisions}


@shared_task(name="billing.policy_sweep", acks_late=True)
def policy_sweep_task() -> int:
    """Trips withheld for the night, a holiday or a grace period are decided again."""
    return policy_sweep()
