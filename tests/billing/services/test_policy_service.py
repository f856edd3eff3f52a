"""The cost-control policy carried out: decisions recorded with their figures, warnings
through the outbox, trips and closes as remote commands, and the rules of DESIGN.md §5."""

from datetime import timedelta
from decimal import Decimal

import pytest
from django.db import transaction
from django.utils import timezone

from billing.models import AccountBilling, CostControlState, NoTripEvent, PolicyAction, PolicyDecision
from billing.services.accounts import payment_apply
from billing.services.ledger import billing_states_lock, ledger_post
from billing.services.policy import policy_evaluate, policy_sweep
from billing.services.rating import rate_batch
from core.models import Notification
from metering.models import CommandAction, CommandOrigin, RemoteCommand
from tests.billing.services.conftest import at, ingest

pytestmark = pytest.mark.django_db

WORKDAY_10 = at(2026, 11, 25, 10)  # Wednesday 10:00
NIGHT_23 = at(2026, 11, 25, 23)
NATIONAL_DAY = at(2026, 10, 1, 10)
_keys = iter(range(1, 10_000))


def post(account, amount, kind=None):
    """A payment (positive) or an energy charge (negative), without the policy."""
    amount = Decimal(amount)
    ledger_post(
        account_id=account.pk,
        kind=kind or ("payment" if amount > 0 else "energy"),
        amount=amount,
        source="payment" if amount > 0 else "reading",
        idempotency_key=f"test:{next(_keys)}",
        description="test",
    )


def evaluate(account, now, trigger="rating"):
    with transaction.atomic():
        states = billing_states_lock([account.pk])
        return policy_evaluate(states, trigger=trigger, now=now)


def state(account) -> AccountBilling:
    return AccountBilling.objects.get(pk=account.pk)


def trip_commands(meter):
    return RemoteCommand.objects.filter(meter=meter, action=CommandAction.TRIP)


def close_commands(meter):
    return RemoteCommand.objects.filter(meter=meter, action=CommandAction.CLOSE)


@pytest.fixture
def prepaid(flat_tariff, make_prepaid):
    return make_prepaid(flat_tariff)


def test_warning_levels_are_sent_once_each_with_the_figures(prepaid):
    account, meter = prepaid
    post(account, "25.00")  # available 25 <= 30: level 1
    [d1] = evaluate(account, WORKDAY_10)
    assert d1.action == PolicyAction.WARN1 and state(account).state == CostControlState.WARNING1
    assert d1.numbers["available_balance"] == "25.00" and d1.numbers["warning1_threshold"] == "30.00"
    assert evaluate(account, WORKDAY_10) == []  # nothing new to say
    post(account, "-16.00")  # 9.00 <= 10: level 2
    [d2] = evaluate(account, WORKDAY_10)
    assert d2.action == PolicyAction.WARN2 and d2.state_before == CostControlState.WARNING1
    topics = list(Notification.objects.filter(account_id=account.pk).values_list("topic", "channel"))
    assert ("low_balance_1", "sms") in topics and ("low_balance_2", "sms") in topics
    assert not trip_commands(meter).exists()


def test_trip_only_after_the_warning_and_its_grace_period(prepaid):
    account, meter = prepaid
    post(account, "5.00")
    post(account, "-6.00")  # available -1.00 < 0, but no warning was sent yet
    [d] = evaluate(account, WORKDAY_10)
    assert d.action == PolicyAction.WARN2  # the required level-2 warning goes out instead of a trip
    [d] = evaluate(account, WORKDAY_10 + timedelta(hours=1))
    assert d.action == PolicyAction.TRIP_WITHHELD and "grace_period" in d.blocked_by
    assert not trip_commands(meter).exists()
    [d] = evaluate(account, WORKDAY_10 + timedelta(hours=2, minutes=1))
    assert d.action == PolicyAction.TRIP and d.numbers["available_balance"] == "-1.00"
    [cmd] = trip_commands(meter)
    assert cmd.origin == CommandOrigin.POLICY and d.command_id == cmd.pk
    assert state(account).state == CostControlState.TRIPPED
    assert Notification.objects.filter(account_id=account.pk, topic="trip").exists()


