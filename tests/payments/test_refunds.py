"""Refund of the remaining balance before (or after) an account closes: one REFUND entry that
brings the balance to zero, once per account."""

import itertools
from decimal import Decimal

import pytest

from billing.models import EntryKind, LedgerEntry
from billing.services.ledger import account_balance, ledger_check, ledger_post
from core.exceptions import Conflict, PermissionDenied, ValidationError
from customers.models import AccountStatus
from customers.services import account_close
from payments.models import Refund
from payments.services.refunds import refund_remaining_balance

pytestmark = pytest.mark.usefixtures("english", "fast_password_hashing")
_keys = itertools.count(1)


@pytest.fixture
def account(flat_tariff, make_prepaid):
    return make_prepaid(flat_tariff)[0]


def post(account, amount):
    amount = Decimal(amount)
    ledger_post(
        account_id=account.pk,
        kind="payment" if amount > 0 else "energy",
        amount=amount,
        source="payment" if amount > 0 else "reading",
        idempotency_key=f"refund-test:{next(_keys)}",
        description="test",
    )


def refund(actors, account, actor="counter", **kwargs):
    values = {"method": "cash", "payee": "张三", **kwargs}
    return refund_remaining_balance(actor=actors[actor], account_number=account.number, **values)


@pytest.mark.django_db
def test_the_remaining_balance_is_refunded_once_then_the_account_closes(actors, account):
    post(account, "100.00")
    post(account, "-23.45")
    # 100.00 - 23.45 = 76.55 left to refund
    result = refund(actors, account, method="transfer", bank_account="6222 0212 3456 7890")
    assert result.amount == Decimal("76.55") and result.bank_account == "6222021234567890"
    assert result.entry.kind == EntryKind.REFUND and result.entry.amount == Decimal("-76.55")
    assert result.created_by_id == actors["counter"].user_id
    assert account_balance(account.pk) == Decimal("0.00")
    assert ledger_check() == []

    closed = account_close(actor=actors["counter"], account=account)
    assert closed.status == AccountStatus.CLOSED
    with pytest.raises(Conflict, match="already refunded"):
        refund(actors, account)
    assert LedgerEntry.objects.filter(kind=EntryKind.REFUND).count() == 1


@pytest.mark.django_db
def test_a_closed_account_with_money_left_can_still_be_refunded(actors, account):
    post(account, "10.00")
    account_close(actor=actors["counter"], account=account)
    assert refund(actors, account).amount == Decimal("10.00")
    assert account_balance(account.pk) == Decimal("0.00")
    assert ledger_check() == []


@pytest.mark.django_db
@pytest.mark.parametrize("entries", [[], ["50.00", "-50.00"], ["20.00", "-20.01"]])
def test_nothing_to_refund_at_zero_or_in_debt(actors, account, entries):
    for amount in entries:
        post(account, amount)
    with pytest.raises(ValidationError, match="no balance to refund"):
        refund(actors, account)
    assert not Refund.objects.exists()
    assert not LedgerEntry.objects.filter(kind=EntryKind.REFUND).exists()


@pytest.mark.django_db
def test_refund_inputs_and_permission(actors, account):
    post(account, "5.00")
    with pytest.raises(ValidationError) as info:
        refund(actors, account, method="transfer", bank_account="", payee="")
    assert set(info.value.field_errors) == {"bank_account", "payee"}
    with pytest.raises(ValidationError) as info:
        refund(actors, account, method="voucher")
    assert "method" in info.value.field_errors
    with pytest.raises(PermissionDenied):
        refund(actors, account, actor="inspector")
    assert account_balance(account.pk) == Decimal("5.00")
