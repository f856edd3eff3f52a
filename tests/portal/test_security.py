"""Portal security: sign-in lockout (django-axes) and wrong-code lockout, no account
enumeration through the sign-up and reset pages, and CSRF on every POST the portal takes."""

import re

import pytest
from django.contrib.auth import get_user_model
from django.test import Client
from django.urls import URLPattern, URLResolver, reverse

import portal.urls
from core.models import Notification
from portal.models import AuthAttempt
from tests.portal.conftest import PORTAL_PASSWORD
from tests.portal.test_auth_service import ID_TAIL, other_code, sent_code

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("english", "fast_password_hashing")]

NEW_PASSWORD = "Kw-chosen-password-7"


def html(response) -> str:
    return response.content.decode()


def signed_in(client) -> bool:
    return bool(client.session.get("_auth_user_id"))


# --- sign-in lockout (django-axes) --------------------------------------------------------


def test_five_wrong_passwords_lock_the_phone_even_for_the_right_password(make_portal_user):
    make_portal_user(phone="13812340002")
    client = Client()
    for attempt in range(1, 5):
        response = client.post(
            reverse("portal:login"), {"username": "13812340002", "password": f"wrong-{attempt}"}
        )
        assert response.status_code == 200, attempt
    fifth = client.post(reverse("portal:login"), {"username": "13812340002", "password": "wrong-5"})
    assert fifth.status_code == 429
    assert 'data-testid="locked-out"' in html(fifth)  # the portal's page, not the staff one
    assert "try again in 15 minutes" in html(fifth)

    right = Client().post(reverse("portal:login"), {"username": "138 1234 0002", "password": PORTAL_PASSWORD})
    assert right.status_code == 429 and 'data-testid="locked-out"' in html(right)
    assert not signed_in(client)


def test_a_password_reset_lifts_the_phone_lockout(make_portal_user):
    make_portal_user(phone="13812340002")
    # Failures from five addresses: the phone is locked, no single address is.
    for n in range(5):
        Client(REMOTE_ADDR=f"198.51.100.{n + 1}").post(
            reverse("portal:login"), {"username": "13812340002", "password": "wrong"}
        )
    locked = Client(REMOTE_ADDR="198.51.100.9").post(
        reverse("portal:login"), {"username": "13812340002", "password": PORTAL_PASSWORD}
    )
    assert locked.status_code == 429

    client = Client(REMOTE_ADDR="198.51.100.9")
    client.post(reverse("portal:reset"), {"phone": "13812340002"})
    client.post(
        reverse("portal:reset-verify"),
        {"code": sent_code("13812340002"), "password1": NEW_PASSWORD, "password2": NEW_PASSWORD},
    )
    assert signed_in(client)
    again = Client(REMOTE_ADDR="198.51.100.10").post(
        reverse("portal:login"), {"username": "13812340002", "password": NEW_PASSWORD}
    )
    assert again.status_code == 302


# --- wrong-code lockout -------------------------------------------------------------------


def test_five_wrong_codes_lock_sign_up_for_that_phone(make_customer):
    customer = make_customer(mobile_phone="13812340001")
    client = Client()
    client.post(
        reverse("portal:signup"),
        {"customer_number": customer.number, "id_last4": ID_TAIL, "phone": "13812340001"},
    )
    code = sent_code("13812340001")
    form = {"code": other_code(code), "password1": NEW_PASSWORD, "password2": NEW_PASSWORD}
    for _ in range(4):
        assert client.post(reverse("portal:signup-verify"), form).status_code == 200
    fifth = client.post(reverse("portal:signup-verify"), form)
    assert fifth.status_code == 429
    assert "Too many wrong codes for this phone. Try again in 15 minutes." in html(fifth)
    # The right code is refused now, and asking again sends nothing.
    right = client.post(reverse("portal:signup-verify"), {**form, "code": code})
    assert right.status_code == 429
    assert not get_user_model().objects.filter(username="13812340001").exists()
    again = Client().post(
        reverse("portal:signup"),
        {"customer_number": customer.number, "id_last4": ID_TAIL, "phone": "13812340001"},
    )
    assert again.status_code == 429 and "Too many wrong codes for this phone" in html(again)
    assert Notification.objects.count() == 1


# --- no account enumeration ---------------------------------------------------------------

_CSRF_VALUE = re.compile(r'(name="csrfmiddlewaretoken" value=")[^"]+(")')


def outward(response) -> tuple:
    """What a visitor can tell from a response: status, where it redirects, and the text
    (with the per-request CSRF token blanked)."""
    location = response.get("Location")
    return response.status_code, location, _CSRF_VALUE.sub(r"\1\2", html(response))


def walk(client, method, url, data=None) -> list[tuple]:
    """The outward view of a request and of every redirect it leads to."""
    response = getattr(client, method)(url, data or {})
    seen = [outward(response)]
    while response.status_code in (301, 302):
        response = client.get(response["Location"])
        seen.append(outward(response))
    return seen


@pytest.fixture
def loose_send_limits(settings):
    """Let one phone ask many times in a row (the limits themselves are tested elsewhere)."""
    settings.PORTAL_CODE_RESEND_SECONDS = 0
    settings.PORTAL_CODE_MAX_PER_PHONE_PER_HOUR = 100
    settings.PORTAL_CODE_MAX_PER_IP_PER_HOUR = 100


