"""The payment hot path (issue 5): few statements per payment, the device reply built from
the figures locked while posting (the same JSON as the documented serializer), the policy
in force read with the lock, device credentials verified once per process for a short
while without weakening the lockout, and exactly one close under concurrent payments."""

import re
from decimal import Decimal

import pytest
from django.core.cache import cache
from django.db import connection
from django.test.utils import CaptureQueriesContext

from billing.models import AccountBilling, CostControlPolicy, CostControlState, PolicyDecision
from billing.selectors import account_billing_summary
from billing.services.ledger import account_balance, ledger_check
from customers.models import Account
from metering.models import CommandAction, RemoteCommand
from payments.api import DevicePaymentOut, device_payment_body
from payments.models import Payment
from payments.services import devices
from payments.services.devices import device_create, device_secret_reset, terminal_payment_post
from tests.payments.test_online import trip
from tests.payments.test_posting import pay, run_together

pytestmark = pytest.mark.usefixtures("english")
PAY = "/api/v1/payments/terminal/payments"


@pytest.fixture(autouse=True)
def clean_caches():
    cache.clear()
    devices.device_credentials_forget()
    yield
    cache.clear()
    devices.device_credentials_forget()


@pytest.fixture
def account(flat_tariff, make_prepaid):
    return make_prepaid(flat_tariff)[0]


@pytest.fixture
def terminal(org):
    return device_create(code="T001", kind="terminal", hall_code="QX-H01")


def post(client, secret, account, txn, amount="50.00", **extra):
    body = {"txn_id": txn, "account_number": account.number, "amount": amount, "method": "cash"}
    return client.post(
        PAY, body, content_type="application/json", HTTP_AUTHORIZATION=f"Device T001:{secret}", **extra
    )


def statements(queries):
    """The statements of a request, without the savepoints the test's own transaction adds."""
    return [q["sql"] for q in queries if not re.search(r"(^|; )(RELEASE )?SAVEPOINT ", q["sql"])]


@pytest.mark.django_db
def test_a_new_terminal_payment_takes_two_statements_and_a_repeat_three(terminal, account, client):
    _device, secret = terminal
    # signs the device in; 100.00 is far above every warning level, so the policy is not asked
    assert post(client, secret, account, "TX-0", "100.00").status_code == 201
    with CaptureQueriesContext(connection) as new:
        assert post(client, secret, account, "TX-1").status_code == 201
    # the locked account, then one statement for the entry with the balance, the payment and
    # the outbox's INSERT of the receipts (billing's credit riders; ON CONFLICT skips a stored
    # key, no query for them); no device look-up (verified before), no savepoint
    sql = statements(new.captured_queries)
    assert len(sql) == 2, sql
    assert "FOR NO KEY UPDATE" in sql[0]
    assert all(table in sql[1] for table in ("billing_ledgerentry", "payments_payment", "core_notification"))
    with CaptureQueriesContext(connection) as repeat:
        assert post(client, secret, account, "TX-1").status_code == 200
    # the locked account, the entry that inserts nothing, the first payment
    assert len(statements(repeat.captured_queries)) == 3, statements(repeat.captured_queries)
    assert Payment.objects.count() == 2
    assert account_balance(account.pk) == Decimal("150.00")  # 100.00 + 50.00
    assert ledger_check() == []


