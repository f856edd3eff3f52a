"""The phone system (IVR) API: balance by customer number, card payments once per call,
and recharge-voucher redemption with the voucher lockout mapped to 429."""

from datetime import timedelta
from decimal import Decimal

import pytest
from django.core.cache import cache
from django.utils import timezone

from billing.services.ledger import account_balance
from payments.models import Payment, Voucher, VoucherFailure
from payments.services.devices import device_create
from payments.services.vouchers import voucher_batch_issue, voucher_sell

pytestmark = pytest.mark.usefixtures("english", "fast_password_hashing")


@pytest.fixture(autouse=True)
def clean_cache():
    cache.clear()
    yield
    cache.clear()


@pytest.fixture
def account(flat_tariff, make_prepaid):
    return make_prepaid(flat_tariff)[0]


@pytest.fixture
def ivr(org):
    device, secret = device_create(code="IVR1", kind="ivr", hall_code="QX-H01")
    return device, {"HTTP_AUTHORIZATION": f"Device IVR1:{secret}"}


def ivr_pay(client, creds, account, call="CALL-1", amount="25.00"):
    body = {"call_id": call, "account_number": account.number, "amount": amount}
    return client.post("/api/v1/payments/ivr/payments", body, content_type="application/json", **creds)


@pytest.mark.django_db
def test_balance_by_customer_number(ivr, account, client):
    _device, creds = ivr
    ivr_pay(client, creds, account, "CALL-0", "25.00")
    customer = account.customer
    response = client.get("/api/v1/payments/ivr/balance", {"customer_number": customer.number}, **creds)
    assert response.status_code == 200
    data = response.json()
    assert data["customer_number"] == customer.number and data["customer_name"] == "张*"
    assert len(data["accounts"]) == 1
    first = data["accounts"][0]
    assert first["account_number"] == account.number
    assert first["balance"] == "25.00" and first["available_balance"] == "25.00"  # 25.00 + allowance 0.00
    assert first["state"] == "warning1"  # 25.00 is below the policy's level-1 warning at 30.00
    assert first["customer_name"] == "张*"
    assert client.get("/api/v1/payments/ivr/balance", {"customer_number": "0000"}, **creds).status_code == 404
    missing = client.get("/api/v1/payments/ivr/balance", **creds)
    assert missing.status_code == 400 and "customer_number" in missing.json()["errors"]


@pytest.mark.django_db
def test_an_ivr_card_payment_posts_once_per_call(ivr, account, client):
    device, creds = ivr
    first = ivr_pay(client, creds, account, "CALL-7", "25.00")
    assert first.status_code == 201, first.content
    assert first.json()["reference"] == "IVR1:CALL-7" and first.json()["channel"] == "ivr"
    again = ivr_pay(client, creds, account, "CALL-7", "25.00")
    assert again.status_code == 200 and again.json()["payment_id"] == first.json()["payment_id"]
    payment = Payment.objects.get()
    assert (payment.method, payment.device_id, payment.hall_id) == ("card", device.pk, device.hall_id)
    assert account_balance(account.pk) == Decimal("25.00")
    assert ivr_pay(client, creds, account, "CALL-8", "5000.01").status_code == 400  # IVR limit 5,000.00


@pytest.mark.django_db
def test_a_terminal_cannot_use_the_ivr_api(org, account, client):
    _t, secret = device_create(code="T001", kind="terminal", hall_code="QX-H01")
    creds = {"HTTP_AUTHORIZATION": f"Device T001:{secret}"}
    assert ivr_pay(client, creds, account).status_code == 403
    number = account.customer.number
    assert client.get("/api/v1/payments/ivr/balance", {"customer_number": number}, **creds).status_code == 403


@pytest.fixture
def sold_voucher(actors):
    _batch, codes = voucher_batch_issue(
        actor=actors["admin"],
        face_value="50.00",
        quantity=2,
        expires_on=timezone.localdate() + timedelta(days=30),
    )
    voucher_sell(actor=actors["counter"], serial=codes[0][0])
    return codes[0]


def redeem(client, creds, account, serial, pin, caller="13800000001"):
    body = {"serial": serial, "pin": pin, "account_number": account.number, "caller": caller}
    return client.post("/api/v1/payments/ivr/vouchers/redeem", body, content_type="application/json", **creds)


@pytest.mark.django_db
def test_a_voucher_is_redeemed_by_phone_once(ivr, account, sold_voucher, client):
    device, creds = ivr
    serial, pin = sold_voucher
    response = redeem(client, creds, account, serial, pin)
    assert response.status_code == 201, response.content
    data = response.json()
    assert data["channel"] == "voucher" and data["reference"] == serial and data["amount"] == "50.00"
    assert data["account"]["balance"] == "50.00"
    payment = Payment.objects.get()
    assert payment.device_id == device.pk and payment.details["client_key"] == "ivr:13800000001"
    assert Voucher.objects.get(serial=serial).status == Voucher.Status.REDEEMED
    # asked again (a lost reply): the first payment, nothing more posted
    again = redeem(client, creds, account, serial, pin)
    assert again.status_code == 200 and again.json()["payment_id"] == data["payment_id"]
    assert account_balance(account.pk) == Decimal("50.00")


@pytest.mark.django_db
def test_wrong_pins_by_phone_are_recorded_and_locked_out_with_429(ivr, account, sold_voucher, client):
    _device, creds = ivr
    serial, pin = sold_voucher
    wrong = "1" * 16 if pin != "1" * 16 else "2" * 16
    for i in range(5):  # the voucher service locks a client out after 5 failures in 15 minutes
        response = redeem(client, creds, account, serial, wrong)
        assert response.status_code == 400 and response.json()["code"] == "voucher_rejected", i
    assert VoucherFailure.objects.filter(client_key="ivr:13800000001").count() == 5
    locked = redeem(client, creds, account, serial, pin)  # even the right PIN, while locked out
    assert locked.status_code == 429 and locked.json()["retry_after"] > 0
    assert not Payment.objects.exists()
    missing_caller = redeem(client, creds, account, serial, pin, caller="")
    assert missing_caller.status_code == 400
