"""Billing staff pages through the Django test client: the account page (summary, ledger
with running balance, decisions, adjustments), the approval queue, tariffs and quotes."""

import re
from datetime import timedelta
from decimal import Decimal

import pytest
from django.contrib.auth import get_user_model
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from billing.models import AdjustmentRequest, AdjustmentStatus, LedgerEntry, PolicyDecision

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("fast_password_hashing", "english")]


@pytest.fixture
def login(client, staff):
    def as_(name):
        client.force_login(staff[name])
        return client

    return as_


def _url(account):
    return f"/billing/accounts/{account.number}/"


def _messages(response):
    return [str(m) for m in response.context["messages"]]


def _running(response):
    return [(e.amount, e.running_balance) for e in response.context["page"].object_list]


# --- account page: who sees it -------------------------------------------------------------


@pytest.mark.parametrize("role", ["counter", "counter_bs", "inspector", "auditor", "manager", "admin"])
def test_account_page_renders_for_roles_in_scope(login, prepaid_account, role):
    response = login(role).get(_url(prepaid_account))
    assert response.status_code == 200
    assert response.context["account"] == prepaid_account


@pytest.mark.parametrize("role", ["inspector_bs", "manager_bs"])
def test_account_page_out_of_scope_is_404(login, prepaid_account, role):
    # 白石 staff with a home-county scope do not see a 青溪 account
    assert login(role).get(_url(prepaid_account)).status_code == 404


def test_account_page_refuses_users_without_a_staff_role(client, prepaid_account):
    user = get_user_model().objects.create_user(username="nobody", password="pw-for-tests-1")
    client.force_login(user)
    assert client.get(_url(prepaid_account)).status_code == 403
    assert client.get("/billing/tariffs/").status_code == 403


def test_anonymous_is_sent_to_login(client, prepaid_account):
    response = client.get(_url(prepaid_account))
    assert response.status_code == 302 and "/login/" in response["Location"]


def test_unknown_account_is_404(login, db):
    assert login("admin").get("/billing/accounts/9999999999/").status_code == 404


# --- summary -------------------------------------------------------------------------------


def test_summary_shows_balance_available_balance_state_policy_and_tariff(login, prepaid_account, post_entry):
    post_entry(prepaid_account, "payment", "100.00")
    post_entry(prepaid_account, "energy", "-12.50")
    response = login("inspector").get(_url(prepaid_account))
    summary = response.context["summary"]
    # balance 100.00 - 12.50 = 87.50; the policy's credit allowance 30.00; available 117.50
    assert summary.state.balance == Decimal("87.50")
    assert summary.credit_allowance == Decimal("30.00")
    assert summary.available_balance == Decimal("117.50")
    assert summary.policy.code == "DEFAULT"
    assert summary.tariff_assignment.tariff.code == "RES-TOU"
    body = response.content.decode()
    assert "¥87.50" in body and "¥117.50" in body
    assert "trip below" in body and "¥0.00" in body and "close above" in body and "¥10.00" in body
    assert 'href="/billing/tariffs/RES-TOU/"' in body


def test_summary_prefers_the_accounts_own_credit_allowance(login, prepaid_account, post_entry):
    from billing.models import AccountBilling

    AccountBilling.objects.filter(pk=prepaid_account.pk).update(credit_allowance=Decimal("5.00"))
    post_entry(prepaid_account, "payment", "10.00")
    summary = login("counter").get(_url(prepaid_account)).context["summary"]
    assert summary.available_balance == Decimal("15.00")  # 10.00 + 5.00, not + 30.00


# --- ledger with running balance ---------------------------------------------------------


