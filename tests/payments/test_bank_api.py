"""The agency banks' real-time API: a bank (device of kind bank, code = bank code) posts each
collected payment once; other devices may not use it."""

from decimal import Decimal

import pytest
from django.core.cache import cache

from billing.services.ledger import account_balance
from payments.models import Bank, Payment
from payments.services.devices import device_create

pytestmark = pytest.mark.usefixtures("english", "fast_password_hashing")
URL = "/api/v1/payments/bank/payments"


@pytest.fixture(autouse=True)
def clean_cache():
    cache.clear()
    yield
    cache.clear()


@pytest.fixture
def bank(org):
    Bank.objects.create(code="QXRCB", name="青溪农村商业银行")
    _device, secret = device_create(code="QXRCB", kind="bank", hall_code="QX-H01")
    return {"HTTP_AUTHORIZATION": f"Device QXRCB:{secret}"}


@pytest.mark.django_db
def test_a_bank_posts_each_payment_once(client, bank, flat_tariff, make_prepaid):
    account = make_prepaid(flat_tariff)[0]
    body = {
        "bank_serial": "S0001",
        "account_number": account.number,
        "amount": "88.80",
        "paid_at": "2026-11-20T09:15:00+08:00",
    }
    first = client.post(URL, body, content_type="application/json", **bank)
    again = client.post(URL, body, content_type="application/json", **bank)
    assert (first.status_code, again.status_code) == (201, 200), first.content
    assert first.json()["payment_id"] == again.json()["payment_id"]
    payment = Payment.objects.get()
    assert (payment.channel, payment.external_id, payment.bank.code) == ("bank", "QXRCB:S0001", "QXRCB")
    assert account_balance(account.pk) == Decimal("88.80")
    changed = client.post(URL, {**body, "amount": "99.00"}, content_type="application/json", **bank)
    assert changed.status_code == 409


@pytest.mark.django_db
def test_other_devices_and_strangers_may_not_post_bank_payments(client, org, flat_tariff, make_prepaid):
    account = make_prepaid(flat_tariff)[0]
    _device, secret = device_create(code="T9", kind="terminal", hall_code="QX-H01")
    body = {
        "bank_serial": "S1",
        "account_number": account.number,
        "amount": "1.00",
        "paid_at": "2026-11-20T09:00:00+08:00",
    }
    assert (
        client.post(
            URL, body, content_type="application/json", HTTP_AUTHORIZATION=f"Device T9:{secret}"
        ).status_code
        == 403
    )
    assert client.post(URL, body, content_type="application/json").status_code == 401
    assert not Payment.objects.exists()
