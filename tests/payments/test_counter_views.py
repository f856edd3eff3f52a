"""Counter pages through the Django test client: the shift page, taking a payment (a double
submit posts once), the receipt page and PDF, settlement reports, history; roles, scope, CSRF."""

import io
import re
from datetime import timedelta
from decimal import Decimal

import pytest
from django.test import Client
from django.utils import timezone
from pypdf import PdfReader

from payments.models import CashierShift, Payment
from payments.services.counter import counter_payment, receipt_number_issue, shift_open

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("fast_password_hashing", "english")]


@pytest.fixture
def account(flat_tariff, make_prepaid):
    return make_prepaid(flat_tariff, name="王五")[0]


@pytest.fixture
def login(client, staff):
    def as_(name):
        client.force_login(staff[name])
        return client

    return as_


def _take(account):
    return f"/payments/take/{account.number}/"


def _token(response) -> str:
    return response.context["form"]["token"].value()


def _paid(actors, account, amount="20.00"):
    shift_open(actor=actors["counter"], opening_float="0")
    return counter_payment(
        actor=actors["counter"],
        account_number=account.number,
        amount=amount,
        method="cash",
        request_id=receipt_number_issue(actor=actors["counter"]),
    ).payment


# --- taking a payment ----------------------------------------------------------------------


def test_without_a_shift_the_page_offers_to_open_one_and_comes_back(login, account):
    client = login("counter")
    response = client.get(_take(account))
    assert response.status_code == 200 and response.context["form"] is None
    assert b'data-testid="open-shift"' in response.content
    response = client.post("/payments/shift/open/", {"opening_float": "100.00", "next": _take(account)})
    assert response.status_code == 302 and response["Location"] == _take(account)
    shift = CashierShift.objects.get()
    assert shift.opening_float == Decimal("100.00") and shift.hall.code == "QX-H01"
    response = client.get(_take(account))
    assert response.context["shift"] == shift and response.context["form"] is not None
    assert response.context["summary"].state.balance == Decimal("0")


def test_a_cash_payment_leads_to_its_receipt_and_a_double_submit_posts_once(login, account, actors):
    client = login("counter")
    shift_open(actor=actors["counter"], opening_float="0")
    token = _token(client.get(_take(account)))
    data = {"amount": "87.50", "method": "cash", "cash_tendered": "100", "payer": "王五", "token": token}
    first = client.post(_take(account), data)
    payment = Payment.objects.get()
    assert first.status_code == 302 and first["Location"] == f"/payments/receipts/{payment.pk}/"
    assert payment.amount == Decimal("87.50") and payment.change_given == Decimal("12.50")  # 100 - 87.50
    assert re.fullmatch(r"QX-H01-\d{8}-\d{6}", payment.external_id)

    again = client.post(_take(account), data)  # the browser resubmits the same form
    assert again["Location"] == first["Location"] and Payment.objects.count() == 1

    receipt = client.get(first["Location"])
    assert receipt.status_code == 200
    html = receipt.content.decode()
    assert "12.50" in html and "捌拾柒元伍角" in html and f"/payments/receipts/{payment.pk}.pdf" in html
    assert 'data-testid="power-restoring"' not in html
    assert "already recorded" in " ".join(str(m) for m in receipt.context["messages"])


def test_each_page_view_issues_a_new_receipt_number(login, account, actors):
    client = login("counter")
    shift_open(actor=actors["counter"], opening_float="0")
    assert _token(client.get(_take(account))) != _token(client.get(_take(account)))


def test_a_tampered_or_foreign_token_posts_nothing(login, account, actors, flat_tariff, make_prepaid):
    client = login("counter")
    shift_open(actor=actors["counter"], opening_float="0")
    other = make_prepaid(flat_tariff)[0]
    foreign = _token(client.get(_take(other)))  # issued for another account
    for token in ("QX-H01-20260101-000001", foreign):
        response = client.post(_take(account), {"amount": "10", "method": "card", "token": token})
        assert response.status_code == 200 and response.context["form"].errors["token"]
    assert not Payment.objects.exists()


def test_form_errors_keep_the_receipt_number(login, account, actors):
    client = login("counter")
    shift_open(actor=actors["counter"], opening_float="0")
    token = _token(client.get(_take(account)))
    response = client.post(
        _take(account), {"amount": "10.00", "method": "cash", "cash_tendered": "5", "token": token}
    )
    assert response.status_code == 200 and response.context["form"].errors["cash_tendered"]
    assert _token(response) == token
    response = client.post(_take(account), {"amount": "60000000", "method": "card", "token": token})
    assert response.context["form"].errors  # above the counter's limit
    assert not Payment.objects.exists()