@pytest.fixture
def small_ledger(prepaid_account, post_entry):
    """Five entries; the balance after each, by hand:
    +100.00 → 100.00; -12.34 → 87.66; -7.66 → 80.00; -5.00 → 75.00; +50.00 → 125.00."""
    today = timezone.localdate()
    post_entry(prepaid_account, "payment", "100.00", business_date=today - timedelta(days=4))
    post_entry(
        prepaid_account, "energy", "-12.34", business_date=today - timedelta(days=3), kwh=Decimal("22.04")
    )
    post_entry(
        prepaid_account, "energy", "-7.66", business_date=today - timedelta(days=2), kwh=Decimal("13.68")
    )
    post_entry(prepaid_account, "adjustment", "-5.00", business_date=today - timedelta(days=1))
    post_entry(prepaid_account, "payment", "50.00", business_date=today)
    return prepaid_account


def test_ledger_newest_first_with_running_balance(login, small_ledger):
    response = login("counter").get(_url(small_ledger))
    assert _running(response) == [
        (Decimal("50.00"), Decimal("125.00")),
        (Decimal("-5.00"), Decimal("75.00")),
        (Decimal("-7.66"), Decimal("80.00")),
        (Decimal("-12.34"), Decimal("87.66")),
        (Decimal("100.00"), Decimal("100.00")),
    ]
    cells = re.findall(r'data-testid="running-balance">([^<]+)<', response.content.decode())
    assert cells == ["125.00", "75.00", "80.00", "87.66", "100.00"]


def test_ledger_filter_keeps_the_running_balance_of_the_whole_ledger(login, small_ledger):
    client = login("counter")
    response = client.get(_url(small_ledger), {"kind": "energy"})
    # only the two energy charges, each still with the balance after it in the full ledger
    assert _running(response) == [(Decimal("-7.66"), Decimal("80.00")), (Decimal("-12.34"), Decimal("87.66"))]

    today = timezone.localdate()
    response = client.get(
        _url(small_ledger),
        {
            "date_from": (today - timedelta(days=3)).isoformat(),
            "date_to": (today - timedelta(days=1)).isoformat(),
        },
    )
    assert _running(response) == [
        (Decimal("-5.00"), Decimal("75.00")),
        (Decimal("-7.66"), Decimal("80.00")),
        (Decimal("-12.34"), Decimal("87.66")),
    ]
    assert response.context["page"].paginator.count == 3


def test_ledger_paginates_by_50_and_balances_on_page_two(login, prepaid_account, post_entry):
    for _ in range(55):
        post_entry(prepaid_account, "payment", "1.00")
    client = login("auditor")
    first = client.get(_url(prepaid_account))
    assert first.context["page"].paginator.count == 55
    rows = _running(first)
    # 55 payments of 1.00: the newest row is after all 55, the 50th row after 6 of them
    assert len(rows) == 50 and rows[0][1] == Decimal("55.00") and rows[-1][1] == Decimal("6.00")
    second = client.get(_url(prepaid_account), {"page": 2})
    assert [balance for _amount, balance in _running(second)] == [
        Decimal(n) for n in ("5", "4", "3", "2", "1")
    ]


def test_ledger_page_queries_do_not_grow_with_entries(login, prepaid_account, post_entry):
    client = login("counter")
    post_entry(prepaid_account, "payment", "10.00")
    with CaptureQueriesContext(connection) as few:
        client.get(_url(prepaid_account))
    for _ in range(20):
        post_entry(prepaid_account, "energy", "-0.10")
    with CaptureQueriesContext(connection) as many:
        response = client.get(_url(prepaid_account))
    assert len(response.context["page"].object_list) == 21
    assert len(many.captured_queries) == len(few.captured_queries)
    window = [q["sql"] for q in many.captured_queries if "OVER (ORDER BY" in q["sql"]]
    assert len(window) == 1  # the running balance comes from one window query


def test_ledger_filter_rejects_reversed_dates_without_failing(login, small_ledger):
    response = login("counter").get(_url(small_ledger), {"date_from": "2030-01-02", "date_to": "2030-01-01"})
    assert response.status_code == 200
    assert "The start date must not be after the end date." in response.content.decode()
    assert response.context["page"].paginator.count == 5  # the invalid filter is ignored


# --- policy decisions ----------------------------------------------------------------------


