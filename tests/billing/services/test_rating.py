"""Real-time rating of stored readings: charges worked out by hand, idempotency, true-up."""

from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from billing.models import AccountBilling, EntryKind, LedgerEntry, RatingCursor, TierAccumulator
from billing.services.ledger import account_balance, ledger_check, ledger_post
from billing.services.rating import rate_batch, rating_cursors_start
from metering.hooks import _listeners
from tests.billing.services.conftest import at, ingest

pytestmark = pytest.mark.django_db

NOW = at(2026, 11, 25, 10)  # a Wednesday, a working day, outside the night window


def charges(account):
    return list(
        LedgerEntry.objects.filter(account=account, kind=EntryKind.ENERGY_CHARGE)
        .order_by("id")
        .values_list("amount", "kwh")
    )


def fund(account, amount="100.00"):
    ledger_post(
        account_id=account.pk,
        kind="payment",
        amount=Decimal(amount),
        source="payment",
        idempotency_key=f"fund:{account.pk}:{amount}",
        description="opening",
    )


def test_billing_listens_to_metering_hook():
    from billing.apps import _queue_rating

    assert _queue_rating in _listeners


def test_first_reading_is_the_baseline_then_each_day_is_charged(flat_tariff, make_prepaid):
    account, meter = make_prepaid(flat_tariff)
    fund(account)
    d0 = timezone.localdate() - timedelta(days=5)
    r = rate_batch(ingest(meter, d0, "100.00").pk, now=NOW)
    assert (r.baselines, r.entries) == (1, 0)
    assert RatingCursor.objects.get(meter=meter).total == Decimal("100.00")

    rate_batch(ingest(meter, d0 + timedelta(days=1), "112.50").pk, now=NOW)
    # 112.50 - 100.00 = 12.50 kWh x 0.60 = 7.50 yuan
    assert charges(account) == [(Decimal("-7.50"), Decimal("12.50"))]
    entry = LedgerEntry.objects.get(account=account, kind=EntryKind.ENERGY_CHARGE)
    assert entry.business_date == d0  # the freeze of d0+1 closes the day d0
    assert account_balance(account.pk) == Decimal("92.50")  # 100.00 - 7.50
    assert AccountBilling.objects.get(pk=account.pk).balance == Decimal("92.50")


def test_a_batch_rated_twice_posts_once(flat_tariff, make_prepaid):
    account, meter = make_prepaid(flat_tariff)
    d0 = timezone.localdate() - timedelta(days=5)
    rate_batch(ingest(meter, d0, "100.00").pk, now=NOW)
    batch = ingest(meter, d0 + timedelta(days=1), "110.00")
    first = rate_batch(batch.pk, now=NOW)
    again = rate_batch(batch.pk, now=NOW)
    assert (first.entries, again.entries, again.skipped) == (1, 0, 1)
    assert charges(account) == [(Decimal("-6.00"), Decimal("10.00"))]  # 10 kWh x 0.60
    assert ledger_check() == []


def test_a_gap_of_several_days_is_charged_once_for_the_whole_difference(flat_tariff, make_prepaid):
    account, meter = make_prepaid(flat_tariff)
    d0 = timezone.localdate() - timedelta(days=6)
    rate_batch(ingest(meter, d0, "50.00").pk, now=NOW)
    rate_batch(ingest(meter, d0 + timedelta(days=3), "80.25").pk, now=NOW)
    # 30.25 kWh x 0.60 = 18.15
    assert charges(account) == [(Decimal("-18.15"), Decimal("30.25"))]


def test_an_estimate_is_rated_and_trued_up_when_the_actual_arrives(flat_tariff, make_prepaid):
    account, meter = make_prepaid(flat_tariff)
    d0 = timezone.localdate() - timedelta(days=5)
    rate_batch(ingest(meter, d0, "100.00").pk, now=NOW)
    d1 = d0 + timedelta(days=1)
    rate_batch(ingest(meter, d1, "108.00", source="estimated").pk, now=NOW)
    assert RatingCursor.objects.get(meter=meter).estimated
    rate_batch(ingest(meter, d1, "109.50").pk, now=NOW)
    # estimate: 8.00 kWh x 0.60 = 4.80; actual 9.50 kWh: true-up 1.50 kWh x 0.60 = 0.90
    assert charges(account) == [(Decimal("-4.80"), Decimal("8.00")), (Decimal("-0.90"), Decimal("1.50"))]
    assert not RatingCursor.objects.get(meter=meter).estimated


