"""The Celery app. Every periodic schedule of the platform is declared here, in one place."""

import os

from celery import Celery
from celery.schedules import crontab  # noqa: F401  (used by schedules added by later apps)
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


app.conf.beat_schedule = {
    # Beat -> worker heartbeat: /healthz reports how long ago a worker last ran a task
    # sent by beat, which proves the broker, beat and at least one worker are alive.
    "core.heartbeat": {"task": "core.tasks.heartbeat", "schedule": 30.0},
}
