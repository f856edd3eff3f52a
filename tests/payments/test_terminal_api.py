"""The self-service terminal API: device credentials (401, then 429 after ten failures),
payments once per terminal transaction, the account lookup, and the OpenAPI schema."""

from decimal import Decimal
from io import StringIO

import pytest
from django.core.cache import cache
from django.core.management import call_command
from django.urls import reverse

from billing.services.ledger import account_balance
from metering.models import CommandAction, RemoteCommand
from payments.models import Payment, TerminalDevice
from payments.services.devices import device_create, mask_name
from tests.payments.test_online import trip

pytestmark = pytest.mark.usefixtures("english", "fast_password_hashing")
PAY = "/api/v1/payments/terminal/payments"


@pytest.fixture(autouse=True)
def clean_cache():
    cache.clear()  # the failure counters live in the cache (Redis db of the test run)
    yield
    cache.clear()


@pytest.fixture
def account(flat_tariff, make_prepaid):
    return make_prepaid(flat_tariff)[0]


@pytest.fixture
def terminal(org):
    device, secret = device_create(code="T001", kind="terminal", hall_code="QX-H01")
    return device, secret


def auth(code, secret):
    return {"HTTP_AUTHORIZATION": f"Device {code}:{secret}"}


def pay(client, creds, account, txn="TX1", amount="50.00", method="cash", **extra):
    body = {"txn_id": txn, "account_number": account.number, "amount": amount, "method": method}
    return client.post(PAY, body, content_type="application/json", **creds, **extra)


@pytest.mark.django_db
def test_secrets_are_random_and_only_their_hash_is_stored(terminal):
    device, secret = terminal
    assert len(secret) >= 43  # 32 random bytes, base64url
    stored = TerminalDevice.objects.get(code="T001").secret_hash
    assert secret not in stored and stored.startswith("sha256$")
    assert device.hall.code == "QX-H01" and device.kind == "terminal"


@pytest.mark.django_db
def test_the_management_command_prints_a_working_secret_once(org, account, client):
    out = StringIO()
    call_command(
        "payment_device_create", code="T009", kind="terminal", hall="QX-H01", stdout=out, stderr=StringIO()
    )
    secret = next(
        line.split(": ", 1)[1] for line in out.getvalue().splitlines() if line.startswith("secret: ")
    )
    response = client.get(f"/api/v1/payments/terminal/accounts/{account.number}", **auth("T009", secret))
    assert response.status_code == 200
    # a new secret replaces the old one
    out = StringIO()
    call_command("payment_device_create", code="T009", reset_secret=True, stdout=out, stderr=StringIO())
    new = next(line.split(": ", 1)[1] for line in out.getvalue().splitlines() if line.startswith("secret: "))
    assert (
        client.get(f"/api/v1/payments/terminal/accounts/{account.number}", **auth("T009", secret)).status_code
        == 401
    )
    assert (
        client.get(f"/api/v1/payments/terminal/accounts/{account.number}", **auth("T009", new)).status_code
        == 200
    )


@pytest.mark.django_db
def test_wrong_credentials_get_401_and_the_eleventh_attempt_429(terminal, account, client):
    _device, secret = terminal
    url = f"/api/v1/payments/terminal/accounts/{account.number}"
    assert client.get(url).status_code == 401  # no credentials (not counted)
    assert client.get(url, HTTP_AUTHORIZATION="Token abc").status_code == 401  # another scheme (not counted)
    for i in range(10):
        response = client.get(url, **auth("T001", f"wrong-{i}"))
        assert response.status_code == 401, i
        assert response.json()["code"] == "device_auth_failed"
        assert response["WWW-Authenticate"].startswith("Device")
    locked = client.get(url, **auth("T001", secret))  # even the right secret, while locked
    assert locked.status_code == 429 and locked.json()["code"] == "device_locked"
    assert locked.json()["retry_after"] == 900
    # the address is locked too: another device from the same address
    other, other_secret = device_create(code="T002", kind="terminal", hall_code="QX-H01")
    assert client.get(url, **auth("T002", other_secret)).status_code == 429
    # ... but not from another address
    assert client.get(url, REMOTE_ADDR="10.1.1.1", **auth("T002", other_secret)).status_code == 200
    assert not Payment.objects.exists()


@pytest.mark.django_db
def test_failures_spread_over_addresses_lock_the_device_code(terminal, account, client):
    _device, secret = terminal
    url = f"/api/v1/payments/terminal/accounts/{account.number}"
    for i in range(10):
        assert client.get(url, REMOTE_ADDR=f"10.2.0.{i}", **auth("T001", "guess")).status_code == 401
    assert client.get(url, REMOTE_ADDR="10.2.1.1", **auth("T001", secret)).status_code == 429
    # unknown codes count as failures too (and cannot tell whether a code exists)
    for i in range(10):
        assert client.get(url, REMOTE_ADDR="10.3.0.1", **auth(f"NOPE{i}", "x")).status_code == 401
    assert client.get(url, REMOTE_ADDR="10.3.0.1", **auth("NOPE99", "x")).status_code == 429


@pytest.mark.django_db
def test_an_inactive_device_is_refused(terminal, account, client):
    device, secret = terminal
    TerminalDevice.objects.filter(pk=device.pk).update(active=False)
    assert pay(client, auth("T001", secret), account).status_code == 401


