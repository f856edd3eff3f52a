"""POST /api/v1/metering/reading-batches/ and its summary, for external collection systems."""

import json
from datetime import timedelta
from decimal import Decimal

import pytest
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from core.models import Role
from core.permissions import ROLE_CAPABILITIES, Cap
from metering.models import DailyReading, ReadingSource, RejectionReason
from tests.metering.conftest import reading

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("fast_password_hashing", "english")]

URL = "/api/v1/metering/reading-batches/"


@pytest.fixture
def system_client(staff):
    """An external collection system: a token of an administrator account."""
    client = APIClient()
    token = Token.objects.create(user=staff["admin"])
    client.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")
    return client


def post(client, body):
    return client.post(URL, data=json.dumps(body), content_type="application/json")


def test_only_administrators_hold_the_ingest_capability():
    holders = {role for role, caps in ROLE_CAPABILITIES.items() if Cap.READINGS_INGEST in caps}
    assert holders == {Role.ADMIN}


def test_a_new_batch_is_stored_and_answered_with_201(system_client, meter, today):
    day = today - timedelta(days=1)
    # JSON numbers with a fraction are read as decimals, never as float.
    good = dict(reading(meter, day, "0"), forward_total=123.45, forward_peak=60.1, forward_valley=63.35)
    bad = reading("999999999999", day, "10.00")
    response = post(system_client, {"batch_id": "hes-2026-0001", "readings": [good, bad]})

    assert response.status_code == 201, response.content
    body = response.json()
    assert body["source"] == "external" and body["batch_id"] == "hes-2026-0001"
    assert (body["accepted"], body["duplicates"], body["rejected"], body["flagged"]) == (1, 0, 1, 0)
    assert body["completed"] is True
    assert body["rejections"] == [
        {
            "index": 1,
            "meter": "999999999999",
            "read_date": day.isoformat(),
            "reason": RejectionReason.UNKNOWN_METER,
            "message": "No meter 999999999999 is registered.",
        }
    ]
    row = DailyReading.objects.get(meter=meter, read_date=day)
    assert row.forward_total == Decimal("123.45") and row.forward_peak == Decimal("60.10")
    assert row.source == ReadingSource.EXTERNAL
    assert row.batch.submitted_by == "admin"


def test_a_repeated_batch_id_returns_the_first_result_with_200(system_client, meter, today):
    body = {"batch_id": "hes-2", "readings": [reading(meter, today - timedelta(days=1), "120.00")]}
    first = post(system_client, body)
    # A retry, even with other content, stores nothing new.
    body["readings"].append(reading(meter, today, "121.00"))
    again = post(system_client, body)
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json() == first.json()
    assert DailyReading.objects.filter(meter=meter).count() == 1

    summary = system_client.get(f"{URL}external/hes-2/")
    assert summary.status_code == 200 and summary.json() == first.json()
    assert system_client.get(f"{URL}external/nope/").status_code == 404


@pytest.mark.parametrize(
    "body",
    [
        {"readings": [{"meter": "000000000001"}]},  # no batch_id
        {"batch_id": "x", "readings": {"meter": "000000000001"}},  # not a list
        {"batch_id": "x", "readings": []},
        {"batch_id": "x" * 65, "readings": [{}]},
        {"batch_id": "x", "source": "collected", "readings": [{}]},  # only external here
    ],
)
def test_a_malformed_body_is_refused_with_400(system_client, body):
    response = post(system_client, body)
    assert response.status_code == 400, response.content


def test_invalid_json_and_too_many_readings_are_refused(system_client, monkeypatch):
    response = system_client.post(URL, data="{not json", content_type="application/json")
    assert response.status_code == 400
    from metering import api

    monkeypatch.setattr(api, "MAX_READINGS_PER_REQUEST", 2)
    response = post(system_client, {"batch_id": "x", "readings": [{}, {}, {}]})
    assert response.status_code == 400
    assert "At most 2 readings" in json.dumps(response.json())

    monkeypatch.setattr(api, "MAX_BODY_BYTES", 100)
    response = post(system_client, {"batch_id": "x", "readings": [{"meter": "0" * 12}] * 10})
    assert response.status_code == 413


def test_counter_staff_may_not_post_readings(staff):
    client = APIClient()
    client.force_authenticate(staff["counter"])
    assert post(client, {"batch_id": "x", "readings": [{}]}).status_code == 403
    assert client.get(f"{URL}external/x/").status_code == 403


def test_anonymous_callers_are_asked_to_authenticate(db):
    assert post(APIClient(), {"batch_id": "x", "readings": [{}]}).status_code == 401


def test_a_large_request_is_accepted(system_client, make_service_point, install_meter, today):
    """Bigger than Django's 2.5 MB in-memory body limit, which the JSON parser must not hit."""
    from tests.metering.conftest import local_midnight

    meters = [
        install_meter(make_service_point(), installed_at=local_midnight(today - timedelta(days=40)))
        for _ in range(3)
    ]
    readings = [
        reading(m, today - timedelta(days=n), f"{1000 - n}.00", quality_note="x" * 20)
        for n in range(1, 31)
        for m in meters
    ]
    padding = [reading("999999999999", today, "1", quality_note="y" * 200) for _ in range(10_000)]
    response = post(system_client, {"batch_id": "big", "readings": readings + padding})
    assert len(json.dumps(readings + padding)) > 2_621_440
    assert response.status_code == 201, response.content[:500]
    assert (response.json()["accepted"], response.json()["rejected"]) == (90, 10_000)
