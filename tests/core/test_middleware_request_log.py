"""``core.middleware.RequestLogMiddleware``: django-structlog's request middleware that does
not build its request events when their level is off (issue 5), binding the same context."""

import logging
import uuid

import pytest
import structlog
from django.contrib.auth.models import AnonymousUser
from django.http import HttpResponse

from core.middleware import RequestLogMiddleware

LOGGER = "django_structlog.middlewares.request"


def run(rf, **headers):
    seen = []

    def view(request):
        seen.append(dict(structlog.contextvars.get_contextvars()))
        return HttpResponse("ok")

    request = rf.post("/api/v1/payments/terminal/payments", REMOTE_ADDR="10.1.2.3", **headers)
    request.user = AnonymousUser()
    response = RequestLogMiddleware(view)(request)
    return response, seen[0]


def events(caplog):
    return [str(r.msg) for r in caplog.records if r.name == LOGGER]


def test_with_the_events_off_the_same_context_is_bound_and_cleared(rf, caplog):
    caplog.set_level(logging.WARNING, logger=LOGGER)
    response, context = run(rf)
    assert response.status_code == 200
    uuid.UUID(context["request_id"])  # a fresh request id
    assert context["ip"] == "10.1.2.3"
    assert "user_id" in context and context["user_id"] is None
    assert structlog.contextvars.get_contextvars() == {}  # cleared after the response
    assert events(caplog) == []


def test_an_upstream_request_id_is_treated_as_the_library_does(rf, caplog):
    from django_structlog.app_settings import app_settings

    caplog.set_level(logging.WARNING, logger=LOGGER)
    _response, context = run(rf, HTTP_X_REQUEST_ID="req-abc-123")
    if app_settings.TRUST_UPSTREAM_REQUEST_ID:
        assert context["request_id"] == "req-abc-123"
    else:  # not trusted (the default): a fresh id
        uuid.UUID(context["request_id"])


def test_at_info_the_library_logs_both_events(rf, caplog):
    caplog.set_level(logging.INFO, logger=LOGGER)
    _response, context = run(rf)
    uuid.UUID(context["request_id"])
    logged = " ".join(events(caplog))
    assert "request_started" in logged and "request_finished" in logged
    assert structlog.contextvars.get_contextvars() == {}


@pytest.mark.django_db
def test_the_response_still_carries_the_request_id(client, caplog):
    caplog.set_level(logging.WARNING, logger=LOGGER)
    response = client.get("/healthz")
    uuid.UUID(response["X-Request-ID"])
