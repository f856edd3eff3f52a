"""The portal's home, usage and statement pages: what a signed-in customer sees, the CSV and
PDF downloads, the statement filter's errors, and that nobody else sees any of it."""

import csv
import io
import json
from datetime import timedelta
from decimal import Decimal

import pytest
from django.urls import reverse
from django.utils import timezone
from pypdf import PdfReader

from billing.models import AccountBilling
from metering.models import MeterInstallation
from tests.billing.conftest import post_entry  # noqa: F401
from tests.billing.services.conftest import ingest

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("english")]
D = Decimal


@pytest.fixture
def prepaid(make_prepaid, flat_tariff):
    account, meter = make_prepaid(flat_tariff, name="王五")
    return account, meter


@pytest.fixture
def signed_in(client, make_portal_user, prepaid):
    account, _meter = prepaid
    user = make_portal_user(account)
    client.force_login(user)
    return client


def with_readings(meter, days: int = 3, start_kwh: str = "100.00", step: str = "2.50"):
    """Freezes on the last ``days`` days up to today, ``step`` kWh a day apart."""
    today = timezone.localdate()
    total = D(start_kwh)
    for n in range(days, 0, -1):
        ingest(meter, today - timedelta(days=n - 1), total)
        total += D(step)


# ----------------------------------------------------------------------------- who may see


@pytest.mark.parametrize(
    "name", ["portal:home", "portal:usage", "portal:usage-csv", "portal:statement", "portal:statement-pdf"]
)
def test_signed_out_goes_to_the_portal_sign_in(client, prepaid, name):
    account, _meter = prepaid
    url = reverse(name) if name == "portal:home" else reverse(name, args=[account.number])
    response = client.get(url)
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("portal:login") + "?next=")


def test_staff_users_are_refused(client, staff, prepaid):
    account, _meter = prepaid
    client.force_login(staff["admin"])
    for url in (reverse("portal:home"), reverse("portal:usage", args=[account.number])):
        response = client.get(url)
        assert response.status_code == 302 and response["Location"].startswith(reverse("portal:login"))


@pytest.mark.parametrize(
    "name", ["portal:usage", "portal:usage-csv", "portal:statement", "portal:statement-pdf"]
)
def test_other_customers_and_unknown_accounts_are_404(
    signed_in, make_prepaid, flat_tariff, make_portal_user, name
):
    other, _meter = make_prepaid(flat_tariff, name="赵六")
    make_portal_user(other)  # bound to someone else
    for number in (other.number, "NO-SUCH-ACCOUNT"):
        assert signed_in.get(reverse(name, args=[number])).status_code == 404


# ----------------------------------------------------------------------------- home


def test_home_shows_each_bound_account(client, make_portal_user, make_prepaid, flat_tariff, post_entry):  # noqa: F811
    first, meter = make_prepaid(flat_tariff, name="王五")
    second, _meter2 = make_prepaid(flat_tariff, name="王五")
    today = timezone.localdate()
    post_entry(first, "payment", "1234.50", business_date=today - timedelta(days=20))
    for n in range(1, 11):
        post_entry(first, "energy", "-1.50", business_date=today - timedelta(days=n))
    AccountBilling.objects.update_or_create(account=second, defaults={"state": "tripped"})
    ingest(meter, today - timedelta(days=1), "321.00")
    client.force_login(make_portal_user(first, second))

    response = client.get(reverse("portal:home"))

    assert response.status_code == 200
    html = response.content.decode()
    assert html.count('data-testid="account-card"') == 2
    assert first.number in html and second.number in html and "王五" in html
    # 1234.50 - 10 x 1.50 = 1219.50; 15.00 charged in 30 days = 0.50 a day; 1219.50 / 0.5 = 2439 days
    assert "¥1,219.50" in html
    assert "about 2439 days" in html
    assert "321.00 kWh" in html
    assert 'data-state="tripped"' in html and "Supply cut off" in html
    assert reverse("portal:usage", args=[first.number]) in html
    assert reverse("portal:statement", args=[second.number]) in html


def test_home_without_accounts(client, make_portal_user):
    client.force_login(make_portal_user())
    response = client.get(reverse("portal:home"))
    assert response.status_code == 200 and 'data-testid="no-accounts"' in response.content.decode()


