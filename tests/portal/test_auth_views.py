"""Portal sign-up, sign-in, sign-out, password reset and adding accounts, through the pages
(Django test client); the code is read from the SMS in the notification outbox."""

import pytest
from django.contrib.auth import get_user_model
from django.test import Client
from django.urls import reverse

from core.models import Notification
from portal.models import AccountBinding
from tests.portal.conftest import PORTAL_PASSWORD
from tests.portal.test_auth_service import ID_TAIL, other_code, sent_code

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("english", "fast_password_hashing")]

NEW_PASSWORD = "Kw-chosen-password-7"


def html(response) -> str:
    return response.content.decode()


def signed_in_user_id(client) -> int | None:
    value = client.session.get("_auth_user_id")
    return int(value) if value else None


@pytest.fixture
def customer(make_customer):
    return make_customer(mobile_phone="13812340001")


def test_the_full_signup(customer):
    client = Client()
    page = client.get(reverse("portal:signup"))
    assert page.status_code == 200
    assert 'data-testid="signup-submit"' in html(page) and "csrfmiddlewaretoken" in html(page)

    step1 = client.post(
        reverse("portal:signup"),
        {"customer_number": customer.number, "id_last4": ID_TAIL, "phone": "138 1234 0001"},
    )
    assert step1.status_code == 302 and step1.url == reverse("portal:signup-verify")
    verify = client.get(step1.url)
    assert (
        "If the details match our records, a code has been sent to the registered phone 138****0001"
        in html(verify)
    )
    assert 'data-testid="code-input"' in html(verify)

    code = sent_code("13812340001")
    done = client.post(
        step1.url, {"code": code, "password1": NEW_PASSWORD, "password2": NEW_PASSWORD}, follow=False
    )
    assert done.status_code == 302 and done.url == reverse("portal:home")
    user = get_user_model().objects.get(username="13812340001")
    assert signed_in_user_id(client) == user.pk
    assert AccountBinding.objects.filter(user=user, account=customer.accounts.get()).exists()
    # The session no longer holds the sign-up; step 2 starts over.
    again = client.get(reverse("portal:signup-verify"))
    assert again.status_code == 302


def test_signup_forms_say_what_is_wrong(customer):
    client = Client()
    response = client.post(
        reverse("portal:signup"), {"customer_number": "", "id_last4": "12", "phone": "12345"}
    )
    assert response.status_code == 200
    page = html(response)
    assert "This field is required." in page
    assert "Ensure this value has at least 4 characters" in page
    assert "Enter a mainland mobile number: 11 digits starting with 1." in page
    assert not Notification.objects.exists()


def test_a_weak_or_mismatched_password_keeps_the_code_good(customer):
    client = Client()
    client.post(
        reverse("portal:signup"),
        {"customer_number": customer.number, "id_last4": ID_TAIL, "phone": "13812340001"},
    )
    code = sent_code("13812340001")
    url = reverse("portal:signup-verify")
    weak = client.post(url, {"code": code, "password1": "123", "password2": "123"})
    assert weak.status_code == 200 and "This password is too short" in html(weak)
    differ = client.post(url, {"code": code, "password1": NEW_PASSWORD, "password2": NEW_PASSWORD + "x"})
    assert "The two passwords differ." in html(differ)
    assert not get_user_model().objects.filter(username="13812340001").exists()
    done = client.post(url, {"code": code, "password1": NEW_PASSWORD, "password2": NEW_PASSWORD})
    assert done.status_code == 302


def test_a_wrong_code_says_so_and_counts_down(customer):
    client = Client()
    client.post(
        reverse("portal:signup"),
        {"customer_number": customer.number, "id_last4": ID_TAIL, "phone": "13812340001"},
    )
    wrong = other_code(sent_code("13812340001"))
    response = client.post(
        reverse("portal:signup-verify"), {"code": wrong, "password1": NEW_PASSWORD, "password2": NEW_PASSWORD}
    )
    assert response.status_code == 200
    assert "The code is wrong or has expired. Check the SMS, or ask for a new code. 4 tries left." in html(
        response
    )


def test_step_two_without_step_one_goes_back_to_step_one(db):
    response = Client().get(reverse("portal:signup-verify"))
    assert response.status_code == 302 and response.url == reverse("portal:signup")


def test_signing_up_a_phone_that_already_signs_in_sends_them_to_sign_in(customer, make_portal_user):
    existing = make_portal_user(phone="13812340001")
    client = Client()
    client.post(
        reverse("portal:signup"),
        {"customer_number": customer.number, "id_last4": ID_TAIL, "phone": "13812340001"},
    )
    done = client.post(
        reverse("portal:signup-verify"),
        {"code": sent_code("13812340001"), "password1": NEW_PASSWORD, "password2": NEW_PASSWORD},
        follow=True,
    )
    assert done.redirect_chain[-1][0] == reverse("portal:login")
    assert "This phone already has a sign-in" in html(done)
    assert signed_in_user_id(client) is None
    existing.refresh_from_db()
    assert existing.check_password(PORTAL_PASSWORD)
    assert AccountBinding.objects.filter(user=existing).count() == 1


