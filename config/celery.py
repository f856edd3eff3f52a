"""The Celery app. Every periodic schedule of the platform is declared here, in one place."""

import os

from celery import Celery
from celery.schedules import crontab
from celery.signals import setup_logging

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

app = Celery("kilowatt")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@setup_logging.connect
def _use_django_logging(**kwargs):
    # Worker and beat log through the same structured configuration as the web app.
    import logging.config

    from django.conf import settings

    logging.config.dictConfig(settings.LOGGING)


from django.conf import settings  # noqa: E402  (after the app is configured)

_collection_interval = getattr(settings, "METERING_COLLECTION_INTERVAL_MINUTES", 0)

app.conf.beat_schedule = {
    # Beat -> worker heartbeat: /healthz reports how long ago a worker last ran a task
    # sent by beat, which proves the broker, beat and at least one worker are alive.
    "core.heartbeat": {"task": "core.tasks.heartbeat", "schedule": 30.0},
    # Daily collection (Asia/Shanghai): a first pass after the midnight freeze, then passes
    # that read only the meters still missing, then estimation of what is still missing.
    "metering.collection": {
        "task": "metering.collection_run",
        # The demo (bin/run) collects every few minutes so that a visitor sees it work.
        "schedule": (
            _collection_interval * 60.0 if _collection_interval else crontab(minute=5, hour="1,3,7,13,19")
        ),
    },
    "metering.collection_estimate": {
        "task": "metering.collection_estimate_gaps",
        "schedule": crontab(minute=40, hour=23),
    },
    "metering.partitions": {"task": "metering.partitions_maintain", "schedule": crontab(minute=15, hour=0)},
    # Remote commands whose dispatcher died go back to the queue (read back before any resend).
    "metering.commands_reap": {"task": "metering.commands_reap", "schedule": 60.0},
    # Notifications whose delivery task was lost or whose worker died are queued again.
    "core.notifications_sweep": {"task": "core.notifications_sweep", "schedule": 60.0},
    # Notifications enqueued with dispatch="batched" (payment receipts) wait in a Redis list
    # until this turns them into delivery tasks.
    "core.notifications_flush": {"task": "core.notifications_flush", "schedule": 2.0},
    # Trips withheld for the night, a holiday, an event or a grace period are decided again
    # when the window ends; tripped accounts lifted above the close threshold are closed.
    "billing.policy_sweep": {"task": "billing.policy_sweep", "schedule": 300.0},
    # The portal's one-time codes and attempt records outlive every limit's window by then.
    "portal.auth_records_purge": {
        "task": "portal.auth_records_purge",
        "schedule": crontab(minute=30, hour=4),
    },
}
