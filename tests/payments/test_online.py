"""Online payment through the simulated gateway: orders, signed notifications (every one
logged; bad signatures, replays, stale ones, unknown orders and tampered amounts post
nothing), the notify endpoint, the cashier page end to end and the order status API."""

import json
from datetime import timedelta
from decimal import Decimal
from types import SimpleNamespace

import pytest
from django.contrib.auth import get_user_model
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from billing.models import EntryKind, LedgerEntry
from billing.services.ledger import account_balance
from core.exceptions import NotFound, ValidationError
from customers.models import AccountStatus
from metering.models import CommandAction, CommandStatus, RemoteCommand
from payments.gateways import get_gateway
from payments.gateways.simulated import SIGNATURE_HEADER, SimulatedGateway
from payments.models import GatewayNotification, GatewayOrder, Payment
from payments.services.online import online_notification_receive, online_order_create
from tests.billing.services.conftest import at
from tests.billing.services.test_policy_service import evaluate, post

pytestmark = pytest.mark.usefixtures("english")
Outcome = GatewayNotification.Outcome
SIM = SimulatedGateway()


@pytest.fixture
def account(flat_tariff, make_prepaid):
    return make_prepaid(flat_tariff)[0]


def new_order(account, amount="50.00", **extra) -> GatewayOrder:
    return online_order_create(account_number=account.number, amount=amount, **extra)[0]


def receive(body: bytes, headers: dict) -> GatewayNotification:
    return online_notification_receive(provider="sim", body=body, headers=headers, remote_addr="10.0.0.9")


def deliver(order, **kw) -> GatewayNotification:
    return receive(*SIM.notification_for(order, **kw))


def assert_nothing_posted(account):
    assert not Payment.objects.exists()
    assert not LedgerEntry.objects.filter(account=account, kind=EntryKind.PAYMENT).exists()
    assert account_balance(account.pk) == Decimal("0.00")


# --- orders --------------------------------------------------------------------------------


@pytest.mark.django_db
def test_an_order_expires_in_30_minutes_and_sends_the_customer_to_the_cashier(account):
    before = timezone.now()
    order, redirect_url = online_order_create(
        account_number=account.number, amount="50", customer_user_id=7, return_url="/portal/pay/done/"
    )
    assert redirect_url == f"/payments/online/sim/pay/{order.order_no}/"
    assert order.order_no.startswith("KW") and len(order.order_no) == 28  # KW + 14 time digits + 12 hex
    assert order.amount == Decimal("50.00") and order.status == GatewayOrder.Status.CREATED
    assert timedelta(minutes=30) <= order.expires_at - before < timedelta(minutes=30, seconds=5)
    assert order.customer_user_id == 7 and order.return_url == "/portal/pay/done/"
    assert new_order(account).order_no != order.order_no


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"amount": "0"}, ValidationError),
        ({"amount": "10.005"}, ValidationError),
        ({"amount": "50000.01"}, ValidationError),  # above the online limit of 50,000.00
        ({"amount": "10", "return_url": "https://evil.example/"}, ValidationError),
        ({"amount": "10", "return_url": "//evil.example/"}, ValidationError),
        ({"amount": "10", "provider": "nope"}, NotFound),
        ({"amount": "10", "account_number": "9999999"}, NotFound),
    ],
)
def test_bad_orders_are_refused(account, kwargs, error):
    kwargs = {"account_number": account.number, **kwargs}
    with pytest.raises(error):
        online_order_create(**kwargs)
    assert not GatewayOrder.objects.exists()


@pytest.mark.django_db
def test_a_closed_account_gets_no_order(account):
    account.status = AccountStatus.CLOSED
    account.closed_on = account.opened_on
    account.save()
    with pytest.raises(ValidationError, match="closed"):
        new_order(account)


# --- notifications -------------------------------------------------------------------------


