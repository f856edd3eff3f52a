"""The customer's portal messages (only their own, newest first, read when opened, an unread
badge in the nav) and the notification settings page (SMS and/or e-mail per customer)."""

import pytest
from django.test import Client
from django.urls import reverse

from core.models import Notification
from customers.models import Customer
from customers.services import account_open
from portal.context_processors import portal_unread_count
from portal.models import PortalProfile
from tests.payments.test_online import trip

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("english", "fast_password_hashing")]


def portal_message(account, body, *, topic="other", account_id="same", customer=None):
    customer_id = (customer or account.customer).pk
    return Notification.objects.create(
        channel="portal",
        topic=topic,
        body=body,
        customer_id=customer_id,
        account_id=account.pk if account_id == "same" else account_id,
    )


def html(response) -> str:
    return response.content.decode()


def bodies(page: str) -> list[str]:
    chunks = page.split('data-testid="message-body">')[1:]
    return [chunk.split("<")[0] for chunk in chunks]


@pytest.fixture
def setup(flat_tariff, make_prepaid, make_portal_user, actors):
    mine, _ = make_prepaid(flat_tariff)
    theirs, _ = make_prepaid(flat_tariff, name="李四")
    # the same customer's second account, not bound to this portal user
    unbound = account_open(actor=actors["admin"], customer=mine.customer, settlement_mode="prepaid")
    user = make_portal_user(mine)
    client = Client()
    client.force_login(user)
    return mine, theirs, unbound, user, client


def test_messages_are_only_this_users_portal_messages_newest_first(setup):
    mine, theirs, unbound, user, client = setup
    portal_message(mine, "first for my account")
    portal_message(mine, "for me as a customer", account_id=None)
    portal_message(theirs, "for another customer")
    portal_message(unbound, "for my other, unbound account")
    Notification.objects.create(
        channel="sms",
        recipient="+8613800000000",
        topic="other",
        body="an SMS copy",
        customer_id=mine.customer_id,
        account_id=mine.pk,
    )
    portal_message(mine, "second for my account")
    response = client.get(reverse("portal:notifications"))
    assert response.status_code == 200
    assert bodies(html(response)) == ["second for my account", "for me as a customer", "first for my account"]


def test_policy_notices_reach_the_portal_messages(setup):
    mine, _theirs, _unbound, _user, client = setup
    trip(mine)  # a level-2 warning, then the trip: each queued for the portal (and SMS)
    page = html(client.get(reverse("portal:notifications")))
    assert 'data-topic="trip"' in page and 'data-topic="low_balance_2"' in page
    assert page.index('data-topic="trip"') < page.index('data-topic="low_balance_2"')  # newest first
    assert "Supply cut off for arrears" in page


def test_the_unread_badge_counts_until_the_messages_are_opened(setup, django_assert_num_queries):
    mine, theirs, _unbound, user, client = setup
    portal_message(mine, "one")
    portal_message(mine, "two")
    portal_message(theirs, "not mine")
    with django_assert_num_queries(1):
        assert portal_unread_count(user.pk) == 2
    payments_page = html(client.get(reverse("portal:payments", args=[mine.number])))
    assert 'data-testid="nav-notifications"' in payments_page
    assert '<span class="badge bg-warning text-dark">2</span>' in payments_page

    page = html(client.get(reverse("portal:notifications")))
    assert page.count('data-unread="true"') == 2  # shown as new this once
    profile = PortalProfile.objects.get(user=user)
    assert profile.messages_seen_at == Notification.objects.filter(body="two").get().created_at
    assert portal_unread_count(user.pk) == 0
    page = html(client.get(reverse("portal:notifications")))
    assert 'data-unread="true"' not in page and "bg-warning text-dark" not in page

    portal_message(mine, "three")
    assert portal_unread_count(user.pk) == 1
    page = html(client.get(reverse("portal:notifications")))
    assert page.count('data-unread="true"') == 1 and bodies(page)[0] == "three"


def test_messages_are_paginated(setup):
    mine, _theirs, _unbound, _user, client = setup
    for i in range(25):
        portal_message(mine, f"message {i}")
    page1 = html(client.get(reverse("portal:notifications")))
    assert bodies(page1)[0] == "message 24" and len(bodies(page1)) == 20
    page2 = html(client.get(reverse("portal:notifications") + "?page=2"))
    assert bodies(page2) == [f"message {i}" for i in range(4, -1, -1)] and "Page 2 of 2" in page2


def test_no_messages_yet(setup):
    *_, client = setup
    assert 'data-testid="no-messages"' in html(client.get(reverse("portal:notifications")))


# --- notification settings -------------------------------------------------------------------


def test_settings_show_each_bound_customer_and_disable_email_without_an_address(
    flat_tariff, make_prepaid, make_portal_user
):
    with_email, _ = make_prepaid(flat_tariff, email="zhang@example.com")
    without_email, _ = make_prepaid(flat_tariff, name="王五")
    other, _ = make_prepaid(flat_tariff, name="赵六")
    client = Client()
    client.force_login(make_portal_user(with_email, without_email))
    page = html(client.get(reverse("portal:preferences")))
    assert f'data-testid="preferences-{with_email.customer.number}"' in page
    assert f'data-testid="preferences-{without_email.customer.number}"' in page
    assert f'data-testid="preferences-{other.customer.number}"' not in page
    assert "zhang@example.com" in page
    assert page.count('data-testid="email-hint"') == 1 and "No e-mail address on record" in page
    card = page.split(f'data-testid="preferences-{without_email.customer.number}"')[1]
    assert 'disabled data-testid="by-email"' in card.split("</form>")[0]


def test_saving_settings_changes_only_that_customer(flat_tariff, make_prepaid, make_portal_user):
    account, _ = make_prepaid(flat_tariff, email="zhang@example.com")
    client = Client()
    client.force_login(make_portal_user(account))
    customer = account.customer
    response = client.post(
        reverse("portal:preferences"), {"customer": customer.number, f"c{customer.pk}-by_email": "on"}
    )
    assert response.status_code == 302 and response["Location"] == reverse("portal:preferences")
    customer.refresh_from_db()
    assert customer.notify_by_sms is False and customer.notify_by_email is True
    page = html(client.get(reverse("portal:preferences")))
    assert f"Notification settings saved for customer {customer.number}." in page


def test_settings_for_a_customer_not_bound_are_404(flat_tariff, make_prepaid, make_portal_user):
    mine, _ = make_prepaid(flat_tariff)
    theirs, _ = make_prepaid(flat_tariff, name="李四")
    client = Client()
    client.force_login(make_portal_user(mine))
    response = client.post(reverse("portal:preferences"), {"customer": theirs.customer.number})
    assert response.status_code == 404
    assert Customer.objects.get(pk=theirs.customer_id).notify_by_sms is True


def test_email_stays_as_stored_when_there_is_no_address(flat_tariff, make_prepaid, make_portal_user):
    account, _ = make_prepaid(flat_tariff)  # no e-mail; notify_by_email defaults to on
    customer = account.customer
    client = Client()
    client.force_login(make_portal_user(account))
    # a crafted post cannot change the disabled box; SMS off is saved
    client.post(reverse("portal:preferences"), {"customer": customer.number, f"c{customer.pk}-by_email": ""})
    customer.refresh_from_db()
    assert customer.notify_by_sms is False and customer.notify_by_email is True
