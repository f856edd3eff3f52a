"""The portal's account reads: days left, home cards, daily and monthly consumption with the
time-of-use split, the tier position and the statement. Readings go in through the real
ingest path, ledger entries through ``ledger_post``; every expected figure is worked out by
hand in the comments."""

from datetime import date, datetime, time, timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from billing.models import AccountBilling, TierAccumulator
from metering.models import MeterInstallation
from portal import selectors
from tests.billing.conftest import post_entry  # noqa: F401
from tests.billing.services.conftest import SHANGHAI, ingest

D = Decimal
TODAY = date(2025, 3, 15)


def installed_since(meter, day: date, initial: str = "0") -> None:
    """make_prepaid installs the meter 60 days before the real today; these tests read
    fixed past dates, so the installation starts earlier (with registers ``initial``)."""
    MeterInstallation.objects.filter(meter=meter).update(
        installed_at=datetime.combine(day, time.min, tzinfo=SHANGHAI),
        initial_registers={"forward_total": initial},
    )


def tou(meter, day, peak, valley):
    """A reading whose total is peak + valley (sharp and flat registers at zero)."""
    total = D(peak) + D(valley)
    return ingest(
        meter, day, total, forward_sharp="0", forward_peak=peak, forward_flat="0", forward_valley=valley
    )


# ----------------------------------------------------------------------------- days left


@pytest.mark.parametrize(
    ("available", "trip", "charged", "window", "expected"),
    [
        # ¥45.00 in 30 days = ¥1.50 a day; ¥100.00 / 1.50 = 66.7 -> 66
        ("100.00", "0", "45.00", 30, 66),
        # above a trip threshold of ¥10: (100 - 10) / 1.50 = 60 exactly
        ("100.00", "10.00", "45.00", 30, 60),
        # an account open 10 days: ¥20.00 / 10 = ¥2.00 a day; 15 / 2 = 7.5 -> 7
        ("15.00", "0", "20.00", 10, 7),
        # less than a day's use left: 1.00 / 1.50 = 0.67 -> 0
        ("1.00", "0", "45.00", 30, 0),
        # nothing charged: no estimate
        ("100.00", "0", "0", 30, None),
        # already at or below the trip threshold: no estimate
        ("0.00", "0", "45.00", 30, None),
        ("-5.00", "0", "45.00", 30, None),
        ("8.00", "10.00", "45.00", 30, None),
        # opened today: no window yet
        ("100.00", "0", "45.00", 0, None),
    ],
)
def test_days_left_rule(available, trip, charged, window, expected):
    assert (
        selectors.days_left(
            available_balance=D(available),
            trip_threshold=D(trip),
            energy_charged=D(charged),
            window_days=window,
        )
        == expected
    )


# ----------------------------------------------------------------------------- home cards


@pytest.mark.django_db
def test_account_card_figures(make_prepaid, flat_tariff, post_entry):  # noqa: F811
    account, meter = make_prepaid(flat_tariff)
    today = timezone.localdate()
    post_entry(account, "payment", "200.00", business_date=today - timedelta(days=40))
    post_entry(account, "energy", "-50.00", business_date=today - timedelta(days=31))  # before the window
    post_entry(
        account, "energy", "-6.00", business_date=today - timedelta(days=30)
    )  # first day of the window
    for n in range(1, 11):
        post_entry(account, "energy", "-3.00", business_date=today - timedelta(days=n))
    post_entry(account, "energy", "-4.00", business_date=today)  # today: after the window
    AccountBilling.objects.filter(pk=account.pk).update(credit_allowance=D("20.00"), state="warning2")
    ingest(meter, today - timedelta(days=2), "100.00")
    ingest(meter, today - timedelta(days=1), "105.50")

    [card] = selectors.account_cards(accounts=[account], today=today)

    # balance 200 - 50 - 6 - 10 x 3 - 4 = 110.00; available 110 + 20 credit = 130.00
    assert card.balance == D("110.00") and card.balance_display == "¥110.00"
    assert card.available_balance == D("130.00") and card.available_display == "¥130.00"
    # charged in the window: 6 + 30 = 36.00 over 30 days = 1.20 a day; 130 / 1.2 = 108.3 -> 108
    assert card.days_left == 108
    assert card.state == "warning" and card.prepaid
    assert card.last_reading_kwh == D("105.50")
    assert card.last_reading_date == today - timedelta(days=1)
    assert timezone.localtime(card.last_reading_at).time() == time(0, 15)
    assert card.address == account.service_points.get().address