def test_decision_history_shows_action_reason_and_figures(login, prepaid_account):
    PolicyDecision.objects.create(
        account=prepaid_account,
        action="trip_withheld",
        reason="night",
        message="Trip withheld: no trips between 20:00 and 08:00.",
        numbers={"available_balance": "-3.20", "trip_threshold": "0.00"},
        blocked_by=["night"],
        trigger="rating",
        state_before="warning2",
        state_after="warning2",
        decided_at=timezone.now(),
    )
    body = login("inspector").get(_url(prepaid_account)).content.decode()
    assert "Trip withheld" in body
    assert "no trips between 20:00 and 08:00" in body
    assert "available_balance = -3.20" in body and "trip_threshold = 0.00" in body


# --- adjustments: request, second-person approval, four eyes -------------------------------


def test_adjustment_request_then_approval_by_a_second_person_posts_the_entry(
    client, staff, prepaid_account, post_entry
):
    post_entry(prepaid_account, "payment", "100.00")
    client.force_login(staff["counter"])
    page = client.get(_url(prepaid_account)).content.decode()
    assert 'data-testid="adjustment-request"' in page  # counters may request
    response = client.post(
        f"{_url(prepaid_account)}adjustments/",
        {"amount": "20.00", "reason": "meter misread on 2026-10-31"},
        follow=True,
    )
    assert "Adjustment of ¥20.00 requested" in " ".join(_messages(response))
    adj = AdjustmentRequest.objects.get(account=prepaid_account)
    assert adj.status == AdjustmentStatus.PENDING and adj.requested_by == staff["counter"]
    assert f'data-testid="decide-{adj.pk}"' not in response.content.decode()  # counters cannot approve
    assert not LedgerEntry.objects.filter(kind="adjustment").exists()

    client.force_login(staff["manager"])
    assert f'data-testid="decide-{adj.pk}"' in client.get(_url(prepaid_account)).content.decode()
    response = client.post(
        f"/billing/adjustments/{adj.pk}/decision/",
        {"decision": "approve", "note": "checked the photo", "return_to": "account"},
        follow=True,
    )
    assert response.redirect_chain[-1][0] == _url(prepaid_account)
    assert "approved and posted" in " ".join(_messages(response))
    adj.refresh_from_db()
    assert adj.status == AdjustmentStatus.APPROVED and adj.decided_by == staff["manager"]
    assert adj.entry.amount == Decimal("20.00") and adj.entry.kind == "adjustment"
    # 100.00 + 20.00 = 120.00
    assert response.context["summary"].state.balance == Decimal("120.00")


def test_self_approval_is_hidden_and_refused(client, staff, prepaid_account):
    client.force_login(staff["manager"])
    client.post(
        f"{_url(prepaid_account)}adjustments/", {"amount": "-8.00", "reason": "late fee waived wrongly"}
    )
    adj = AdjustmentRequest.objects.get(account=prepaid_account)
    body = client.get(_url(prepaid_account)).content.decode()
    assert f'data-testid="decide-{adj.pk}"' not in body
    assert "another person must approve it" in body

    response = client.post(f"/billing/adjustments/{adj.pk}/decision/", {"decision": "approve"}, follow=True)
    assert "someone other than the person who requested it" in " ".join(_messages(response))
    adj.refresh_from_db()
    assert adj.status == AdjustmentStatus.PENDING and adj.entry is None
    assert not LedgerEntry.objects.filter(account=prepaid_account).exists()


def test_rejection_posts_nothing(client, staff, prepaid_account):
    client.force_login(staff["counter"])
    client.post(f"{_url(prepaid_account)}adjustments/", {"amount": "15.00", "reason": "goodwill credit"})
    adj = AdjustmentRequest.objects.get()
    client.force_login(staff["manager"])
    response = client.post(
        f"/billing/adjustments/{adj.pk}/decision/", {"decision": "reject", "note": "no evidence"}, follow=True
    )
    assert "Adjustment rejected." in _messages(response)
    adj.refresh_from_db()
    assert adj.status == AdjustmentStatus.REJECTED and adj.decision_note == "no evidence"
    assert not LedgerEntry.objects.exists()


