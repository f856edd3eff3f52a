"""Staff sign-in through the real authentication backends, including django-axes lockout."""

import pytest
from axes.models import AccessAttempt
from django.conf import settings

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("fast_password_hashing", "english")]

PASSWORD = "pw-for-tests-1"  # what tests/conftest.py gives every staff member
LOCKED_TEXT = "Too many failed sign-in attempts for this user name."


def _sign_in(client, username, password):
    return client.post("/login/", {"username": username, "password": password})


def _signed_in_as(client):
    return client.session.get("_auth_user_id")


def test_login_page_renders(client):
    response = client.get("/login/")
    assert response.status_code == 200
    body = response.content.decode()
    assert "Staff sign-in" in body
    assert 'name="username"' in body and 'name="password"' in body


def test_correct_password_signs_in_and_goes_to_customer_search(client, staff):
    response = _sign_in(client, "counter", PASSWORD)
    assert response.status_code == 302
    assert response["Location"] == "/customers/"
    assert _signed_in_as(client) == str(staff["counter"].pk)
    assert client.get("/customers/").status_code == 200


def test_next_parameter_is_followed(client, staff):
    response = client.post("/login/?next=/customers/new/", {"username": "counter", "password": PASSWORD})
    assert response["Location"] == "/customers/new/"


def test_wrong_password_is_refused_with_the_form_error(client, staff):
    response = _sign_in(client, "counter", "wrong-password")
    assert response.status_code == 200
    assert _signed_in_as(client) is None
    errors = response.context["form"].non_field_errors()
    assert len(errors) == 1 and "correct username and password" in errors[0]
    assert AccessAttempt.objects.get(username="counter").failures_since_start == 1


def test_signed_in_user_is_redirected_away_from_the_login_page(client, staff):
    client.force_login(staff["auditor"])
    response = client.get("/login/")
    assert response.status_code == 302
    assert response["Location"] == "/customers/"


def test_lockout_after_five_failures_refuses_even_the_right_password(client, staff):
    assert settings.AXES_FAILURE_LIMIT == 5
    for attempt in range(1, 5):
        response = _sign_in(client, "counter", f"wrong-{attempt}")
        assert response.status_code == 200, f"locked too early, at failure {attempt}"
        assert LOCKED_TEXT not in response.content.decode()

    fifth = _sign_in(client, "counter", "wrong-5")
    assert fifth.status_code == 429
    assert LOCKED_TEXT in fifth.content.decode()
    assert "core/locked_out.html" in [t.name for t in fifth.templates]

    correct = _sign_in(client, "counter", PASSWORD)
    assert correct.status_code == 429
    assert LOCKED_TEXT in correct.content.decode()
    assert _signed_in_as(client) is None
    assert client.get("/customers/").status_code == 302  # still sent to the login page


def test_lockout_is_per_user_name_and_address(client, staff):
    for attempt in range(5):
        _sign_in(client, "counter", f"wrong-{attempt}")
    # another user from another address is not affected
    other = client.post("/login/", {"username": "auditor", "password": PASSWORD}, REMOTE_ADDR="10.1.2.3")
    assert other.status_code == 302
    client.logout()
    # the locked user name stays locked from another address too
    moved = client.post("/login/", {"username": "counter", "password": PASSWORD}, REMOTE_ADDR="10.9.9.9")
    assert moved.status_code == 429


def test_a_success_resets_the_failure_count(client, staff):
    for attempt in range(4):
        _sign_in(client, "counter", f"wrong-{attempt}")
    assert _sign_in(client, "counter", PASSWORD).status_code == 302
    client.logout()
    for attempt in range(4):
        response = _sign_in(client, "counter", f"again-wrong-{attempt}")
        assert response.status_code == 200
    assert _sign_in(client, "counter", PASSWORD).status_code == 302


def test_inactive_staff_cannot_sign_in(client, staff):
    user = staff["manager"]
    user.is_active = False
    user.save(update_fields=["is_active"])
    response = _sign_in(client, "manager", PASSWORD)
    assert response.status_code == 200
    assert _signed_in_as(client) is None


def test_a_user_without_a_staff_profile_cannot_sign_in_to_the_staff_site(client, staff):
    """Customers (portal users) have a password too; the staff site refuses them with the
    same error as a wrong password."""
    from django.contrib.auth import get_user_model

    get_user_model().objects.create_user(username="13900000001", password=PASSWORD)
    response = _sign_in(client, "13900000001", PASSWORD)
    assert response.status_code == 200
    assert _signed_in_as(client) is None
    errors = response.context["form"].non_field_errors()
    assert len(errors) == 1 and "correct username and password" in errors[0]