@pytest.mark.django_db
@pytest.mark.parametrize("case", ["normal", "still_off", "restored", "repeat"])
def test_the_reply_is_the_documented_serializers_json(terminal, flat_tariff, make_prepaid, case):
    device, _secret = terminal
    account, _meter = make_prepaid(flat_tariff)
    amount = "50.00"
    if case in ("still_off", "restored"):
        trip(account)  # balance -1.00, tripped
        amount = "2.00" if case == "still_off" else "100.00"  # -1 + 2 = 1 (not above 5); -1 + 100 = 99
    paid = terminal_payment_post(
        device=device, txn_id="TX-9", account_number=account.number, amount=amount, method="cash"
    )
    if case == "repeat":
        paid = terminal_payment_post(
            device=device, txn_id="TX-9", account_number=account.number, amount=amount, method="cash"
        )
        assert not paid.result.created
    body = device_payment_body(paid)
    assert body == DevicePaymentOut(paid).data
    assert (
        body["restore"]["status"]
        == {
            "normal": "not_needed",
            "repeat": "not_needed",
            "still_off": "still_off",
            "restored": "pending",
        }[case]
    )
    # and the same figures as the account page's summary
    summary = account_billing_summary(account=Account.objects.select_related("customer").get(pk=account.pk))
    assert Decimal(body["account"]["balance"]) == summary.state.balance
    assert Decimal(body["account"]["available_balance"]) == summary.available_balance
    assert body["account"]["state"] == summary.state.state
    assert Decimal(body["account"]["close_threshold"]) == summary.policy.close_threshold


@pytest.mark.django_db
def test_the_policy_in_force_is_the_most_specific_or_the_contracts(terminal, account, policy):
    device, _secret = terminal
    CostControlPolicy.objects.create(
        code="RES",
        name="Residential",
        category="residential",
        warning1_threshold=Decimal("40"),
        warning2_threshold=Decimal("10"),
        trip_threshold=Decimal("0"),
        close_threshold=Decimal("8"),
        credit_allowance=Decimal("15.00"),
    )
    contract = CostControlPolicy.objects.create(
        code="CONTRACT",
        name="By contract",
        warning1_threshold=Decimal("30"),
        warning2_threshold=Decimal("10"),
        trip_threshold=Decimal("0"),
        close_threshold=Decimal("6"),
    )

    def reply(txn):
        paid = terminal_payment_post(
            device=device, txn_id=txn, account_number=account.number, amount="100.00", method="cash"
        )
        return device_payment_body(paid)["account"]

    first = reply("TX-1")
    # the residential policy beats the default; available = 100.00 + 15.00 allowance = 115.00
    assert (first["close_threshold"], first["available_balance"]) == ("8.00", "115.00")
    AccountBilling.objects.filter(pk=account.pk).update(policy=contract)
    second = reply("TX-2")
    # by contract; its allowance is 0: available = 200.00
    assert (second["close_threshold"], second["available_balance"]) == ("6.00", "200.00")


@pytest.mark.django_db
def test_the_policy_is_asked_only_when_it_could_decide(account):
    pay(account, "100.00", "P-QUIET")  # normal, 100.00 far above warning level 1 (30)
    assert not PolicyDecision.objects.exists()
    AccountBilling.objects.filter(pk=account.pk).update(
        state=CostControlState.WARNING1, balance=Decimal("20.00")
    )
    pay(account, "50.00", "P-RECOVER")  # warned, 20.00 + 50.00 = 70.00: back to normal
    decision = PolicyDecision.objects.get()
    assert (decision.action, decision.trigger_ref) == ("recover", "online:P-RECOVER")
    assert AccountBilling.objects.get(pk=account.pk).state == CostControlState.NORMAL


@pytest.mark.django_db
def test_an_account_without_a_billing_state_gets_one(account):
    AccountBilling.objects.filter(pk=account.pk).delete()
    result = pay(account, "12.34", "P-FIRST")
    assert result.created and result.credit.state.balance == Decimal("12.34")
    assert AccountBilling.objects.get(pk=account.pk).balance == Decimal("12.34")


@pytest.mark.django_db
def test_a_verified_device_is_not_looked_up_again_but_a_lockout_still_holds(
    terminal, account, client, settings
):
    _device, secret = terminal
    url = f"/api/v1/payments/terminal/accounts/{account.number}"
    auth = {"HTTP_AUTHORIZATION": f"Device T001:{secret}"}
    assert client.get(url, **auth).status_code == 200
    with CaptureQueriesContext(connection) as queries:
        assert client.get(url, **auth).status_code == 200
    assert not any("payments_terminaldevice" in q["sql"] for q in queries.captured_queries)
    # ten wrong secrets from elsewhere lock the code out, even for the verified secret
    for i in range(10):
        bad = {"HTTP_AUTHORIZATION": "Device T001:guess"}
        assert client.get(url, REMOTE_ADDR=f"10.9.0.{i}", **bad).status_code == 401
    assert client.get(url, **auth).status_code == 429