@pytest.mark.django_db
def test_a_valid_notification_posts_once_even_if_delivered_three_times(account):
    order = new_order(account, "50.00")
    body, headers = SIM.notification_for(order)
    first, second, third = (receive(body, headers) for _ in range(3))
    assert first.outcome == Outcome.ACCEPTED and first.acknowledge
    assert second.outcome == third.outcome == Outcome.REPLAY and second.acknowledge
    # a new notification (another nonce) for the paid order is a duplicate
    again = deliver(order)
    assert again.outcome == Outcome.DUPLICATE and again.acknowledge
    assert GatewayNotification.objects.count() == 4
    payment = Payment.objects.get()
    assert (payment.channel, payment.external_id, payment.method) == ("online", order.order_no, "online")
    assert payment.details["provider"] == "sim" and payment.details["txn"]
    order.refresh_from_db()
    assert order.status == GatewayOrder.Status.PAID and order.payment == payment and order.paid_at
    assert order.provider_txn_id == payment.details["txn"]
    assert account_balance(account.pk) == Decimal("50.00")


@pytest.mark.django_db
def test_a_bad_signature_is_rejected_logged_and_posts_nothing(account, settings):
    order = new_order(account)
    body, headers = SIM.notification_for(order)
    forged = {**headers, SIGNATURE_HEADER: "0" * 64}
    assert receive(body, forged).outcome == Outcome.BAD_SIGNATURE
    assert receive(body, {"Content-Type": "application/json"}).outcome == Outcome.BAD_SIGNATURE  # unsigned
    settings.PAYMENT_SIM_SECRET = "another key"  # signed by someone who does not hold our key
    row = receive(body, headers)
    assert row.outcome == Outcome.BAD_SIGNATURE and not row.acknowledge
    assert row.order_no == order.order_no and row.remote_addr == "10.0.0.9" and row.body == body.decode()
    assert GatewayNotification.objects.filter(outcome=Outcome.BAD_SIGNATURE).count() == 3
    assert_nothing_posted(account)
    order.refresh_from_db()
    assert order.status == GatewayOrder.Status.CREATED


@pytest.mark.django_db
def test_a_tampered_amount_is_rejected_logged_and_posts_nothing(account):
    order = new_order(account, "50.00")
    body, headers = SIM.notification_for(order)
    fields = json.loads(body)
    fields["amount"] = "5000.00"  # changed in transit: the signature no longer matches
    assert receive(json.dumps(fields).encode(), headers).outcome == Outcome.BAD_SIGNATURE
    # signed by the gateway, but for another amount than the order's
    row = deliver(order, amount="0.01")
    assert row.outcome == Outcome.AMOUNT_MISMATCH and not row.acknowledge
    assert "0.01" in row.detail and "50.00" in row.detail
    assert_nothing_posted(account)


@pytest.mark.django_db
def test_a_replayed_notification_is_rejected_logged_and_posts_nothing_again(account):
    order = new_order(account, "20.00")
    body, headers = SIM.notification_for(order)
    assert receive(body, headers).outcome == Outcome.ACCEPTED
    replay = receive(body, headers)
    assert replay.outcome == Outcome.REPLAY and replay.detail == "nonce already accepted"
    assert replay.nonce == json.loads(body)["nonce"]
    assert Payment.objects.count() == 1 and account_balance(account.pk) == Decimal("20.00")


@pytest.mark.django_db
def test_stale_and_future_notifications_are_rejected_then_a_fresh_one_posts(account):
    order = new_order(account, "30.00")
    stale = deliver(order, timestamp=timezone.now() - timedelta(minutes=6))
    future = deliver(order, timestamp=timezone.now() + timedelta(minutes=10))
    assert stale.outcome == future.outcome == Outcome.REPLAY
    assert stale.detail.startswith("stale") and "future" in future.detail
    assert_nothing_posted(account)
    assert deliver(order, timestamp=timezone.now() - timedelta(minutes=4)).outcome == Outcome.ACCEPTED
    assert account_balance(account.pk) == Decimal("30.00")


