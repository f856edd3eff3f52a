"""``payment_credit``'s riders: a caller's INSERTs run inside the credit's own statement, on the
new entry, so they happen exactly when the entry is posted (once per idempotency key), see
the account as it was locked, and roll back with it."""

from datetime import date
from decimal import Decimal

import pytest
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext

from billing.models import LedgerEntry
from billing.services.accounts import CreditRider, payment_credit
from billing.services.ledger import account_balance, ledger_check
from core.models import Notification


@pytest.fixture
def account(flat_tariff, make_prepaid):
    account = make_prepaid(flat_tariff)[0]
    # 500.00 first: far above every warning level, so the policy has nothing to decide
    credit(account, "opening", "500.00")
    return account


def note_rider(name, body, preview, source="e"):
    """A rider that records a portal notification for the entry (``source`` is the CTE it
    reads), with the entry's id and amount in its text."""
    return CreditRider(
        name,
        f"INSERT INTO core_notification (channel, topic, recipient, subject, body, status, attempts,"  # noqa: S608
        f" last_error, provider_message_id, created_at, dedupe_key, customer_id)"
        f" SELECT 'portal', 'other', '', '', %s || ' ' || e.id || ' ' || e.amount, 'cancelled', 0, '', '',"
        f" now(), %s || e.id, %s FROM e WHERE EXISTS (SELECT 1 FROM {source}) RETURNING id",
        [body, f"{name}:", preview.customer.pk],
    )


def credit(account, key, amount="30.00", riders=None):
    return payment_credit(
        account_number=account.number,
        amount=Decimal(amount),
        idempotency_key=key,
        source_ref=key,
        description="test",
        riders=riders,
    )


@pytest.mark.django_db
def test_riders_run_in_the_credit_statement_and_return_their_ids(account):
    seen = []

    def riders(preview):
        seen.append((preview.account.pk, preview.state.balance, preview.amount, preview.balance_after))
        return [note_rider("n1", "first", preview), note_rider("n2", "second", preview, source="n1")]

    with CaptureQueriesContext(connection) as queries:
        done = credit(account, "k-1", "30.00", riders)
    assert len(queries) == 2  # the locked account, then the entry, the balance and both riders
    assert done.created
    # the preview: balance 500.00 before, 500.00 + 30.00 = 530.00 after
    assert seen == [(account.pk, Decimal("500.00"), Decimal("30.00"), Decimal("530.00"))]
    assert done.state.balance == Decimal("530.00")
    (first,), (second,) = done.rider_ids
    assert Notification.objects.get(pk=first).body == f"first {done.entry_id} 30.00"
    assert Notification.objects.get(pk=second).body == f"second {done.entry_id} 30.00"
    assert account_balance(account.pk) == Decimal("530.00")
    assert ledger_check() == []


@pytest.mark.django_db
def test_a_used_key_posts_nothing_and_the_riders_insert_nothing(account):
    credit(account, "k-1", "30.00", lambda preview: [note_rider("n1", "first", preview)])
    again = credit(account, "k-1", "30.00", lambda preview: [note_rider("n1", "again", preview)])
    assert not again.created and again.rider_ids == ()
    assert list(Notification.objects.filter(topic="other").values_list("body", flat=True)) == [
        f"first {LedgerEntry.objects.get(idempotency_key='k-1').pk} 30.00"
    ]
    assert account_balance(account.pk) == Decimal("530.00")


@pytest.mark.django_db
def test_what_the_riders_wrote_rolls_back_with_the_entry(account):
    with pytest.raises(RuntimeError), transaction.atomic():
        credit(account, "k-1", "30.00", lambda preview: [note_rider("n1", "first", preview)])
        raise RuntimeError("the caller failed after the credit")
    assert not Notification.objects.filter(topic="other").exists()
    assert not LedgerEntry.objects.filter(idempotency_key="k-1").exists()
    assert account_balance(account.pk) == Decimal("500.00")


@pytest.mark.django_db
@pytest.mark.parametrize("name", ["e", "u", "Bad", "x;drop", "1x", ""])
def test_a_rider_name_must_be_a_plain_identifier_of_its_own(account, name):
    with pytest.raises(ValueError, match="rider names"), transaction.atomic():
        credit(account, "k-1", "30.00", lambda preview: [note_rider(name, "x", preview)])
    assert not LedgerEntry.objects.filter(idempotency_key="k-1").exists()


@pytest.mark.django_db
def test_two_riders_may_not_share_a_name(account):
    with pytest.raises(ValueError, match="rider names"), transaction.atomic():
        credit(account, "k-1", "30.00", lambda p: [note_rider("n", "x", p), note_rider("n", "y", p)])


# --- the embedded mode's path (SQLite has no LATERAL join nor data-modifying CTEs) ----------


@pytest.mark.django_db
@pytest.mark.parametrize("tripped", [False, True])
def test_the_portable_path_gives_what_the_postgresql_path_gives(flat_tariff, make_prepaid, tripped):
    from billing.services.accounts import _payment_credit_portable
    from tests.payments.test_online import trip

    results = []
    for path in ("postgresql", "portable"):
        account = make_prepaid(flat_tariff)[0]
        if tripped:
            trip(account)  # balance -1.00, tripped
        args = {
            "account_number": account.number,
            "amount": Decimal("100.00"),
            "idempotency_key": f"k-{path}",
            "source_ref": f"k-{path}",
            "description": "test",
            "created_by_id": None,
        }
        if path == "postgresql":
            done = payment_credit(**args)
            again = payment_credit(**args)
        else:
            done = _payment_credit_portable(**args, now=None)
            again = _payment_credit_portable(**args, now=None)
        assert done.created and not again.created
        results.append(
            (
                done.state.balance,
                done.state.state,
                [d.action for d in done.decisions],
                done.close_command is not None,
                done.policy.code if done.policy else None,
                done.customer.name,
                account_balance(account.pk),
            )
        )
    # -1.00 + 100.00 = 99.00 (tripped: one close); 0.00 + 100.00 = 100.00 (nothing to decide)
    expected_balance = Decimal("99.00") if tripped else Decimal("100.00")
    assert results[0] == results[1]
    assert results[0][0] == expected_balance == results[0][6]
    assert results[0][3] is tripped
    assert ledger_check() == []


@pytest.mark.django_db
def test_the_portable_path_refuses_unknown_and_closed_accounts(account):
    from billing.services.accounts import _payment_credit_portable
    from core.exceptions import NotFound, ValidationError
    from customers.models import Account, AccountStatus

    args = {"amount": Decimal("1.00"), "source_ref": "x", "description": "t", "created_by_id": None}
    args["now"] = None
    with pytest.raises(NotFound) as unknown:
        _payment_credit_portable(account_number="NOPE", idempotency_key="k-a", **args)
    assert unknown.value.code == "unknown_account"
    Account.objects.filter(pk=account.pk).update(status=AccountStatus.CLOSED, closed_on=date(2026, 11, 1))
    with pytest.raises(ValidationError) as closed:
        _payment_credit_portable(account_number=account.number, idempotency_key="k-b", **args)
    assert closed.value.code == "account_closed"
    assert not LedgerEntry.objects.filter(idempotency_key__in=["k-a", "k-b"]).exists()