def test_an_estimate_above_the_actual_is_refunded_by_the_true_up(flat_tariff, make_prepaid):
    account, meter = make_prepaid(flat_tariff)
    d0 = timezone.localdate() - timedelta(days=5)
    rate_batch(ingest(meter, d0, "100.00").pk, now=NOW)
    d1 = d0 + timedelta(days=1)
    rate_batch(ingest(meter, d1, "110.00", source="estimated").pk, now=NOW)
    rate_batch(ingest(meter, d1, "107.00").pk, now=NOW)
    # estimate 10 kWh -> 6.00 charged; actual 7 kWh: true-up -3 kWh x 0.60 = +1.80 back
    assert charges(account) == [(Decimal("-6.00"), Decimal("10.00")), (Decimal("1.80"), Decimal("-3.00"))]
    assert account_balance(account.pk) == Decimal("-4.20")  # 7 kWh x 0.60


def test_annual_tiers_accumulate_across_readings(tier_tariff, make_prepaid):
    account, meter = make_prepaid(tier_tariff)
    d0 = timezone.localdate() - timedelta(days=5)
    rate_batch(ingest(meter, d0, "1000.00").pk, now=NOW)
    TierAccumulator.objects.create(
        account=account, period_start=d0.replace(month=1, day=1), kwh=Decimal("2150")
    )
    rate_batch(ingest(meter, d0 + timedelta(days=1), "1020.00").pk, now=NOW)
    # 20 kWh with 2150 used: 10 kWh at 0.5283 = 5.283 -> 5.28; 10 kWh at 0.5783 = 5.783 -> 5.78
    # total 11.06
    assert charges(account) == [(Decimal("-11.06"), Decimal("20.00"))]
    acc = TierAccumulator.objects.get(account=account, period_start=d0.replace(month=1, day=1))
    assert acc.kwh == Decimal("2170.00")


def test_annual_blocks_are_prorated_for_an_account_opened_mid_year(tier_tariff, make_prepaid):
    account, meter = make_prepaid(tier_tariff)
    d0 = timezone.localdate() - timedelta(days=5)
    account.opened_on = d0.replace(month=7, day=1)
    account.save(update_fields=["opened_on"])
    rate_batch(ingest(meter, d0, "1000.00").pk, now=NOW)
    TierAccumulator.objects.create(
        account=account, period_start=d0.replace(month=1, day=1), kwh=Decimal("1080")
    )
    rate_batch(ingest(meter, d0 + timedelta(days=1), "1020.00").pk, now=NOW)
    # active 1 July - 31 December = 184 of 365 days: block 1 = 2160 x 184 / 365 = 1088.88 -> 1089 kWh
    # 20 kWh with 1080 used: 9 kWh x 0.5283 = 4.7547 -> 4.75; 11 kWh x 0.5783 = 6.3613 -> 6.36; = 11.11
    assert charges(account) == [(Decimal("-11.11"), Decimal("20.00"))]


def test_ct_pt_multiplier_scales_consumption(flat_tariff, make_prepaid):
    account, meter = make_prepaid(flat_tariff)
    sp = meter.service_point
    sp.ct_ratio, sp.pt_ratio = 30, 1
    sp.save()
    d0 = timezone.localdate() - timedelta(days=5)
    rate_batch(ingest(meter, d0, "10.00").pk, now=NOW)
    rate_batch(ingest(meter, d0 + timedelta(days=1), "11.25").pk, now=NOW)
    # 1.25 kWh on the register x 30 = 37.50 kWh x 0.60 = 22.50
    assert charges(account) == [(Decimal("-22.50"), Decimal("37.50"))]


def test_postpaid_accounts_are_not_rated_in_real_time(flat_tariff, make_prepaid):
    account, meter = make_prepaid(flat_tariff, settlement_mode="postpaid")
    d0 = timezone.localdate() - timedelta(days=5)
    rate_batch(ingest(meter, d0, "10.00").pk, now=NOW)
    r = rate_batch(ingest(meter, d0 + timedelta(days=1), "20.00").pk, now=NOW)
    assert r.readings == 0 and charges(account) == []


def test_cursors_can_be_started_at_the_latest_reading(flat_tariff, make_prepaid):
    account, meter = make_prepaid(flat_tariff)
    d0 = timezone.localdate() - timedelta(days=5)
    ingest(meter, d0, "10.00")
    ingest(meter, d0 + timedelta(days=1), "20.00")
    assert rating_cursors_start(meter_ids=[meter.pk], as_of=d0 + timedelta(days=1)) == 1
    assert RatingCursor.objects.get(meter=meter).total == Decimal("20.00")
    rate_batch(ingest(meter, d0 + timedelta(days=2), "21.00").pk, now=NOW)
    assert charges(account) == [(Decimal("-0.60"), Decimal("1.00"))]