@pytest.mark.django_db
def test_unknown_orders_and_malformed_bodies_are_logged_and_post_nothing(account):
    ghost = SimpleNamespace(order_no="KW20261128000000ABCDEF123456", amount=Decimal("10.00"))
    assert deliver(ghost).outcome == Outcome.UNKNOWN_ORDER
    assert receive(b"not json", {}).outcome == Outcome.MALFORMED
    assert receive(b'{"order_no": "KW1"}', {}).outcome == Outcome.MALFORMED
    assert receive(b"x" * 20_000, {}).outcome == Outcome.MALFORMED
    # a notification to a gateway that does not exist is logged too
    row = online_notification_receive(provider="nope", body=b"{}", headers={}, remote_addr="")
    assert row.outcome == Outcome.MALFORMED and row.provider == "nope"
    assert GatewayNotification.objects.count() == 5
    assert_nothing_posted(account)


@pytest.mark.django_db
def test_a_failed_payment_marks_the_order_failed_and_a_late_payment_is_still_posted(account):
    order = new_order(account, "40.00")
    assert deliver(order, status="failed").outcome == Outcome.ACCEPTED
    order.refresh_from_db()
    assert order.status == GatewayOrder.Status.FAILED
    assert_nothing_posted(account)
    # the gateway later says it was paid after all: the money was taken, so it is posted
    assert deliver(order).outcome == Outcome.ACCEPTED
    order.refresh_from_db()
    assert order.status == GatewayOrder.Status.PAID and account_balance(account.pk) == Decimal("40.00")


@pytest.mark.django_db
def test_the_notify_endpoint_answers_the_gateway_without_csrf_or_credentials(account):
    order = new_order(account, "12.34")
    body, headers = SIM.notification_for(order)
    client = Client(enforce_csrf_checks=True)
    url = reverse("api-payments-online-notify", args=["sim"])
    assert url == "/api/v1/payments/online/sim/notify"
    forged = client.post(url, body, content_type="application/json", headers={SIGNATURE_HEADER: "ab" * 32})
    assert forged.status_code == 400 and forged.content == b"fail"
    ok = client.post(
        url, body, content_type="application/json", headers={SIGNATURE_HEADER: headers[SIGNATURE_HEADER]}
    )
    assert ok.status_code == 200 and ok.content == b"success"
    repeat = client.post(
        url, body, content_type="application/json", headers={SIGNATURE_HEADER: headers[SIGNATURE_HEADER]}
    )
    assert repeat.status_code == 200 and repeat.content == b"success"
    assert list(GatewayNotification.objects.order_by("pk").values_list("outcome", flat=True)) == [
        Outcome.BAD_SIGNATURE,
        Outcome.ACCEPTED,
        Outcome.REPLAY,
    ]
    assert Payment.objects.get().amount == Decimal("12.34")


# --- the cashier page and the order status API ---------------------------------------------


def trip(account):
    """Balance 5.00 - 6.00 = -1.00 below the trip threshold 0; warned at 05:00, tripped at 10:00."""
    post(account, "5.00")
    post(account, "-6.00")
    evaluate(account, at(2026, 11, 25, 5))
    evaluate(account, at(2026, 11, 25, 10))


