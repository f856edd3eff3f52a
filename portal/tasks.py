"""Celery tasks of the portal: a service call each."""

from celery import shared_task

from portal.services.auth import auth_records_purge


@shared_task(name="portal.auth_records_purge", acks_late=True)
def auth_records_purge_task() -> int:
    """One-time codes and sign-up/reset attempts older than every limit's window go."""
    return auth_records_purge()