@pytest.mark.django_db
def test_a_reset_secret_stops_working_at_once_in_this_process(terminal, account, client):
    _device, secret = terminal
    url = f"/api/v1/payments/terminal/accounts/{account.number}"
    assert client.get(url, HTTP_AUTHORIZATION=f"Device T001:{secret}").status_code == 200
    new_secret = device_secret_reset(code="T001")
    assert client.get(url, HTTP_AUTHORIZATION=f"Device T001:{secret}").status_code == 401
    assert client.get(url, HTTP_AUTHORIZATION=f"Device T001:{new_secret}").status_code == 200


@pytest.mark.django_db
def test_without_the_credential_cache_every_request_is_checked(terminal, account, client, settings):
    settings.DEVICE_AUTH_CACHE_SECONDS = 0
    _device, secret = terminal
    url = f"/api/v1/payments/terminal/accounts/{account.number}"
    assert client.get(url, HTTP_AUTHORIZATION=f"Device T001:{secret}").status_code == 200
    with CaptureQueriesContext(connection) as queries:
        assert client.get(url, HTTP_AUTHORIZATION=f"Device T001:{secret}").status_code == 200
    assert any("payments_terminaldevice" in q["sql"] for q in queries.captured_queries)


@pytest.mark.django_db(transaction=True)
@pytest.mark.skipif("connection.vendor != 'postgresql'", reason="row locks need PostgreSQL")
def test_concurrent_payments_to_a_tripped_account_close_it_once(flat_tariff, make_prepaid):
    account, meter = make_prepaid(flat_tariff)
    trip(account)  # balance -1.00, tripped
    results = run_together(
        [lambda i=i: pay(account, "20.00", f"C-{i}", channel="terminal", method="cash") for i in range(6)]
    )
    assert all(r.created for r in results)
    closes = RemoteCommand.objects.filter(meter=meter, action=CommandAction.CLOSE)
    assert closes.count() == 1
    assert [r.payment.restore_command_id for r in results if r.payment.restore_command_id] == [
        closes.get().pk
    ]
    assert Payment.objects.filter(restore_command__isnull=False).count() == 1
    # -1.00 + 6 x 20.00 = 119.00
    assert AccountBilling.objects.get(pk=account.pk).balance == Decimal("119.00")
    assert ledger_check() == []


@pytest.mark.parametrize(
    "data",
    [
        {"txn_id": "TX-1", "account_number": "3100", "amount": "12.30", "method": "cash"},
        {"txn_id": "TX-1", "account_number": "3100", "amount": Decimal("33.3"), "method": "card"},
        {},
        {"txn_id": "x" * 65, "account_number": "", "amount": "1.001", "method": "voucher"},
        {"txn_id": None, "account_number": "3100", "amount": "abc", "method": "cash", "extra": 1},
        {"txn_id": "TX-1", "account_number": "3100", "amount": "1" * 14, "method": "cash"},
        ["not", "an", "object"],
    ],
)
def test_device_input_is_validated_as_the_serializer_does(data):
    from rest_framework import serializers

    from payments.api import IvrPaymentIn, TerminalPaymentIn, device_payment_input

    for serializer_class in (TerminalPaymentIn, IvrPaymentIn):
        serializer = serializer_class(data=data)
        if serializer.is_valid():
            assert device_payment_input(serializer_class, data) == dict(serializer.validated_data)
        else:
            with pytest.raises(serializers.ValidationError) as info:
                device_payment_input(serializer_class, data)
            assert info.value.detail == serializer.errors