def test_signup_answers_the_same_whether_or_not_the_details_match(make_customer, loose_send_limits):
    customer = make_customer(mobile_phone="13812340001")
    other = make_customer(mobile_phone="13812340009")  # a real customer, but not this phone's
    wrong_tail = "0000" if ID_TAIL != "0000" else "1111"
    cases = {
        "match": (customer.number, ID_TAIL),
        "unknown customer": ("3199999999", ID_TAIL),
        "wrong id digits": (customer.number, wrong_tail),
        "another customer's number": (other.number, ID_TAIL),
    }
    step1, step2 = {}, {}
    for case, (number, tail) in cases.items():
        client = Client()
        step1[case] = walk(
            client,
            "post",
            reverse("portal:signup"),
            {"customer_number": number, "id_last4": tail, "phone": "13812340001"},
        )
        step2[case] = walk(
            client,
            "post",
            reverse("portal:signup-verify"),
            {"code": "000000", "password1": NEW_PASSWORD, "password2": NEW_PASSWORD},
        )
        # Reset the wrong-code count between cases, so each starts from the same place.
        AuthAttempt.objects.filter(kind="code_failure").delete()
    assert step1["match"][0][0] == 302 and len(step1["match"]) == 2  # a redirect to step 2, then the page
    assert "If the details match our records" in step1["match"][-1][2]
    for case in cases:
        assert step1[case] == step1["match"], case
        assert step2[case] == step2["match"], case
    # Only the match sent a code (a real "000000" would be a one-in-a-million coincidence).
    assert Notification.objects.count() == 1


def test_reset_answers_the_same_for_a_known_and_an_unknown_phone(make_portal_user, loose_send_limits):
    make_portal_user(phone="13812340004")
    seen = {}
    for phone in ("13812340004", "13912340004"):
        client = Client()
        steps = walk(client, "post", reverse("portal:reset"), {"phone": phone})
        steps += walk(
            client,
            "post",
            reverse("portal:reset-verify"),
            {"code": "000000", "password1": NEW_PASSWORD, "password2": NEW_PASSWORD},
        )
        # The masked number typed in is shown back; blank it to compare the rest.
        masked = phone[:3] + "****" + phone[-4:]
        seen[phone] = [(s, loc, text.replace(masked, "PHONE")) for s, loc, text in steps]
    assert seen["13812340004"] == seen["13912340004"]
    assert [status for status, _, _ in seen["13812340004"]] == [302, 200, 200]
    assert list(Notification.objects.values_list("recipient", flat=True)) == ["+8613812340004"]


def test_the_send_limit_answers_the_same_for_a_known_and_an_unknown_phone(make_portal_user):
    make_portal_user(phone="13812340004")
    seen = {}
    for phone in ("13812340004", "13912340004"):
        client = Client()
        client.post(reverse("portal:reset"), {"phone": phone})
        second = client.post(reverse("portal:reset"), {"phone": phone})
        seen[phone] = (second.status_code, _CSRF_VALUE.sub("", html(second)).replace(phone, "PHONE"))
    assert seen["13812340004"] == seen["13912340004"]
    assert seen["13812340004"][0] == 429


# --- CSRF on every POST -------------------------------------------------------------------


def portal_patterns(patterns=None):
    for entry in patterns if patterns is not None else portal.urls.urlpatterns:
        if isinstance(entry, URLResolver):
            yield from portal_patterns(entry.url_patterns)
        elif isinstance(entry, URLPattern):
            yield entry


def portal_urls(account_number: str) -> dict[str, str]:
    """Every portal URL, by name, with a bound account's number wherever a number goes."""
    urls = {}
    for pattern in portal_patterns():
        assert pattern.name, f"portal URL {pattern.pattern} has no name"
        kwargs = {}
        for key, converter in pattern.pattern.converters.items():
            if key == "number":
                kwargs[key] = account_number
            elif converter.regex == "[0-9]+":
                kwargs[key] = "1"
            else:
                kwargs[key] = "x1"
        urls[pattern.name] = reverse(f"portal:{pattern.name}", kwargs=kwargs)
    return urls


def test_every_portal_post_is_refused_without_the_csrf_token(make_customer, make_portal_user):
    customer = make_customer(mobile_phone="13812340001")
    account = customer.accounts.get()
    urls = portal_urls(account.number)
    assert {
        "login",
        "logout",
        "signup",
        "signup-verify",
        "reset",
        "reset-verify",
        "bind",
        "bind-verify",
    } <= set(urls)

    anonymous = Client(enforce_csrf_checks=True)
    signed_in_client = Client(enforce_csrf_checks=True)
    signed_in_client.force_login(make_portal_user(account))
    for name, url in urls.items():
        for who, client in (("anonymous", anonymous), ("signed in", signed_in_client)):
            response = client.post(url, {"username": "13812340001", "password": "x", "phone": "13812340001"})
            assert response.status_code == 403, f"{name} ({who}): {response.status_code}"
    assert not Notification.objects.exists()


@pytest.mark.parametrize("name", ["login", "signup", "reset"])
def test_the_forms_carry_the_token_and_a_post_with_it_passes(db, name):
    client = Client(enforce_csrf_checks=True)
    page = client.get(reverse(f"portal:{name}"))
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', html(page)).group(1)
    response = client.post(reverse(f"portal:{name}"), {"csrfmiddlewaretoken": token})
    assert response.status_code == 200  # the form's own "required" errors, not 403
    assert "This field is required." in html(response)


def test_the_bind_form_carries_the_token(make_portal_user):
    client = Client(enforce_csrf_checks=True)
    client.force_login(make_portal_user())
    page = client.get(reverse("portal:bind"))
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', html(page)).group(1)
    response = client.post(reverse("portal:bind"), {"csrfmiddlewaretoken": token})
    assert response.status_code == 200 and "This field is required." in html(response)
