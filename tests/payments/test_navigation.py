"""Taking a payment is three steps from the customer search: the customer page links to the
payment form of each open account for those who may take payments, and nobody else."""

import pytest
from django.urls import reverse

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("fast_password_hashing", "english")]


def page(client, user, url):
    client.force_login(user)
    return client.get(url).content.decode()


def test_customer_page_links_to_take_payment_for_counter_staff(client, staff, make_customer):
    customer = make_customer()
    account = customer.accounts.get()
    html = page(client, staff["counter"], reverse("customers:detail", args=[customer.number]))
    assert reverse("payments:take", args=[account.number]) in html
    assert reverse("payments:account-history", args=[account.number]) in html
    assert 'data-testid="nav-payments"' in html


def test_no_payment_links_for_an_inspector(client, staff, make_customer):
    customer = make_customer()
    account = customer.accounts.get()
    html = page(client, staff["inspector"], reverse("customers:detail", args=[customer.number]))
    assert reverse("payments:take", args=[account.number]) not in html
    assert 'data-testid="nav-payments"' not in html


def test_account_billing_page_links_to_payments(client, staff, make_customer):
    account = make_customer().accounts.get()
    html = page(client, staff["counter"], reverse("billing:account", args=[account.number]))
    assert reverse("payments:take", args=[account.number]) in html
    assert reverse("payments:refund", args=[account.number]) in html