def test_home_queries_do_not_grow_with_accounts(
    client, make_portal_user, make_prepaid, flat_tariff, django_assert_max_num_queries
):
    accounts = [make_prepaid(flat_tariff)[0] for _ in range(5)]
    one, five = make_portal_user(accounts[0]), make_portal_user(*accounts)
    counts = []
    for user in (one, five):
        client.force_login(user)
        with django_assert_max_num_queries(14) as captured:
            assert client.get(reverse("portal:home")).status_code == 200
        counts.append(len(captured))
    assert counts[0] == counts[1]


# ----------------------------------------------------------------------------- usage


def test_usage_page_draws_from_the_readings(signed_in, prepaid, django_assert_max_num_queries):
    account, meter = prepaid
    with_readings(meter, days=3)  # 100.00, 102.50, 105.00: two days of 2.50 kWh
    with django_assert_max_num_queries(20):
        response = signed_in.get(reverse("portal:usage", args=[account.number]))
    assert response.status_code == 200
    html = response.content.decode()
    assert 'id="usage-daily-chart"' in html and 'id="usage-monthly-chart"' in html
    assert "vendor/echarts/echarts.min.js" in html and "js/portal_usage.js" in html
    assert "cdn" not in html.lower()
    data = json.loads(html.split('<script id="usage-data" type="application/json">')[1].split("</script>")[0])
    assert [d["total"] for d in data["daily"]] == ["2.50", "2.50"]
    assert data["bands"] == []  # a meter without band registers: totals only
    assert len(data["monthly"]) == 12
    assert html.count('data-testid="day-total"') == 2
    assert 'data-testid="tier-none"' in html  # the flat tariff has no tiers


def test_usage_page_shows_the_tier_position(client, make_portal_user, make_prepaid, tier_tariff):
    from billing.models import TierAccumulator

    account, _meter = make_prepaid(tier_tariff)
    year_start = timezone.localdate().replace(month=1, day=1)
    TierAccumulator.objects.create(account=account, period_start=year_start, kwh=D("2000.00"))
    client.force_login(make_portal_user(account))
    html = client.get(reverse("portal:usage", args=[account.number])).content.decode()
    # open since 2020, whole-year blocks: 2160 - 2000 = 160 kWh left in tier 1
    assert 'data-tier="1"' in html and 'data-value="160.00"' in html
    assert "160.00 kWh left in this tier." in html


def test_usage_csv(signed_in, prepaid):
    account, meter = prepaid
    MeterInstallation.objects.filter(meter=meter).update(installed_at=timezone.now() - timedelta(days=10))
    today = timezone.localdate()
    ingest(
        meter,
        today - timedelta(days=2),
        "10.00",
        forward_sharp="0",
        forward_peak="6",
        forward_flat="0",
        forward_valley="4",
    )
    ingest(
        meter,
        today - timedelta(days=1),
        "13.75",
        forward_sharp="0",
        forward_peak="8.25",
        forward_flat="0",
        forward_valley="5.50",
    )
    response = signed_in.get(reverse("portal:usage-csv", args=[account.number]))
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/csv")
    assert "attachment" in response["Content-Disposition"]
    body = response.content
    assert body.startswith("\ufeff".encode())  # the BOM Excel needs for UTF-8
    rows = list(csv.reader(io.StringIO(body.decode("utf-8-sig"))))
    assert rows[0] == [
        "Date",
        "Days",
        "Total (kWh)",
        "sharp (kWh)",
        "peak (kWh)",
        "flat (kWh)",
        "valley (kWh)",
    ]
    # 13.75 - 10.00 = 3.75 kWh: peak 8.25 - 6 = 2.25, valley 5.50 - 4 = 1.50
    assert rows[1:] == [
        [(today - timedelta(days=2)).isoformat(), "1", "3.75", "0.00", "2.25", "0.00", "1.50"]
    ]


# ----------------------------------------------------------------------------- statement