# --- sign-in and sign-out -----------------------------------------------------------------


def test_sign_in_with_phone_and_password(make_portal_user):
    user = make_portal_user(phone="13812340002")
    client = Client()
    page = client.get(reverse("portal:login"))
    assert page.status_code == 200 and 'data-testid="login-submit"' in html(page)
    response = client.post(
        reverse("portal:login"), {"username": "138 1234 0002", "password": PORTAL_PASSWORD}
    )
    assert response.status_code == 302 and response.url == reverse("portal:home")
    assert signed_in_user_id(client) == user.pk


def test_a_wrong_password_is_refused(make_portal_user):
    make_portal_user(phone="13812340002")
    client = Client()
    response = client.post(reverse("portal:login"), {"username": "13812340002", "password": "nope-nope-1"})
    assert response.status_code == 200
    assert "The phone number or the password is wrong." in html(response)
    assert signed_in_user_id(client) is None


def test_staff_cannot_sign_in_to_the_portal(staff):
    client = Client()
    response = client.post(reverse("portal:login"), {"username": "counter", "password": "pw-for-tests-1"})
    assert response.status_code == 200
    assert "The phone number or the password is wrong." in html(response)
    assert signed_in_user_id(client) is None
    # Nor a plain user whose name is a phone number but who has no portal profile.
    get_user_model().objects.create_user(username="13812340003", password="pw-for-tests-1")
    response = client.post(reverse("portal:login"), {"username": "13812340003", "password": "pw-for-tests-1"})
    assert "The phone number or the password is wrong." in html(response)
    assert signed_in_user_id(client) is None


@pytest.mark.parametrize(
    ("next_url", "expected"),
    [
        ("/portal/messages/", "/portal/messages/"),
        ("https://evil.example/portal/", None),
        ("//evil.example/portal/", None),
        ("/admin/", None),
    ],
)
def test_sign_in_follows_next_only_inside_the_portal(make_portal_user, next_url, expected):
    make_portal_user(phone="13812340002")
    response = Client().post(
        reverse("portal:login") + "?next=" + next_url,
        {"username": "13812340002", "password": PORTAL_PASSWORD},
    )
    assert response.status_code == 302
    assert response.url == (expected or reverse("portal:home"))


def test_a_signed_in_customer_visiting_the_sign_in_page_goes_home(make_portal_user):
    client = Client()
    client.force_login(make_portal_user())
    response = client.get(reverse("portal:login"))
    assert response.status_code == 302 and response.url == reverse("portal:home")


def test_sign_out_is_a_post_and_lands_on_the_sign_in_page(make_portal_user):
    client = Client()
    client.force_login(make_portal_user())
    assert client.get(reverse("portal:logout")).status_code == 405
    response = client.post(reverse("portal:logout"))
    assert response.status_code == 302 and response.url == reverse("portal:login")
    assert signed_in_user_id(client) is None


# --- password reset -----------------------------------------------------------------------


def test_the_full_password_reset(make_portal_user):
    user = make_portal_user(phone="13812340004")
    client = Client()
    step1 = client.post(reverse("portal:reset"), {"phone": "13812340004"})
    assert step1.status_code == 302 and step1.url == reverse("portal:reset-verify")
    assert "If the details match our records" in html(client.get(step1.url))
    done = client.post(
        step1.url, {"code": sent_code("13812340004"), "password1": NEW_PASSWORD, "password2": NEW_PASSWORD}
    )
    assert done.status_code == 302 and done.url == reverse("portal:home")
    assert signed_in_user_id(client) == user.pk
    user.refresh_from_db()
    assert user.check_password(NEW_PASSWORD) and not user.check_password(PORTAL_PASSWORD)
    # The new password signs in.
    other = Client()
    response = other.post(reverse("portal:login"), {"username": "13812340004", "password": NEW_PASSWORD})
    assert response.status_code == 302


# --- adding accounts ----------------------------------------------------------------------


def test_adding_another_customers_accounts(customer, make_customer, make_portal_user):
    mine = make_customer(mobile_phone="13812340005")
    user = make_portal_user(mine.accounts.get(), phone="13812340005")
    client = Client()
    assert client.get(reverse("portal:bind")).status_code == 302  # signed out: to the sign-in page
    client.force_login(user)
    step1 = client.post(
        reverse("portal:bind"), {"customer_number": customer.number, "id_last4": ID_TAIL.lower()}
    )
    assert step1.status_code == 302 and step1.url == reverse("portal:bind-verify")
    assert "a code has been sent to the customer's registered phone" in html(client.get(step1.url))
    done = client.post(step1.url, {"code": sent_code("13812340001")}, follow=True)
    assert done.redirect_chain[-1][0] == reverse("portal:home")
    assert "1 account added" in html(done)
    assert AccountBinding.objects.filter(user=user).count() == 2


def test_the_pages_speak_chinese_by_default_and_english_on_request(db, settings):
    settings.LANGUAGE_CODE = "zh-hans"
    assert 'lang="zh-hans"' in html(Client().get(reverse("portal:login")))
    assert 'lang="en"' in html(Client(HTTP_ACCEPT_LANGUAGE="en").get(reverse("portal:login")))