@pytest.mark.django_db
def test_postpaid_card_has_no_cost_control(make_customer, post_entry):  # noqa: F811
    customer = make_customer(settlement_mode="postpaid")
    account = customer.accounts.get()
    post_entry(account, "adjustment", "-12.30", business_date=date(2025, 1, 5))
    [card] = selectors.account_cards(accounts=[account], today=TODAY)
    assert not card.prepaid and card.state == "" and card.days_left is None
    assert card.balance == D("-12.30") and card.available_balance == D("-12.30")
    assert card.last_reading_kwh is None


@pytest.mark.django_db
def test_tripped_card_and_new_account_window(make_prepaid, flat_tariff, post_entry):  # noqa: F811
    account, _meter = make_prepaid(flat_tariff)
    today = timezone.localdate()
    account.opened_on = today - timedelta(days=10)
    account.save(update_fields=["opened_on"])
    post_entry(account, "payment", "30.00", business_date=today - timedelta(days=10))
    post_entry(account, "energy", "-20.00", business_date=today - timedelta(days=5))
    AccountBilling.objects.filter(pk=account.pk).update(state="tripped")
    [card] = selectors.account_cards(accounts=[account], today=today)
    # open 10 days: 20.00 / 10 = 2.00 a day; available 10.00 / 2 = 5 days
    assert card.state == "tripped" and card.days_left == 5


@pytest.mark.django_db
def test_account_cards_take_a_constant_number_of_queries(
    make_prepaid,
    flat_tariff,
    post_entry,  # noqa: F811
    django_assert_max_num_queries,
):
    accounts = []
    for _ in range(4):
        account, meter = make_prepaid(flat_tariff)
        post_entry(account, "payment", "50.00")
        ingest(meter, timezone.localdate() - timedelta(days=1), "10.00")
        accounts.append(account)
    from customers.models import Account

    for n in (1, 4):
        # as the home page passes them: with their customers (portal.access.bound_accounts)
        loaded = list(Account.objects.filter(pk__in=[a.pk for a in accounts[:n]]).select_related("customer"))
        with django_assert_max_num_queries(6):
            cards = selectors.account_cards(accounts=loaded)
        assert {c.account.pk for c in cards} == {a.pk for a in accounts[:n]}
        assert all(c.last_reading_kwh == D("10.00") for c in cards)


# ----------------------------------------------------------------------------- daily usage


@pytest.mark.django_db
def test_daily_usage_splits_by_band_and_spans_gaps(make_prepaid, flat_tariff):
    account, meter = make_prepaid(flat_tariff)
    installed_since(meter, date(2025, 2, 1))
    tou(meter, date(2025, 3, 10), "100.00", "50.00")
    tou(meter, date(2025, 3, 11), "106.25", "53.00")  # 10 Mar: peak 6.25, valley 3.00 = 9.25
    tou(meter, date(2025, 3, 12), "110.00", "58.50")  # 11 Mar: peak 3.75, valley 5.50 = 9.25
    tou(meter, date(2025, 3, 14), "120.00", "60.00")  # 12-13 Mar (no freeze on 13th): 10.00 + 1.50 = 11.50

    days = selectors.daily_usage(account=account, today=TODAY)

    assert [(d.day, d.days, d.total) for d in days] == [
        (date(2025, 3, 10), 1, D("9.25")),
        (date(2025, 3, 11), 1, D("9.25")),
        (date(2025, 3, 12), 2, D("11.50")),
    ]
    assert days[0].bands == {"sharp": D("0.00"), "peak": D("6.25"), "flat": D("0.00"), "valley": D("3.00")}
    assert days[2].bands["peak"] == D("10.00") and days[2].bands["valley"] == D("1.50")
    assert days[1].band_list == [D("0.00"), D("3.75"), D("0.00"), D("5.50")]