def test_a_settled_shift_takes_no_payment_from_an_open_form(login, account, actors):
    client = login("counter")
    shift = shift_open(actor=actors["counter"], opening_float="0")
    token = _token(client.get(_take(account)))
    client.post(f"/payments/shifts/{shift.pk}/settle/", {"counted_cash": "0"})
    response = client.post(_take(account), {"amount": "10.00", "method": "card", "token": token})
    assert response.status_code == 200
    assert response.context["form"] is None and b'data-testid="open-shift"' in response.content
    assert "Open a shift" in " ".join(str(m) for m in response.context["messages"])
    assert not Payment.objects.exists()


@pytest.mark.parametrize("role", ["inspector", "auditor", "manager"])
def test_roles_without_payment_take_get_403(login, account, role):
    client = login(role)
    assert client.get(_take(account)).status_code == 403
    assert client.post(_take(account), {"amount": "1", "method": "cash", "token": "x"}).status_code == 403
    assert client.get("/payments/shift/").status_code == 403
    assert client.post("/payments/shift/open/", {"opening_float": "0"}).status_code == 403


def test_unknown_account_is_404_and_anonymous_goes_to_login(client, login, account):
    response = client.get(_take(account))
    assert response.status_code == 302 and "/login/" in response["Location"]
    assert login("counter").get("/payments/take/0000000/").status_code == 404


def test_forms_need_the_csrf_token(staff, account, actors):
    client = Client(enforce_csrf_checks=True)
    client.force_login(staff["counter"])
    assert client.post("/payments/shift/open/", {"opening_float": "0"}).status_code == 403
    assert not CashierShift.objects.exists()
    page = client.get(_take(account))
    csrf = page.cookies["csrftoken"].value
    assert re.search(rb'name="csrfmiddlewaretoken"', page.content)
    response = client.post("/payments/shift/open/", {"opening_float": "0", "csrfmiddlewaretoken": csrf})
    assert response.status_code == 302 and CashierShift.objects.count() == 1
    token = _token(client.get(_take(account)))
    data = {"amount": "10.00", "method": "card", "token": token}
    assert client.post(_take(account), data).status_code == 403
    assert not Payment.objects.exists()
    assert client.post(_take(account), {**data, "csrfmiddlewaretoken": csrf}).status_code == 302
    shift = CashierShift.objects.get()
    assert client.post(f"/payments/shifts/{shift.pk}/settle/", {"counted_cash": "0"}).status_code == 403


# --- receipts ------------------------------------------------------------------------------


def test_receipt_pdf(login, account, actors):
    payment = _paid(actors, account, "87.50")
    response = login("auditor").get(f"/payments/receipts/{payment.pk}.pdf")
    assert response.status_code == 200 and response["Content-Type"] == "application/pdf"
    assert response.content.startswith(b"%PDF")
    text = PdfReader(io.BytesIO(response.content)).pages[0].extract_text()
    assert "捌拾柒元伍角" in text and payment.external_id in text


def test_receipts_are_scoped(login, account, actors):
    payment = _paid(actors, account)
    for url in (f"/payments/receipts/{payment.pk}/", f"/payments/receipts/{payment.pk}.pdf"):
        assert login("manager").get(url).status_code == 200
        assert login("manager_bs").get(url).status_code == 404  # a 青溪 customer
        assert login("inspector").get(url).status_code == 403  # no PAYMENT_VIEW
    assert login("manager").get("/payments/receipts/999999/").status_code == 404


def test_the_receipt_says_power_is_being_restored(login, actors, flat_tariff, make_prepaid):
    from tests.billing.services.conftest import at
    from tests.billing.services.test_policy_service import evaluate, post

    account, _meter = make_prepaid(flat_tariff)
    post(account, "5.00")
    post(account, "-6.00")
    evaluate(account, at(2026, 11, 25, 5))
    evaluate(account, at(2026, 11, 25, 10))  # tripped
    payment = _paid(actors, account, "50.00")
    assert payment.restore_command_id
    html = login("counter").get(f"/payments/receipts/{payment.pk}/").content.decode()
    assert 'data-testid="power-restoring"' in html
    assert "49.00" in html  # balance after: 5.00 - 6.00 + 50.00


# --- shift pages ---------------------------------------------------------------------------