def test_invalid_adjustment_requests_show_messages(client, staff, prepaid_account):
    client.force_login(staff["counter"])
    url = f"{_url(prepaid_account)}adjustments/"
    response = client.post(url, {"amount": "0", "reason": "nothing at all"}, follow=True)
    assert "The amount must not be zero." in _messages(response)
    response = client.post(url, {"amount": "5.00", "reason": "x"}, follow=True)
    assert any("Say why" in m for m in _messages(response))
    response = client.post(url, {"amount": "5.001", "reason": "three places"}, follow=True)
    assert response.status_code == 200 and _messages(response)
    assert not AdjustmentRequest.objects.exists()


def test_roles_without_the_capability_cannot_request_or_decide(client, staff, prepaid_account):
    client.force_login(staff["inspector"])
    assert 'data-testid="adjustment-request"' not in client.get(_url(prepaid_account)).content.decode()
    response = client.post(f"{_url(prepaid_account)}adjustments/", {"amount": "5.00", "reason": "try anyway"})
    assert response.status_code == 403
    client.force_login(staff["counter"])
    client.post(f"{_url(prepaid_account)}adjustments/", {"amount": "5.00", "reason": "a real request"})
    adj = AdjustmentRequest.objects.get()
    client.force_login(staff["auditor"])
    assert client.post(f"/billing/adjustments/{adj.pk}/decision/", {"decision": "approve"}).status_code == 403
    # a manager of the other county may approve only in their scope
    client.force_login(staff["manager_bs"])
    assert client.post(f"/billing/adjustments/{adj.pk}/decision/", {"decision": "approve"}).status_code == 404
    adj.refresh_from_db()
    assert adj.status == AdjustmentStatus.PENDING


def test_out_of_scope_request_is_404(client, staff, prepaid_account):
    client.force_login(staff["manager_bs"])
    response = client.post(
        f"{_url(prepaid_account)}adjustments/", {"amount": "5.00", "reason": "not my county"}
    )
    assert response.status_code == 404
    assert not AdjustmentRequest.objects.exists()


# --- CSRF ----------------------------------------------------------------------------------


def test_forms_need_the_csrf_token(staff, prepaid_account):
    client = Client(enforce_csrf_checks=True)
    client.force_login(staff["counter"])
    url = f"{_url(prepaid_account)}adjustments/"
    assert client.post(url, {"amount": "5.00", "reason": "no token"}).status_code == 403
    assert not AdjustmentRequest.objects.exists()

    client.get(_url(prepaid_account))  # the page sets the CSRF cookie its forms carry
    token = client.cookies["csrftoken"].value
    response = client.post(url, {"amount": "5.00", "reason": "with token", "csrfmiddlewaretoken": token})
    assert response.status_code == 302
    adj = AdjustmentRequest.objects.get()

    approver = Client(enforce_csrf_checks=True)
    approver.force_login(staff["manager"])
    decision_url = f"/billing/adjustments/{adj.pk}/decision/"
    assert approver.post(decision_url, {"decision": "approve"}).status_code == 403
    adj.refresh_from_db()
    assert adj.status == AdjustmentStatus.PENDING


# --- approval queue ------------------------------------------------------------------------