@pytest.mark.django_db
def test_daily_usage_meter_with_only_peak_and_valley_registers(make_prepaid, flat_tariff):
    account, meter = make_prepaid(flat_tariff)
    installed_since(meter, date(2025, 3, 1))
    ingest(meter, date(2025, 3, 12), "30.00", forward_peak="20.00", forward_valley="10.00")
    ingest(meter, date(2025, 3, 13), "34.50", forward_peak="23.00", forward_valley="11.50")
    [day] = selectors.daily_usage(account=account, today=TODAY)
    # 4.50 = peak 3.00 + valley 1.50; no sharp or flat register: 0 in those bands
    assert day.total == D("4.50")
    assert day.bands == {"sharp": D("0.00"), "peak": D("3.00"), "flat": D("0.00"), "valley": D("1.50")}


@pytest.mark.django_db
def test_daily_usage_total_only_meter_with_multiplier_and_window(make_prepaid, flat_tariff):
    account, meter = make_prepaid(flat_tariff)
    installed_since(meter, date(2025, 1, 1))
    account.service_points.update(ct_ratio=5)
    ingest(meter, date(2025, 1, 10), "10.00")  # outside a 60-day window ending 14 Mar
    ingest(meter, date(2025, 3, 13), "20.00")
    ingest(meter, date(2025, 3, 14), "21.20")  # 13 Mar: 1.20 x CT 5 = 6.00

    days = selectors.daily_usage(account=account, today=TODAY)

    assert [(d.day, d.total, d.bands) for d in days] == [(date(2025, 3, 13), D("6.00"), {})]
    assert days[0].band_list == [None, None, None, None]


@pytest.mark.django_db
def test_daily_usage_through_a_register_rollover(make_prepaid, flat_tariff):
    account, meter = make_prepaid(flat_tariff)
    installed_since(meter, date(2025, 3, 1), initial="999990.00")
    ingest(meter, date(2025, 3, 12), "999995.00")
    ingest(meter, date(2025, 3, 13), "7.50")  # 1,000,000 - 999,995 + 7.50 = 12.50
    [day] = selectors.daily_usage(account=account, today=TODAY)
    assert day.day == date(2025, 3, 12) and day.total == D("12.50")


# ----------------------------------------------------------------------------- monthly usage


@pytest.mark.django_db
def test_monthly_usage_with_same_month_last_year(make_prepaid, flat_tariff):
    account, meter = make_prepaid(flat_tariff)
    installed_since(meter, date(2023, 12, 1))
    tou(meter, date(2024, 2, 1), "600.00", "400.00")  # 1000
    tou(meter, date(2024, 2, 15), "700.00", "450.00")  # inside February: not a boundary
    tou(meter, date(2024, 3, 1), "780.00", "520.00")  # Feb 2024: 1300 - 1000 = 300 (peak 180, valley 120)
    tou(
        meter, date(2024, 4, 2), "900.00", "650.00"
    )  # Mar 2024 (to the first April freeze): 1550 - 1300 = 250
    tou(meter, date(2025, 2, 3), "3000.00", "2000.00")  # April 2024 to Feb 2025 are a gap of whole months
    tou(meter, date(2025, 3, 1), "3250.00", "2150.00")  # Feb 2025: 5400 - 5000 = 400 (peak 250, valley 150)
    tou(meter, date(2025, 3, 10), "3330.00", "2190.00")  # Mar 2025 so far: 5520 - 5400 = 120

    months = selectors.monthly_usage(account=account, months=14, today=TODAY)

    by_month = {m.month: m for m in months}
    assert [m.month for m in months][0] == date(2024, 2, 1) and months[-1].month == date(2025, 3, 1)
    assert len(months) == 14
    assert by_month[date(2024, 2, 1)].total == D("300.00")
    assert by_month[date(2024, 2, 1)].bands == {
        "sharp": D("0.00"),
        "peak": D("180.00"),
        "flat": D("0.00"),
        "valley": D("120.00"),
    }
    assert by_month[date(2024, 3, 1)].total == D("250.00")
    # a span of more than a month is shown in no month rather than piled into one
    assert by_month[date(2024, 4, 1)].total is None and by_month[date(2025, 1, 1)].total is None
    feb, mar = by_month[date(2025, 2, 1)], by_month[date(2025, 3, 1)]
    assert (feb.total, feb.last_year) == (D("400.00"), D("300.00"))
    assert feb.bands["peak"] == D("250.00") and feb.bands["valley"] == D("150.00")
    assert feb.change_percent == D("33.3")  # (400 - 300) / 300 = +33.3 %
    assert (mar.total, mar.last_year) == (D("120.00"), D("250.00"))
    assert mar.change_percent == D("-52.0")  # (120 - 250) / 250 = -52.0 %
    assert by_month[date(2024, 2, 1)].last_year is None  # Feb 2023 is out of range