@pytest.mark.django_db
def test_the_cashier_page_pays_a_tripped_customer_end_to_end(flat_tariff, make_prepaid, client):
    account, meter = make_prepaid(flat_tariff)
    trip(account)
    user = get_user_model().objects.create_user("portal-user", password="pw-for-tests-1")
    order, redirect_url = online_order_create(
        account_number=account.number, amount="100.00", customer_user_id=user.pk, return_url="/portal/paid/"
    )
    page = client.get(redirect_url)
    assert page.status_code == 200
    html = page.content.decode()
    assert order.order_no in html and "100.00" in html and "Pay" in html
    assert account.customer.name not in html  # the name is masked (张三 -> 张*)

    response = client.post(redirect_url, {"action": "pay"})
    assert response.status_code == 302 and response["Location"] == f"/portal/paid/?order_no={order.order_no}"
    order.refresh_from_db()
    assert order.status == GatewayOrder.Status.PAID
    note = GatewayNotification.objects.get()
    assert note.outcome == Outcome.ACCEPTED and note.remote_addr == "sim-cashier"
    # -1.00 + 100.00 = 99.00, above the close threshold 5: one close command
    assert account_balance(account.pk) == Decimal("99.00")
    close = RemoteCommand.objects.get(meter=meter, action=CommandAction.CLOSE)
    assert order.payment.restore_command_id == close.pk

    # the portal asks for the order's status (as the user who started it)
    client.force_login(user)
    url = reverse("api-payments-online-order", args=[order.order_no])
    data = client.get(url).json()
    assert data["status"] == "paid" and data["payment_id"] == order.payment_id and data["amount"] == "100.00"
    assert data["restore"]["status"] == "pending" and data["restore"]["command_id"] == close.pk
    RemoteCommand.objects.filter(pk=close.pk).update(
        status=CommandStatus.CONFIRMED, confirmed_at=timezone.now()
    )
    data = client.get(url).json()
    assert data["restore"]["status"] == "restored" and data["restore"]["message"] == "Power restored."

    # paying again on the cashier page is refused; nothing more is posted
    client.post(redirect_url, {"action": "pay"})
    assert Payment.objects.count() == 1


@pytest.mark.django_db
def test_cancel_on_the_cashier_page_fails_the_order(account, client):
    order, redirect_url = online_order_create(account_number=account.number, amount="10.00")
    response = client.post(redirect_url, {"action": "cancel"})
    assert response.status_code == 302 and response["Location"] == redirect_url  # no return address
    order.refresh_from_db()
    assert order.status == GatewayOrder.Status.FAILED
    assert "Failed" in client.get(redirect_url).content.decode()
    assert_nothing_posted(account)


@pytest.mark.django_db
def test_an_expired_order_cannot_be_paid_on_the_cashier_page(account, client):
    order, redirect_url = online_order_create(account_number=account.number, amount="10.00")
    GatewayOrder.objects.filter(pk=order.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    assert "Expired" in client.get(redirect_url).content.decode()
    client.post(redirect_url, {"action": "pay"})
    assert_nothing_posted(account)
    assert not GatewayNotification.objects.exists()


@pytest.mark.django_db
def test_the_order_status_is_shown_only_to_its_user_and_staff_in_scope(account, staff, client):
    User = get_user_model()
    owner = User.objects.create_user("owner", password="pw-for-tests-1")
    other = User.objects.create_user("other", password="pw-for-tests-1")
    order = new_order(account, "10.00", customer_user_id=owner.pk)
    url = reverse("api-payments-online-order", args=[order.order_no])
    assert url == f"/api/v1/payments/online/orders/{order.order_no}"
    assert client.get(url).status_code in (401, 403)
    expected = {
        "owner": 200,
        "other": 404,
        "counter": 200,
        "manager": 200,
        "manager_bs": 404,
        "inspector": 404,
    }
    users = {"owner": owner, "other": other, **staff}
    for name, code in expected.items():
        client.force_login(users[name])
        response = client.get(url)
        assert response.status_code == code, name
    client.force_login(owner)
    data = client.get(url).json()
    assert data["status"] == "created" and data["payment_id"] is None and data["restore"] is None
    assert data["account_number"] == account.number


def test_the_registry_finds_the_simulated_gateway_and_refuses_unknown_ones(settings):
    assert get_gateway("sim").name == "sim"
    settings.PAYMENT_GATEWAYS = {}
    with pytest.raises(NotFound):
        get_gateway("sim")
