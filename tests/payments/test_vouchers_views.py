"""The voucher, reversal and refund pages through the Django test client."""

import csv
import io
from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from billing.services.ledger import account_balance
from payments.models import Payment, PaymentReversal, PaymentStatus, Refund, Voucher, VoucherBatch
from payments.services.posting import payment_post
from payments.services.vouchers import pin_matches, voucher_batch_issue, voucher_sell

pytestmark = [pytest.mark.usefixtures("english", "fast_password_hashing"), pytest.mark.django_db]


@pytest.fixture
def login(client, staff):
    def login(name):
        client.force_login(staff[name])
        return client

    return login


@pytest.fixture
def account(flat_tariff, make_prepaid):
    return make_prepaid(flat_tariff)[0]


def issue(actors, quantity=2, face_value="100.00"):
    return voucher_batch_issue(
        actor=actors["manager"],
        face_value=face_value,
        quantity=quantity,
        expires_on=timezone.localdate() + timedelta(days=30),
    )


def test_issuing_a_batch_downloads_the_pins_once(login, actors):
    client = login("manager")
    expires = (timezone.localdate() + timedelta(days=90)).isoformat()
    response = client.post(
        "/payments/vouchers/", {"face_value": "20.00", "quantity": "3", "expires_on": expires}
    )
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/csv")
    assert response["Cache-Control"] == "no-store"
    rows = list(csv.DictReader(io.StringIO(response.content.decode())))
    batch = VoucherBatch.objects.get()
    assert response["Content-Disposition"] == f'attachment; filename="voucher-batch-{batch.code}.csv"'
    assert len(rows) == 3 and {r["face_value"] for r in rows} == {"20.00"}
    for row in rows:
        assert pin_matches(row["serial"], row["pin"], Voucher.objects.get(serial=row["serial"]).pin_hash)
    # Afterwards the pages show the batch, never a PIN.
    listing = client.get("/payments/vouchers/").content.decode()
    detail = client.get(f"/payments/vouchers/batches/{batch.code}/").content.decode()
    assert batch.code in listing and rows[0]["serial"] in detail
    assert not any(r["pin"] in listing or r["pin"] in detail for r in rows)


def test_a_bad_batch_shows_the_form_again(login):
    response = login("manager").post(
        "/payments/vouchers/", {"face_value": "5000", "quantity": "3", "expires_on": "2020-01-01"}
    )
    assert response.status_code == 200 and response["Content-Type"].startswith("text/html")
    assert "The expiry date must be in the future." in response.content.decode()
    assert not VoucherBatch.objects.exists()


def test_counter_staff_cannot_issue(login):
    assert login("counter").get("/payments/vouchers/").status_code == 403


def test_batch_detail_counts_by_status(login, actors):
    batch, codes = issue(actors, quantity=3)
    voucher_sell(actor=actors["counter"], serial=codes[0][0])
    html = login("manager").get(f"/payments/vouchers/batches/{batch.code}/").content.decode()
    assert 'data-testid="count-issued">2<' in html and 'data-testid="count-sold">1<' in html


def test_sell_then_redeem_at_the_counter(login, actors, account):
    _batch, [(serial, pin), _other] = issue(actors)
    client = login("counter")
    response = client.post("/payments/vouchers/sell/", {"serial": serial})
    assert response.status_code == 302
    assert Voucher.objects.get(serial=serial).status == Voucher.Status.SOLD

    # A wrong PIN: the form again, with the message that tells nothing about the serial.
    bad = pin[:-1] + str((int(pin[-1]) + 1) % 10)
    response = client.post(
        "/payments/vouchers/redeem/", {"serial": serial, "pin": bad, "account_number": account.number}
    )
    assert response.status_code == 200
    assert "The serial number or the PIN is wrong." in response.content.decode()

    response = client.post(
        "/payments/vouchers/redeem/", {"serial": serial, "pin": pin, "account_number": account.number}
    )
    assert response.status_code == 302
    payment = Payment.objects.get()
    assert payment.cashier_id == actors["counter"].user_id
    assert payment.hall_id == actors["counter"].org_unit.pk
    assert payment.details["client_key"] == f"counter:{actors['counter'].user_id}"
    assert account_balance(account.pk) == Decimal("100.00")


def test_void_page_voids_a_batch(login, actors):
    batch, _codes = issue(actors, quantity=2)
    response = login("manager").post(
        "/payments/vouchers/void/", {"batch": batch.code, "reason": "misprinted"}
    )
    assert response.status_code == 302
    assert set(batch.vouchers.values_list("status", flat=True)) == {"void"}


def test_reversal_requested_and_approved_through_the_pages(login, account):
    payment = payment_post(
        channel="counter", external_id="C-9", account_number=account.number, amount="80.00", method="cash"
    ).payment
    client = login("counter")
    url = f"/payments/vouchers/reversals/request/{payment.pk}/"
    assert client.get(url).status_code == 200
    assert client.post(url, {"reason": "customer paid twice"}).status_code == 302
    reversal = PaymentReversal.objects.get()
    assert client.get("/payments/vouchers/reversals/").status_code == 403  # counter staff cannot approve

    manager = login("manager")
    assert f"decide-{reversal.pk}" in manager.get("/payments/vouchers/reversals/").content.decode()
    response = manager.post(f"/payments/vouchers/reversals/{reversal.pk}/decision/", {"decision": "approve"})
    assert response.status_code == 302
    assert Payment.objects.get(pk=payment.pk).status == PaymentStatus.REVERSED
    assert account_balance(account.pk) == Decimal("0.00")


def test_the_requester_is_not_offered_the_approve_button(login, account, actors):
    payment = payment_post(
        channel="counter", external_id="C-10", account_number=account.number, amount="10.00", method="cash"
    ).payment
    client = login("manager")
    client.post(f"/payments/vouchers/reversals/request/{payment.pk}/", {"reason": "test of four eyes"})
    reversal = PaymentReversal.objects.get()
    html = client.get("/payments/vouchers/reversals/").content.decode()
    assert f"decide-{reversal.pk}" not in html and "Your own request" in html
    client.post(f"/payments/vouchers/reversals/{reversal.pk}/decision/", {"decision": "approve"})
    assert PaymentReversal.objects.get().status == PaymentReversal.Status.PENDING


def test_refund_page(login, account):
    payment_post(
        channel="counter", external_id="C-11", account_number=account.number, amount="42.50", method="cash"
    )
    client = login("counter")
    url = f"/payments/vouchers/refund/{account.number}/"
    assert 'data-testid="refund-form"' in client.get(url).content.decode()
    response = client.post(url, {"method": "cash", "payee": "张三", "bank_account": ""})
    assert response.status_code == 302
    assert Refund.objects.get().amount == Decimal("42.50")
    html = client.get(url).content.decode()
    assert 'data-testid="refund"' in html and "Now close the account." in html
    assert login("inspector").get(url).status_code == 403


@pytest.mark.parametrize(
    ("user", "url", "button"),
    [
        ("counter", "/payments/vouchers/sell/", "Sell"),
        ("counter", "/payments/vouchers/redeem/", "Redeem"),
        ("manager", "/payments/vouchers/void/", "Void"),
        ("manager", "/payments/vouchers/", "Issue and download"),
    ],
)
def test_the_forms_render(login, user, url, button):
    response = login(user).get(url)
    assert response.status_code == 200 and button in response.content.decode()