@pytest.mark.django_db
def test_monthly_usage_across_a_meter_exchange(make_prepaid, flat_tariff):
    """Each meter's own freezes are differenced; the months add both meters up."""
    from metering.models import Meter, MeterStatus

    account, old = make_prepaid(flat_tariff)
    installed_since(old, date(2025, 1, 1), initial="500.00")
    ingest(old, date(2025, 1, 1), "500.00")
    ingest(old, date(2025, 1, 20), "800.00")  # Jan (old meter): 300
    removed = datetime(2025, 1, 20, 12, 0, tzinfo=SHANGHAI)
    MeterInstallation.objects.filter(meter=old).update(removed_at=removed)
    Meter.objects.filter(pk=old.pk).update(status=MeterStatus.REMOVED, service_point=None)
    point = account.service_points.get()
    new = Meter.objects.create(
        asset_number="AS-NEW-1",
        comm_address="930000000001",
        manufacturer="威胜",
        model="DDZY102",
        status=MeterStatus.INSTALLED,
        transformer_area=point.transformer_area,
        service_point=point,
    )
    MeterInstallation.objects.create(
        meter=new,
        service_point=point,
        transformer_area=point.transformer_area,
        installed_at=removed,
        initial_registers={"forward_total": "0"},
    )
    ingest(new, date(2025, 1, 21), "2.00")
    ingest(new, date(2025, 2, 1), "42.00")  # Jan (new meter): 40
    ingest(new, date(2025, 3, 1), "100.00")  # Feb: 58

    months = {m.month: m.total for m in selectors.monthly_usage(account=account, months=3, today=TODAY)}
    # Jan: 300 + 40 = 340; Feb 58; Mar: no freeze after 1 March yet, so no figure
    assert months == {date(2025, 1, 1): D("340.00"), date(2025, 2, 1): D("58.00"), date(2025, 3, 1): None}


# ----------------------------------------------------------------------------- tier position


@pytest.mark.django_db
def test_tier_position_prorated_for_an_account_opened_mid_year(make_prepaid, tier_tariff):
    account, _meter = make_prepaid(tier_tariff)
    account.opened_on = date(2025, 7, 1)
    account.save(update_fields=["opened_on"])
    TierAccumulator.objects.create(account=account, period_start=date(2025, 1, 1), kwh=D("1200.50"))

    tier = selectors.tier_position(account=account, today=date(2025, 9, 10))

    # open 1 Jul - 31 Dec = 184 of 365 days: 2160 x 184 / 365 = 1088.9 -> 1089,
    # 4200 x 184 / 365 = 2117.3 -> 2117 (whole kWh, half-up, as the engine rounds)
    assert tier.limits == (D("1089"), D("2117"), None)
    assert tier.prorated and tier.from_billing and tier.basis == "annual"
    assert tier.period_start == date(2025, 1, 1)
    # 1200.50 used: past 1089, so tier 2 with 2117 - 1200.50 = 916.50 kWh left
    assert (tier.used, tier.tier, tier.left) == (D("1200.50"), 2, D("916.50"))
    assert tier.rows == [
        (1, D("0"), D("1089"), False),
        (2, D("1089"), D("2117"), True),
        (3, D("2117"), None, False),
    ]