@pytest.mark.django_db
def test_a_terminal_payment_posts_once_per_transaction(terminal, account, client):
    device, secret = terminal
    creds = auth("T001", secret)
    first = pay(client, creds, account, "TX-1", "50.00")
    assert first.status_code == 201, first.content
    data = first.json()
    assert data["created"] is True and data["channel"] == "terminal" and data["reference"] == "T001:TX-1"
    assert data["amount"] == "50.00" and data["account"]["balance"] == "50.00"  # 0.00 + 50.00
    assert data["account"]["customer_name"] == "张*" and data["restore"]["status"] == "not_needed"
    again = pay(client, creds, account, "TX-1", "50.00")
    assert again.status_code == 200 and again.json()["payment_id"] == data["payment_id"]
    assert again.json()["created"] is False
    payment = Payment.objects.get()
    assert (payment.device_id, payment.hall_id, payment.method) == (device.pk, device.hall_id, "cash")
    # the same id with another amount is a conflict; nothing more is posted
    assert pay(client, creds, account, "TX-1", "60.00").status_code == 409
    assert account_balance(account.pk) == Decimal("50.00")
    # another terminal's TX-1 is another payment; a JSON number is read as a decimal (33.3 -> 33.30)
    _other, other_secret = device_create(code="T002", kind="terminal", hall_code="QX-H01")
    response = client.post(
        PAY,
        f'{{"txn_id": "TX-1", "account_number": "{account.number}", "amount": 33.3, "method": "card"}}',
        content_type="application/json",
        **auth("T002", other_secret),
    )
    assert response.status_code == 201 and response.json()["amount"] == "33.30"
    assert account_balance(account.pk) == Decimal("83.30")  # 50.00 + 33.30
    assert Payment.objects.count() == 2


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        ({"amount": "10.001"}, 400, "amount"),
        ({"amount": "0"}, 400, "amount"),
        ({"amount": "5000.01"}, 400, "amount"),  # above the terminal limit of 5,000.00
        ({"method": "voucher"}, 400, "method"),
        ({"txn_id": "bad id!"}, 400, "txn_id"),
        ({"account_number": "99999999"}, 404, None),
    ],
)
def test_bad_terminal_payments_post_nothing(terminal, account, client, body, status, field):
    _device, secret = terminal
    data = {"txn_id": "TX-9", "account_number": account.number, "amount": "10.00", "method": "cash", **body}
    response = client.post(PAY, data, content_type="application/json", **auth("T001", secret))
    assert response.status_code == status, response.content
    if field:
        assert field in response.json()["errors"]
    assert not Payment.objects.exists()


@pytest.mark.django_db
def test_a_tripped_customer_paying_at_a_terminal_gets_the_power_back(
    terminal, flat_tariff, make_prepaid, client
):
    _device, secret = terminal
    account, meter = make_prepaid(flat_tariff)
    trip(account)  # balance -1.00, tripped
    small = pay(client, auth("T001", secret), account, "TX-S", "2.00")  # -1.00 + 2.00 = 1.00, not above 5
    assert small.json()["restore"]["status"] == "still_off"
    response = pay(client, auth("T001", secret), account, "TX-B", "100.00")  # 1.00 + 100.00 = 101.00
    data = response.json()
    close = RemoteCommand.objects.get(meter=meter, action=CommandAction.CLOSE)
    assert data["restore"]["status"] == "pending" and data["restore"]["command_id"] == close.pk
    assert data["account"]["balance"] == "101.00"


@pytest.mark.django_db
def test_the_account_lookup_masks_the_name(terminal, account, client):
    _device, secret = terminal
    response = client.get(
        reverse("api-payments-terminal-account", args=[account.number]), **auth("T001", secret)
    )
    assert response.status_code == 200
    data = response.json()
    assert data == {
        "account_number": account.number,
        "customer_name": "张*",
        "status": account.status,
        "balance": "0.00",
        "available_balance": "0.00",  # balance 0.00 + the policy's credit allowance 0.00
        "state": "normal",
        "state_label": "Normal",
        "close_threshold": "5.00",
    }
    missing = client.get("/api/v1/payments/terminal/accounts/00000000", **auth("T001", secret))
    assert missing.status_code == 404


@pytest.mark.django_db
def test_an_ivr_device_cannot_use_the_terminal_api(org, account, client):
    _ivr, secret = device_create(code="IVR1", kind="ivr", hall_code="QX-H01")
    assert pay(client, auth("IVR1", secret), account).status_code == 403
    assert not Payment.objects.exists()


def test_names_are_masked():
    assert [mask_name(n) for n in ("张三", "欧阳娜娜", "王", "", " Li ")] == ["张*", "欧***", "王*", "", "L*"]


@pytest.mark.django_db
def test_the_schema_lists_the_payment_machine_endpoints(client):
    response = client.get("/api/schema/", HTTP_ACCEPT="application/json")
    assert response.status_code == 200
    schema = response.json()
    paths = schema["paths"]
    for path, method in [
        ("/api/v1/payments/terminal/payments", "post"),
        ("/api/v1/payments/terminal/accounts/{number}", "get"),
        ("/api/v1/payments/ivr/balance", "get"),
        ("/api/v1/payments/ivr/payments", "post"),
        ("/api/v1/payments/ivr/vouchers/redeem", "post"),
        ("/api/v1/payments/online/{provider}/notify", "post"),
        ("/api/v1/payments/online/orders/{order_no}", "get"),
    ]:
        assert method in paths[path], path
    assert paths["/api/v1/payments/terminal/payments"]["post"]["security"] == [{"deviceAuth": []}]
    assert schema["components"]["securitySchemes"]["deviceAuth"]["in"] == "header"
