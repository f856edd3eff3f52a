import socket

from celery import shared_task
from django.core.cache import cache
from django.utils import timezone

HEARTBEAT_CACHE_KEY = "kilowatt:worker-heartbeat"


@shared_task(name="core.tasks.heartbeat", ignore_result=True)
def heartbeat():
    """Sent by beat every 30 s; /healthz reads when a worker last ran it."""
    cache.set(
        HEARTBEAT_CACHE_KEY,
        {"at": timezone.now().isoformat(), "host": socket.gethostname()},
        timeout=24 * 3600,
    )