def test_statement_lists_entries_newest_first_with_the_balance(signed_in, prepaid, post_entry):  # noqa: F811
    account, _meter = prepaid
    today = timezone.localdate()
    post_entry(
        account, "payment", "100.00", business_date=today - timedelta(days=3), description="Counter payment"
    )
    post_entry(account, "energy", "-12.34", business_date=today - timedelta(days=2), description="Energy A")
    post_entry(account, "adjustment", "2.00", business_date=today - timedelta(days=1), description="Goodwill")
    response = signed_in.get(reverse("portal:statement", args=[account.number]))
    assert response.status_code == 200
    html = response.content.decode()
    assert html.index("Goodwill") < html.index("Energy A") < html.index("Counter payment")
    # 100.00, 100 - 12.34 = 87.66, 87.66 + 2 = 89.66
    balances = [part.split('"')[0] for part in html.split('data-testid="running-balance" data-value="')[1:]]
    assert balances == ["89.66", "87.66", "100.00"]


def test_statement_filters(signed_in, prepaid, post_entry):  # noqa: F811
    account, _meter = prepaid
    today = timezone.localdate()
    post_entry(
        account, "payment", "100.00", business_date=today - timedelta(days=3), description="Counter payment"
    )
    post_entry(account, "energy", "-12.34", business_date=today - timedelta(days=2), description="Energy A")
    post_entry(account, "energy", "-1.00", business_date=today - timedelta(days=1), description="Energy B")
    url = reverse("portal:statement", args=[account.number])
    html = signed_in.get(url, {"kind": "charges"}).content.decode()
    assert "Energy A" in html and "Energy B" in html and "Counter payment" not in html
    html = signed_in.get(url, {"kind": "payments"}).content.decode()
    assert "Counter payment" in html and "Energy A" not in html
    day = (today - timedelta(days=2)).isoformat()
    html = signed_in.get(url, {"kind": "all", "date_from": day, "date_to": day}).content.decode()
    assert "Energy A" in html and "Energy B" not in html and "Counter payment" not in html


@pytest.mark.parametrize(
    ("params", "message"),
    [
        (
            {"date_from": "2025-03-10", "date_to": "2025-03-01"},
            "The start date must not be after the end date.",
        ),
        ({"date_from": "2025-13-45"}, "Enter the start date as YYYY-MM-DD."),
        ({"date_to": "tomorrow"}, "Enter the end date as YYYY-MM-DD."),
        ({"kind": "everything"}, "Choose what to show from the list."),
        ({"date_from": "2020-01-01", "date_to": "2025-01-01"}, "Choose at most 3 years at a time."),
    ],
)
def test_statement_filter_errors(signed_in, prepaid, params, message):
    account, _meter = prepaid
    for name in ("portal:statement", "portal:statement-pdf"):
        response = signed_in.get(reverse(name, args=[account.number]), params)
        assert response.status_code == 400
        assert message in response.content.decode()


def test_statement_pages_of_fifty(signed_in, prepaid, post_entry):  # noqa: F811
    account, _meter = prepaid
    for n in range(51):
        post_entry(account, "payment", "1.00", description=f"Payment {n}")
    url = reverse("portal:statement", args=[account.number])
    first = signed_in.get(url).content.decode()
    assert first.count('data-testid="entry"') == 50 and "Page 1 of 2" in first
    second = signed_in.get(url, {"page": 2}).content.decode()
    assert second.count('data-testid="entry"') == 1 and "Payment 0<" in second


def test_statement_pdf(signed_in, prepaid, post_entry):  # noqa: F811
    account, _meter = prepaid
    today = timezone.localdate()
    post_entry(account, "payment", "100.00", business_date=today - timedelta(days=2), description="柜台缴费")
    post_entry(
        account, "energy", "-12.34", business_date=today - timedelta(days=1), description="Energy 5.00 kWh"
    )
    response = signed_in.get(reverse("portal:statement-pdf", args=[account.number]), {"kind": "all"})
    assert response.status_code == 200 and response["Content-Type"] == "application/pdf"
    assert response.content.startswith(b"%PDF")
    text = PdfReader(io.BytesIO(response.content)).pages[0].extract_text()
    assert account.number in text and "王五" in text and "柜台缴费" in text
    # amounts and the balance after each: 100.00, then 100 - 12.34 = 87.66
    assert "¥100.00" in text and "¥-12.34" in text and "¥87.66" in text
    charges = signed_in.get(reverse("portal:statement-pdf", args=[account.number]), {"kind": "charges"})
    text = PdfReader(io.BytesIO(charges.content)).pages[0].extract_text()
    assert "¥-12.34" in text and "柜台缴费" not in text
