"""Races on PostgreSQL with real concurrent transactions: rating and payments on the same
account lose no entry; concurrent payments to a tripped account close it exactly once; a
randomised mix leaves every cached balance equal to its ledger."""

import random
import threading
from datetime import timedelta
from decimal import Decimal

import pytest
from django.db import close_old_connections, connection
from django.utils import timezone

from billing.models import AccountBilling, EntryKind, LedgerEntry, PolicyAction, PolicyDecision
from billing.services.accounts import payment_apply
from billing.services.ledger import account_balance, ledger_check, ledger_post, ledger_reverse
from billing.services.rating import rate_batch
from metering.models import CommandAction, RemoteCommand
from tests.billing.services.conftest import at, ingest
from tests.billing.services.test_policy_service import evaluate, post

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif("connection.vendor != 'postgresql'", reason="row locks need PostgreSQL"),
]

WORKDAY_10 = at(2026, 11, 25, 10)


def run_together(*funcs):
    """Start all at once (barrier), each in its own thread and database connection."""
    barrier = threading.Barrier(len(funcs))
    errors = []

    def wrap(func):
        try:
            barrier.wait()
            func()
        except Exception as exc:  # reported below, so a failing thread fails the test
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


def test_rating_and_a_payment_at_once_lose_no_entry(flat_tariff, make_prepaid):
    account, meter = make_prepaid(flat_tariff)
    d0 = timezone.localdate() - timedelta(days=12)
    rate_batch(ingest(meter, d0, "100.00").pk, now=WORKDAY_10)
    batches = [ingest(meter, d0 + timedelta(days=i), f"{100 + 10 * i}.00") for i in range(1, 11)]
    for i, batch in enumerate(batches):
        run_together(
            lambda b=batch: rate_batch(b.pk, now=WORKDAY_10),
            lambda i=i: payment_apply(
                account_id=account.pk, amount="7.00", idempotency_key=f"race{i}", source_ref=f"race{i}"
            ),
        )
    # 10 days x 10 kWh x 0.60 = 60.00 charged; 10 x 7.00 = 70.00 paid
    assert LedgerEntry.objects.filter(account=account, kind=EntryKind.ENERGY_CHARGE).count() == 10
    assert LedgerEntry.objects.filter(account=account, kind=EntryKind.PAYMENT).count() == 10
    assert AccountBilling.objects.get(pk=account.pk).balance == Decimal("10.00")
    assert account_balance(account.pk) == Decimal("10.00")
    assert ledger_check() == []


def test_concurrent_payments_to_a_tripped_account_close_it_exactly_once(flat_tariff, make_prepaid):
    account, meter = make_prepaid(flat_tariff)
    post(account, "5.00")
    post(account, "-6.00")
    evaluate(account, WORKDAY_10 - timedelta(hours=5))  # the level-2 warning
    [trip] = evaluate(account, WORKDAY_10)
    assert trip.action == PolicyAction.TRIP
    run_together(
        *[
            lambda i=i: payment_apply(
                account_id=account.pk, amount="20.00", idempotency_key=f"pay{i}", source_ref=f"pay{i}"
            )
            for i in range(6)
        ]
    )
    assert RemoteCommand.objects.filter(meter=meter, action=CommandAction.CLOSE).count() == 1
    assert PolicyDecision.objects.filter(account=account, action=PolicyAction.CLOSE).count() == 1
    assert AccountBilling.objects.get(pk=account.pk).balance == Decimal("119.00")  # -1 + 6 x 20
    assert ledger_check() == []


def test_duplicate_deliveries_of_one_payment_post_once(flat_tariff, make_prepaid):
    account, _meter = make_prepaid(flat_tariff)
    run_together(
        *[
            lambda: payment_apply(
                account_id=account.pk, amount="12.34", idempotency_key="same", source_ref="s"
            )
            for _ in range(5)
        ]
    )
    assert LedgerEntry.objects.filter(account=account).count() == 1
    assert AccountBilling.objects.get(pk=account.pk).balance == Decimal("12.34")


def test_a_randomised_mix_leaves_every_balance_equal_to_its_ledger(flat_tariff, make_prepaid):
    accounts = [make_prepaid(flat_tariff)[0] for _ in range(4)]
    rng = random.Random(20261127)
    plans = []
    for worker in range(4):
        ops = []
        for n in range(25):
            account = rng.choice(accounts)
            kind = rng.choice(["payment", "energy", "adjustment", "reverse", "repeat"])
            amount = Decimal(rng.randint(1, 5000)) / 100
            ops.append((worker, n, account.pk, kind, amount))
        plans.append(ops)

    def work(ops):
        for worker, n, account_id, kind, amount in ops:
            key = f"mix:{worker}:{n}"
            if kind == "payment":
                payment_apply(account_id=account_id, amount=amount, idempotency_key=key, source_ref=key)
            elif kind == "repeat":  # the same payment delivered again: posts once per worker
                payment_apply(
                    account_id=accounts[worker].pk,
                    amount="9.99",
                    idempotency_key=f"mix:{worker}:dup",
                    source_ref="d",
                )
            elif kind == "energy":
                ledger_post(
                    account_id=account_id,
                    kind=kind,
                    amount=-amount,
                    source="reading",
                    idempotency_key=key,
                    description="mix",
                )
            elif kind == "adjustment":
                ledger_post(
                    account_id=account_id,
                    kind=kind,
                    amount=amount if n % 2 else -amount,
                    source="staff",
                    idempotency_key=key,
                    description="mix",
                )
            else:
                entry = (
                    LedgerEntry.objects.filter(account_id=account_id, reverses__isnull=True)
                    .exclude(kind=EntryKind.REVERSAL)
                    .exclude(reversed_by__isnull=False)
                    .order_by("?")
                    .first()
                )
                if entry is not None:
                    ledger_reverse(entry=entry, reason="mix", created_by_id=None)

    run_together(*[lambda ops=ops: work(ops) for ops in plans])
    assert ledger_check() == []
    for account in accounts:
        assert AccountBilling.objects.get(pk=account.pk).balance == account_balance(account.pk)
    assert LedgerEntry.objects.count() > 50
