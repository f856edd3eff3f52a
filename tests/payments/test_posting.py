"""The one posting service: once per (channel, reference), clear errors that post nothing,
cash change, and the close a payment causes for a tripped prepaid account."""

import threading
from decimal import Decimal

import pytest
from django.db import close_old_connections, connection

from billing.models import AccountBilling, EntryKind, LedgerEntry
from billing.services.ledger import account_balance, ledger_check
from core.exceptions import Conflict, NotFound, ValidationError
from customers.models import AccountStatus
from metering.models import CommandAction, RemoteCommand
from payments.models import Payment
from payments.services.posting import payment_post
from tests.billing.services.conftest import at
from tests.billing.services.test_policy_service import evaluate, post

pytestmark = pytest.mark.usefixtures("english")


def pay(account, amount="50.00", ref="R1", channel="online", method="online", **extra):
    return payment_post(
        channel=channel, external_id=ref, account_number=account.number, amount=amount, method=method, **extra
    )


@pytest.fixture
def account(flat_tariff, make_prepaid):
    return make_prepaid(flat_tariff)[0]


@pytest.mark.django_db
def test_a_payment_posts_once_and_a_repeat_returns_the_first(account):
    first = pay(account, "50.00", "ORDER-1")
    again = pay(account, "50.00", "ORDER-1")
    assert first.created and not again.created and again.payment.pk == first.payment.pk
    assert LedgerEntry.objects.filter(account=account, kind=EntryKind.PAYMENT).count() == 1
    assert account_balance(account.pk) == Decimal("50.00")
    # the same reference on another channel is another payment
    assert pay(account, "50.00", "ORDER-1", channel="ivr", method="card").created


@pytest.mark.django_db
def test_a_reused_reference_with_another_amount_is_a_conflict(account):
    pay(account, "50.00", "ORDER-2")
    with pytest.raises(Conflict):
        pay(account, "60.00", "ORDER-2")
    assert account_balance(account.pk) == Decimal("50.00")


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("amount", "field"),
    [("0", "amount"), ("-5", "amount"), ("10.001", "amount"), ("abc", "amount"), ("60000.00", "amount")],
)
def test_bad_amounts_are_refused_and_nothing_is_posted(account, amount, field):
    with pytest.raises(ValidationError) as info:
        pay(account, amount, "BAD")
    assert field in info.value.field_errors
    assert not Payment.objects.exists() and not LedgerEntry.objects.exists()


@pytest.mark.django_db
def test_unknown_and_closed_accounts_are_refused(account):
    with pytest.raises(NotFound, match="No account with number 9999"):
        payment_post(channel="ivr", external_id="X1", account_number="9999", amount="10", method="card")
    account.status = AccountStatus.CLOSED
    account.closed_on = account.opened_on
    account.save()
    with pytest.raises(ValidationError, match="closed"):
        pay(account, "10.00", "X2")
    with pytest.raises(ValidationError):
        payment_post(
            channel="ivr", external_id="bad ref!", account_number=account.number, amount="1", method="card"
        )
    assert not Payment.objects.exists()


@pytest.mark.django_db
def test_cash_at_the_counter_gives_change(account):
    result = pay(account, "87.50", "C1", channel="counter", method="cash", cash_tendered="100")
    assert result.payment.change_given == Decimal("12.50")  # 100.00 - 87.50
    with pytest.raises(ValidationError, match="less than"):
        pay(account, "87.50", "C2", channel="counter", method="cash", cash_tendered="80")


@pytest.mark.django_db
def test_a_payment_to_a_tripped_account_records_its_close_command(flat_tariff, make_prepaid):
    account, meter = make_prepaid(flat_tariff)
    post(account, "5.00")
    post(account, "-6.00")
    evaluate(account, at(2026, 11, 25, 5))
    evaluate(account, at(2026, 11, 25, 10))  # tripped
    result = pay(account, "100.00", "P-CLOSE")
    close = RemoteCommand.objects.get(meter=meter, action=CommandAction.CLOSE)
    assert result.payment.restore_command_id == close.pk
    assert not pay(account, "20.00", "P-AFTER").payment.restore_command_id


def run_together(funcs):
    barrier = threading.Barrier(len(funcs))
    errors, results = [], []

    def wrap(func):
        try:
            barrier.wait()
            results.append(func())
        except Exception as exc:
            errors.append(exc)
        finally:
            close_old_connections()
            connection.close()

    threads = [threading.Thread(target=wrap, args=(f,)) for f in funcs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    return results


@pytest.mark.django_db(transaction=True)
@pytest.mark.skipif("connection.vendor != 'postgresql'", reason="row locks need PostgreSQL")
def test_duplicate_concurrent_deliveries_post_once(account):
    results = run_together([lambda: pay(account, "33.33", "DUP") for _ in range(8)])
    assert sum(r.created for r in results) == 1
    assert Payment.objects.count() == 1 and LedgerEntry.objects.count() == 1
    assert AccountBilling.objects.get(pk=account.pk).balance == Decimal("33.33")


@pytest.mark.django_db(transaction=True)
@pytest.mark.skipif("connection.vendor != 'postgresql'", reason="row locks need PostgreSQL")
def test_fifty_concurrent_payments_to_one_account_all_post_exactly(account):
    results = run_together(
        [
            lambda i=i: pay(account, f"{i + 1}.01", f"MANY-{i}", channel="terminal", method="cash")
            for i in range(50)
        ]
    )
    assert all(r.created for r in results)
    # sum of (i + 1.01) for i = 0..49 = (1 + 2 + ... + 50) + 50 x 0.01 = 1275 + 0.50 = 1275.50
    assert AccountBilling.objects.get(pk=account.pk).balance == Decimal("1275.50")
    assert account_balance(account.pk) == Decimal("1275.50")
    assert ledger_check() == []
    assert RemoteCommand.objects.count() == 0
