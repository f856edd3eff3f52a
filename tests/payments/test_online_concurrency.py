"""Concurrent deliveries of one gateway notification (and of fresh ones for the same order)
post exactly once, on PostgreSQL with real transactions."""

from decimal import Decimal

import pytest
from django.db import connection  # noqa: F401  (the skipif condition reads it)

from billing.models import AccountBilling, LedgerEntry
from billing.services.ledger import account_balance
from payments.gateways.simulated import SimulatedGateway
from payments.models import GatewayNotification, GatewayOrder, Payment
from payments.services.online import online_notification_receive, online_order_create
from tests.payments.test_posting import run_together

Outcome = GatewayNotification.Outcome


@pytest.mark.django_db(transaction=True)
@pytest.mark.skipif("connection.vendor != 'postgresql'", reason="row locks need PostgreSQL")
def test_concurrent_deliveries_of_a_notification_post_once(flat_tariff, make_prepaid, english):
    account = make_prepaid(flat_tariff)[0]
    order, _url = online_order_create(account_number=account.number, amount="66.60")
    gateway = SimulatedGateway()
    same = gateway.notification_for(order)  # one notification delivered three times at once
    others = [gateway.notification_for(order) for _ in range(3)]  # three more, each its own nonce

    def deliver(kind, body, headers):
        return lambda: (kind, online_notification_receive(provider="sim", body=body, headers=headers).outcome)

    results = run_together(
        [deliver("same", *same) for _ in range(3)] + [deliver("other", *n) for n in others]
    )
    accepted = [kind for kind, outcome in results if outcome == Outcome.ACCEPTED]
    assert len(accepted) == 1
    rest = sorted(results)
    rest.remove((accepted[0], Outcome.ACCEPTED))
    # The others wait for the winner's lock on the order; then a delivery with the winner's
    # nonce is a replay, any other a duplicate of the paid order. All are acknowledged.
    expect_same = Outcome.REPLAY if accepted[0] == "same" else Outcome.DUPLICATE
    assert all(outcome == (expect_same if kind == "same" else Outcome.DUPLICATE) for kind, outcome in rest)
    assert GatewayNotification.objects.count() == 6
    assert Payment.objects.count() == 1 and LedgerEntry.objects.count() == 1
    order.refresh_from_db()
    assert order.status == GatewayOrder.Status.PAID
    assert account_balance(account.pk) == Decimal("66.60")
    assert AccountBilling.objects.get(pk=account.pk).balance == Decimal("66.60")
