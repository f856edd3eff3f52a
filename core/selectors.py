from datetime import datetime

from django.conf import settings
from django.core.cache import cache
from django.db import connection
from django.utils import timezone

from core.tasks import HEARTBEAT_CACHE_KEY

WORKER_STALE_AFTER_SECONDS = 90


def system_health() -> dict:
    """Database, broker and worker status for /healthz. Each check is bounded in time."""
    checks = {}
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
        checks["database"] = {"status": "ok", "vendor": connection.vendor}
    except Exception as exc:  # noqa: BLE001 - reported, not raised
        checks["database"] = {"status": "down", "error": exc.__class__.__name__}

    from config.celery import app as celery_app

    try:
        with celery_app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=2)
        checks["broker"] = {"status": "ok", "transport": conn.transport.driver_type}
    except Exception as exc:  # noqa: BLE001
        checks["broker"] = {"status": "down", "error": exc.__class__.__name__}

    try:
        beat = cache.get(HEARTBEAT_CACHE_KEY)
    except Exception:  # noqa: BLE001
        beat = None
    if beat:
        age = (timezone.now() - datetime.fromisoformat(beat["at"])).total_seconds()
        checks["worker"] = {
            "status": "ok" if age <= WORKER_STALE_AFTER_SECONDS else "stale",
            "last_heartbeat": beat["at"],
            "seconds_ago": round(age, 1),
            "host": beat.get("host"),
        }
    else:
        checks["worker"] = {"status": "unknown", "detail": "no heartbeat yet"}
    checks["audit_trail"] = {
        "status": "ok" if settings.DATABASE_IS_POSTGRES else "off",
        "detail": "PostgreSQL triggers" if settings.DATABASE_IS_POSTGRES else "needs PostgreSQL",
    }

    if checks["database"]["status"] != "ok" or checks["broker"]["status"] != "ok":
        overall = "down"
    elif checks["worker"]["status"] != "ok":
        overall = "degraded"
    else:
        overall = "ok"
    return {"status": overall, "checks": checks}


def audit_events(*, model: str = "", username: str = ""):
    """Every audit event, newest first, optionally by tracked model label or user name."""
    from pghistory.models import Events

    if connection.vendor != "postgresql":
        return Events.objects.none()
    qs = Events.objects.all()
    if model:
        qs = qs.filter(pgh_model=model)
    if username:
        qs = qs.filter(pgh_context__username=username)
    return qs.order_by("-pgh_created_at")