def warned_and_negative(account, now):
    post(account, "5.00")
    post(account, "-6.00")
    evaluate(account, now - timedelta(hours=5))  # level-2 warning five hours earlier


def test_no_trip_at_23_00(prepaid):
    account, meter = prepaid
    warned_and_negative(account, NIGHT_23)
    [d] = evaluate(account, NIGHT_23)
    assert d.action == PolicyAction.TRIP_WITHHELD and "night" in d.blocked_by
    assert evaluate(account, NIGHT_23 + timedelta(minutes=30)) == []  # recorded once, not at every rating
    assert not trip_commands(meter).exists()
    # the sweep trips in the morning, when the window ends
    assert policy_sweep(now=at(2026, 11, 26, 7, 30)) == 1
    assert trip_commands(meter).count() == 1


def test_no_trip_on_1_october(prepaid):
    account, meter = prepaid
    warned_and_negative(account, NATIONAL_DAY)
    [d] = evaluate(account, NATIONAL_DAY)
    assert d.action == PolicyAction.TRIP_WITHHELD and "holiday" in d.blocked_by
    assert not trip_commands(meter).exists()


def test_no_trip_of_a_protected_customer(flat_tariff, make_prepaid):
    account, meter = make_prepaid(flat_tariff, protected=True, protected_reason="医院")
    warned_and_negative(account, WORKDAY_10)
    [d] = evaluate(account, WORKDAY_10)
    assert d.action == PolicyAction.TRIP_WITHHELD and "protected" in d.blocked_by
    assert not trip_commands(meter).exists()


def test_no_trip_during_a_declared_event(prepaid):
    account, meter = prepaid
    NoTripEvent.objects.create(
        name="高考", starts_at=WORKDAY_10 - timedelta(hours=1), ends_at=WORKDAY_10 + timedelta(hours=8)
    )
    warned_and_negative(account, WORKDAY_10)
    [d] = evaluate(account, WORKDAY_10)
    assert d.action == PolicyAction.TRIP_WITHHELD and "event" in d.blocked_by


def trip(account, meter):
    warned_and_negative(account, WORKDAY_10)
    [d] = evaluate(account, WORKDAY_10)
    assert d.action == PolicyAction.TRIP
    return d


def test_a_payment_above_the_close_threshold_closes_once_at_any_hour(prepaid):
    account, meter = prepaid
    trip(account, meter)
    holiday_night = at(2026, 10, 2, 3)  # 03:00 on a public holiday: closing is always allowed
    payment_apply(
        account_id=account.pk, amount="3.00", idempotency_key="p1", source_ref="p1", now=holiday_night
    )
    assert not close_commands(meter).exists()  # available 2.00, not above 5.00
    payment_apply(
        account_id=account.pk, amount="50.00", idempotency_key="p2", source_ref="p2", now=holiday_night
    )
    payment_apply(
        account_id=account.pk, amount="50.00", idempotency_key="p3", source_ref="p3", now=holiday_night
    )
    payment_apply(
        account_id=account.pk, amount="50.00", idempotency_key="p2", source_ref="p2", now=holiday_night
    )
    [cmd] = close_commands(meter)
    assert cmd.origin == CommandOrigin.POLICY
    close = PolicyDecision.objects.get(account=account, action=PolicyAction.CLOSE)
    assert close.trigger_ref == "p2" and close.command_id == cmd.pk
    assert close.numbers["available_balance"] == "52.00"  # -1 + 3 + 50
    assert state(account).state == CostControlState.NORMAL
    assert Notification.objects.filter(account_id=account.pk, topic="restore", channel="sms").count() == 1


def test_rating_drives_the_policy(prepaid):
    account, meter = prepaid
    post(account, "40.00")
    d0 = timezone.localdate() - timedelta(days=5)
    rate_batch(ingest(meter, d0, "100.00").pk, now=WORKDAY_10)
    rate_batch(ingest(meter, d0 + timedelta(days=1), "120.00").pk, now=WORKDAY_10)
    # 20 kWh x 0.60 = 12.00: 40.00 -> 28.00 <= 30: warning level 1
    assert state(account).balance == Decimal("28.00")
    [d] = PolicyDecision.objects.filter(account=account)
    assert d.action == PolicyAction.WARN1 and d.trigger == "rating" and d.numbers["balance"] == "28.00"