@pytest.mark.django_db
def test_tier_position_from_readings_without_an_accumulator(make_prepaid, tier_tariff):
    account, meter = make_prepaid(tier_tariff)
    account.opened_on = date(2025, 7, 1)
    account.save(update_fields=["opened_on"])
    installed_since(meter, date(2025, 7, 1))
    ingest(meter, date(2025, 7, 1), "100.00")
    ingest(meter, date(2025, 8, 1), "400.00")  # July: 300
    ingest(meter, date(2025, 9, 9), "650.00")  # August to 9 Sep: 250 (no freeze on 1 Sep: one span)

    tier = selectors.tier_position(account=account, today=date(2025, 9, 10))

    # 300 + 250 = 550 used of the prorated 1089 of tier 1: 539 left
    assert not tier.from_billing
    assert (tier.used, tier.tier, tier.left) == (D("550.00"), 1, D("539.00"))


@pytest.mark.django_db
def test_tier_position_full_year_and_last_tier(make_prepaid, tier_tariff):
    account, _meter = make_prepaid(tier_tariff)  # open since 2020: whole-year blocks
    TierAccumulator.objects.create(account=account, period_start=date(2025, 1, 1), kwh=D("4200.00"))
    tier = selectors.tier_position(account=account, today=date(2025, 12, 1))
    # exactly at the tier-2 bound: the next kWh is tier 3, which has no bound
    assert tier.limits == (D("2160"), D("4200"), None) and not tier.prorated
    assert (tier.tier, tier.left) == (3, None)


@pytest.mark.django_db
def test_no_tier_position_on_a_flat_tariff(make_prepaid, flat_tariff):
    account, _meter = make_prepaid(flat_tariff)
    assert selectors.tier_position(account=account, today=TODAY) is None


# ----------------------------------------------------------------------------- statement


@pytest.mark.django_db
def test_statement_kinds_dates_and_running_balance(make_prepaid, flat_tariff, post_entry):  # noqa: F811
    account, _meter = make_prepaid(flat_tariff)
    post_entry(account, "payment", "100.00", business_date=date(2025, 3, 1))  # balance 100.00
    post_entry(account, "energy", "-10.00", business_date=date(2025, 3, 2))  # 90.00
    post_entry(account, "adjustment", "5.00", business_date=date(2025, 3, 3))  # 95.00
    post_entry(account, "energy", "-20.00", business_date=date(2025, 3, 4))  # 75.00
    post_entry(account, "late_fee", "-1.50", business_date=date(2025, 3, 5))  # 73.50

    def rows(**filters):
        ledger = selectors.statement_entries(account=account, **filters)
        return [(e.kind, e.amount, e.running_balance) for e in ledger[: ledger.count()]]

    assert rows() == [
        ("late_fee", D("-1.50"), D("73.50")),
        ("energy", D("-20.00"), D("75.00")),
        ("adjustment", D("5.00"), D("95.00")),
        ("energy", D("-10.00"), D("90.00")),
        ("payment", D("100.00"), D("100.00")),
    ]
    # the running balance stays the balance after each entry when the list is filtered
    assert rows(kind="charges") == [
        ("late_fee", D("-1.50"), D("73.50")),
        ("energy", D("-20.00"), D("75.00")),
        ("energy", D("-10.00"), D("90.00")),
    ]
    assert rows(kind="payments") == [("payment", D("100.00"), D("100.00"))]
    assert rows(kind="adjustments") == [("adjustment", D("5.00"), D("95.00"))]
    assert rows(kind="charges", date_from=date(2025, 3, 2), date_to=date(2025, 3, 3)) == [
        ("energy", D("-10.00"), D("90.00"))
    ]
    assert selectors.statement_entries(account=account, kind="charges").count() == 3
