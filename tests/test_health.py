import logging

import pytest
from django.core.cache import cache

from core.tasks import HEARTBEAT_CACHE_KEY, heartbeat
from tests.celery_worker import celery_worker, wait_until


@pytest.mark.django_db
def test_healthz_reports_database_and_broker_without_a_worker(client):
    cache.delete(HEARTBEAT_CACHE_KEY)
    response = client.get("/healthz")
    body = response.json()
    assert response.status_code == 200
    assert body["checks"]["database"] == {"status": "ok", "vendor": "postgresql"}
    assert body["checks"]["broker"]["status"] == "ok"
    assert body["checks"]["broker"]["transport"] == "redis"
    assert body["checks"]["worker"]["status"] == "unknown"
    assert body["checks"]["audit_trail"]["status"] == "ok"
    assert body["status"] == "degraded"


@pytest.mark.celery_worker
@pytest.mark.django_db
def test_healthz_sees_a_real_worker_run_the_heartbeat(client):
    cache.delete(HEARTBEAT_CACHE_KEY)
    with celery_worker(queues="healthz-test") as proc:
        heartbeat.apply_async(queue="healthz-test")
        body = wait_until(
            lambda: (b := client.get("/healthz").json())["checks"]["worker"]["status"] == "ok" and b,
            timeout=60,
        )
        assert body, f"worker never ran the heartbeat; worker output:\n{proc.stdout and ''}"
    assert body["status"] == "ok"
    assert body["checks"]["worker"]["seconds_ago"] < 60


@pytest.mark.django_db
def test_every_response_carries_the_request_id_that_its_log_lines_share(client, caplog):
    caplog.set_level(logging.INFO)
    # An id sent by the client is not trusted as ours (it could be forged to confuse logs).
    response = client.get("/login/", HTTP_X_REQUEST_ID="forged-id")
    assert response.status_code == 200
    request_id = response["X-Request-ID"]
    assert request_id and request_id != "forged-id"
    logged = [r.msg for r in caplog.records if isinstance(r.msg, dict)]
    events = {m["event"] for m in logged if m.get("request_id") == request_id}
    assert {"request_started", "request_finished"} <= events