def test_queue_lists_pending_adjustments_in_scope(client, staff, prepaid_account, make_customer):
    other = make_customer("bs_s1", name="白石用户").accounts.get()
    client.force_login(staff["counter"])
    client.post(f"{_url(prepaid_account)}adjustments/", {"amount": "3.00", "reason": "qingxi request"})
    client.post(f"{_url(other)}adjustments/", {"amount": "4.00", "reason": "baishi request"})
    assert client.get("/billing/adjustments/").status_code == 403  # counters request, not approve

    client.force_login(staff["manager"])
    response = client.get("/billing/adjustments/")
    assert [a.account.number for a in response.context["page"].object_list] == [prepaid_account.number]
    client.force_login(staff["manager_bs"])
    response = client.get("/billing/adjustments/")
    assert [a.account.number for a in response.context["page"].object_list] == [other.number]
    client.force_login(staff["admin"])
    assert response.status_code == 200
    assert client.get("/billing/adjustments/").context["page"].paginator.count == 2

    adj = AdjustmentRequest.objects.get(account=other)
    response = client.post(
        f"/billing/adjustments/{adj.pk}/decision/", {"decision": "approve", "return_to": "queue"}, follow=True
    )
    assert response.redirect_chain[-1][0] == "/billing/adjustments/"
    assert response.context["page"].paginator.count == 1


# --- tariffs -------------------------------------------------------------------------------


def test_tariff_list_and_detail(login, tariff):
    client = login("inspector")
    response = client.get("/billing/tariffs/")
    assert [t.code for t in response.context["tariffs"]] == ["RES-TOU"]
    assert response.context["tariffs"][0].version_count == 1

    response = client.get("/billing/tariffs/RES-TOU/")
    assert response.status_code == 200
    body = response.content.decode()
    assert "0.600000" in body and "0.300000" in body and "0.560000" in body
    assert "大中型水库移民后期扶持资金" in body and "0.006200" in body
    assert "+0.050000" in body and "+0.300000" in body and "∞" in body
    (version,) = response.context["versions"]
    (season,) = version["seasons"]
    assert season.months == tuple(range(1, 13))
    # peak 08:00-22:00 = half hours 16..43 (28 slots); valley the other 20, across midnight
    assert season.slots == ("valley",) * 16 + ("peak",) * 28 + ("valley",) * 4
    assert body.count('class="band-peak"') == 28 and body.count('class="band-valley"') == 20


def test_unknown_tariff_is_404(login, tariff):
    assert login("counter").get("/billing/tariffs/NOPE/").status_code == 404


def test_quote_form_shows_itemised_lines_and_total(login, tariff):
    response = login("counter").get(
        "/billing/tariffs/RES-TOU/",
        {"period_start": "2026-03-01", "period_end": "2026-03-31", "kwh_peak": "100", "kwh_valley": "50"},
    )
    data = response.context["quote_data"]
    # all 150 kWh in block 1 (0 used, 2160 a year): peak 100 × 0.60 = 60.00, valley 50 × 0.30 = 15.00;
    # the reservoir fund 150 × 0.0062 = 0.93 is included in those prices, not added: total 75.00
    energy = [(line["band"], line["amount"]) for line in data["lines"] if line["kind"] == "energy"]
    assert sorted(energy) == [("peak", "60.00"), ("valley", "15.00")]
    funds = [line["amount"] for line in data["lines"] if line["kind"] == "surcharge_included"]
    assert funds == ["0.93"]
    assert data["total"] == "75.00"
    body = response.content.decode()
    assert 'data-testid="quote-total">75.00<' in body and "(0.93)" in body


def test_quote_form_reports_input_errors(login, tariff):
    client = login("counter")
    response = client.get(
        "/billing/tariffs/RES-TOU/", {"period_start": "2026-03-31", "period_end": "2026-03-01"}
    )
    assert response.context["quote"] is None
    assert "The period must not end before it starts." in response.content.decode()


def test_today_is_used_for_the_tariff_in_force(login, prepaid_account, tariff):
    from billing.models import AccountTariff

    # an assignment that starts tomorrow is not yet in force
    other = type(tariff).objects.create(code="RES-FLAT", name="居民单一电价", category="residential")
    AccountTariff.objects.create(
        account=prepaid_account, tariff=other, effective_from=timezone.localdate() + timedelta(days=1)
    )
    summary = login("counter").get(_url(prepaid_account)).context["summary"]
    assert summary.tariff_assignment.tariff.code == "RES-TOU"