def test_settling_from_the_shift_page_shows_the_report_with_the_difference(login, account, actors):
    client = login("counter")
    client.post("/payments/shift/open/", {"opening_float": "200.00"})
    shift = CashierShift.objects.get()
    for amount, tendered in (("87.50", "100"), ("30.20", "")):
        token = _token(client.get(_take(account)))
        client.post(
            _take(account), {"amount": amount, "method": "cash", "cash_tendered": tendered, "token": token}
        )
    token = _token(client.get(_take(account)))
    client.post(_take(account), {"amount": "500.00", "method": "card", "token": token})
    page = client.get("/payments/shift/")
    assert page.context["report"].expected_cash == Decimal("317.70")  # 200 + 87.50 + 30.20, running
    response = client.post(f"/payments/shifts/{shift.pk}/settle/", {"counted_cash": "318.00", "note": ""})
    assert response["Location"] == f"/payments/shifts/{shift.pk}/"
    report = client.get(response["Location"])
    assert report.context["report"].difference == Decimal("0.30")  # 318.00 - 317.70: cash over
    assert len(report.context["payments"]) == 3
    assert b'data-testid="difference"' in report.content and b"cash over" in report.content
    # the shift is locked: settling twice says so and changes nothing
    again = client.post(f"/payments/shifts/{shift.pk}/settle/", {"counted_cash": "0"}, follow=True)
    assert "already settled" in " ".join(str(m) for m in again.context["messages"])
    shift.refresh_from_db()
    assert shift.counted_cash == Decimal("318.00")


def test_daily_settlement_list_per_hall(login, account, actors):
    _paid(actors, account, "20.00")
    today = timezone.localdate().isoformat()
    response = login("manager").get(f"/payments/shifts/?hall=QX-H01&date={today}")
    assert response.status_code == 200
    [report] = response.context["reports"]
    assert report.total == Decimal("20.00")
    assert login("manager_bs").get(f"/payments/shifts/?hall=QX-H01&date={today}").context["reports"] == []
    assert login("counter").get("/payments/shifts/").context["hall"].code == "QX-H01"  # their own hall
    assert login("inspector").get("/payments/shifts/").status_code == 403


def test_shift_reports_are_scoped(login, actors):
    shift = shift_open(actor=actors["counter"], opening_float="0")
    assert login("manager").get(f"/payments/shifts/{shift.pk}/").status_code == 200
    assert login("manager_bs").get(f"/payments/shifts/{shift.pk}/").status_code == 404
    assert login("counter_bs").get(f"/payments/shifts/{shift.pk}/settle/").status_code == 405
    assert (
        login("counter_bs").post(f"/payments/shifts/{shift.pk}/settle/", {"counted_cash": "0"}).status_code
        == 404
    )


# --- history -------------------------------------------------------------------------------


def test_history_filters_and_pages(login, account, actors):
    from payments.views_counter import HISTORY_PAGE_SIZE

    shift_open(actor=actors["counter"], opening_float="0")
    for i in range(HISTORY_PAGE_SIZE + 1):
        counter_payment(
            actor=actors["counter"],
            account_number=account.number,
            amount=f"{i + 1}.00",
            method="card",
            request_id=f"H-{i}",
        )
    client = login("auditor")
    first = client.get(f"/payments/history/?account={account.number}&channel=counter")
    assert first.context["page"].paginator.count == HISTORY_PAGE_SIZE + 1
    assert len(first.context["page"].object_list) == HISTORY_PAGE_SIZE
    second = client.get(f"/payments/history/?account={account.number}&channel=counter&page=2")
    assert [p.amount for p in second.context["page"].object_list] == [Decimal("1.00")]  # the oldest
    assert client.get("/payments/history/?channel=bank").context["page"].paginator.count == 0
    tomorrow = (timezone.localdate() + timedelta(days=1)).isoformat()
    assert client.get(f"/payments/history/?date_from={tomorrow}").context["page"].paginator.count == 0
    assert login("manager_bs").get("/payments/history/").context["page"].paginator.count == 0
    assert login("inspector").get("/payments/history/").status_code == 403


def test_account_history(login, account, actors):
    _paid(actors, account, "20.00")
    response = login("counter").get(f"/payments/accounts/{account.number}/")
    assert response.status_code == 200 and response.context["can_take"]
    assert [p.amount for p in response.context["page"].object_list] == [Decimal("20.00")]
    assert login("manager_bs").get(f"/payments/accounts/{account.number}/").status_code == 404
    assert not login("auditor").get(f"/payments/accounts/{account.number}/").context["can_take"]
