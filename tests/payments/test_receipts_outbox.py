"""Payment receipts through the notification outbox: every posted payment (any channel, not
a repeat) queues a ``payment_receipt`` notice in its own transaction — the portal always,
SMS and e-mail as the customer chose — and nothing is queued for a repeat or a refused
payment."""

from decimal import Decimal
from unittest import mock

import pytest

from billing.models import AccountBilling
from core.exceptions import Conflict, ValidationError
from core.models import Notification
from core.services.notifications import BATCH_KEY, _batch_redis, notifications_flush
from core.tasks import notifications_deliver_many_task
from customers.models import AccountStatus, Customer
from payments.services.posting import payment_post

pytestmark = pytest.mark.usefixtures("english")


@pytest.fixture
def account(flat_tariff, make_prepaid):
    return make_prepaid(flat_tariff)[0]


def choose(account, *, email="", by_sms=True, by_email=True, mobile_phone=None):
    fields = {"email": email, "notify_by_sms": by_sms, "notify_by_email": by_email}
    if mobile_phone is not None:
        fields["mobile_phone"] = mobile_phone
    Customer.objects.filter(pk=account.customer_id).update(**fields)


def pay(account, amount="50.00", ref="R1", channel="online", method="online", **extra):
    return payment_post(
        channel=channel, external_id=ref, account_number=account.number, amount=amount, method=method, **extra
    )


def receipts():
    return {n.channel: n for n in Notification.objects.filter(topic="payment_receipt")}


@pytest.mark.django_db
def test_a_payment_queues_a_receipt_on_every_channel_the_customer_chose(account):
    choose(account, email="zhang@example.com")
    payment = pay(account, "50.00", "ORDER-1").payment
    rows = receipts()
    assert set(rows) == {"portal", "sms", "email"}
    phone = Customer.objects.get(pk=account.customer_id).mobile_phone
    assert rows["sms"].recipient == phone and rows["email"].recipient == "zhang@example.com"
    assert rows["portal"].recipient == ""
    for channel, row in rows.items():
        assert row.dedupe_key == f"receipt:{payment.channel}:{payment.external_id}:{channel}"
        assert (row.customer_id, row.account_id, row.status) == (account.customer_id, account.pk, "pending")
        # balance 0.00 + 50.00 = 50.00
        assert row.body.startswith(f"Dear 张三, we received ¥50.00 for account {account.number} on ")
        assert row.body.endswith(". Balance ¥50.00.")
    assert rows["email"].subject and not rows["sms"].subject


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("email", "by_sms", "by_email", "expected"),
    [
        ("", True, True, {"portal", "sms"}),  # no address: no e-mail
        ("zhang@example.com", False, True, {"portal", "email"}),
        ("zhang@example.com", True, False, {"portal", "sms"}),
        ("zhang@example.com", False, False, {"portal"}),
    ],
)
def test_sms_and_email_follow_the_customers_choice(account, email, by_sms, by_email, expected):
    choose(account, email=email, by_sms=by_sms, by_email=by_email)
    pay(account, "12.30", "ORDER-2", channel="ivr", method="card")
    assert set(receipts()) == expected


@pytest.mark.django_db
def test_a_repeat_delivery_queues_no_second_receipt(account):
    first = pay(account, "50.00", "ORDER-3")
    again = pay(account, "50.00", "ORDER-3")
    assert first.created and not again.created
    assert Notification.objects.filter(topic="payment_receipt").count() == 2  # portal + sms, once
    second = pay(account, "20.00", "ORDER-4")
    # balance 50.00 + 20.00 = 70.00 in the second payment's receipt
    key = f"receipt:{second.payment.channel}:{second.payment.external_id}:sms"
    assert Notification.objects.get(dedupe_key=key).body.endswith("Balance ¥70.00.")


@pytest.mark.django_db
def test_refused_payments_queue_nothing(account):
    pay(account, "50.00", "ORDER-5")
    Notification.objects.all().delete()
    with pytest.raises(Conflict):
        pay(account, "60.00", "ORDER-5")  # the reference was used for another amount
    with pytest.raises(ValidationError):
        pay(account, "0.001", "ORDER-6")
    with pytest.raises(ValidationError):
        pay(account, "87.50", "ORDER-7", channel="counter", method="cash", cash_tendered="80")
    account.status = AccountStatus.CLOSED
    account.closed_on = account.opened_on
    account.save()
    with pytest.raises(ValidationError, match="closed"):
        pay(account, "10.00", "ORDER-8")
    assert not Notification.objects.exists()


@pytest.mark.django_db
def test_a_number_that_cannot_take_an_sms_loses_only_the_sms(account):
    choose(account, email="zhang@example.com", mobile_phone="010-12345678")  # a landline
    result = pay(account, "50.00", "ORDER-9")
    assert result.created
    assert set(receipts()) == {"portal", "email"}


@pytest.fixture
def batch(settings):
    """The outbox's batch list in the test Redis (``REDIS_URL``), empty before and after."""
    if not settings.REDIS_URL:
        pytest.skip("needs REDIS_URL")
    client = _batch_redis()
    client.delete(BATCH_KEY)
    yield client
    client.delete(BATCH_KEY)


def listed(client) -> list[int]:
    return [int(v) for v in client.lrange(BATCH_KEY, 0, -1)]


@pytest.mark.django_db
def test_without_redis_one_delivery_task_after_commit_for_all_channels(
    account, settings, django_capture_on_commit_callbacks
):
    settings.REDIS_URL = ""  # embedded mode: no batch list, one task per payment
    choose(account, email="zhang@example.com")
    with (
        mock.patch("core.tasks.notifications_deliver_many_task.delay") as delay,
        django_capture_on_commit_callbacks(execute=True),
    ):
        pay(account, "50.00", "ORDER-10")
    ids = sorted(Notification.objects.filter(topic="payment_receipt").values_list("pk", flat=True))
    assert len(ids) == 3
    delay.assert_called_once_with(ids)


@pytest.mark.django_db
def test_a_payment_receipt_is_delivered_through_flush(batch, account, django_capture_on_commit_callbacks):
    with (
        mock.patch("core.tasks.notifications_deliver_many_task.delay") as delay,
        django_capture_on_commit_callbacks(execute=True),
    ):
        payment = payment_post(
            channel="online",
            external_id="B-1",
            account_number=account.number,
            amount="50.00",
            method="online",
        ).payment
    delay.assert_not_called()  # no task per payment
    queued_rows = Notification.objects.filter(topic="payment_receipt", account_id=account.pk)
    ids = sorted(queued_rows.values_list("pk", flat=True))
    assert len(ids) == 2  # portal + sms (make_prepaid's customer has a mobile phone, no e-mail)
    assert listed(batch) == ids
    assert set(queued_rows.values_list("status", flat=True)) == {"pending"}

    queued = []
    with mock.patch("core.tasks.notifications_deliver_many_task.delay", side_effect=queued.append):
        assert notifications_flush() == 2
    assert queued == [ids]
    notifications_deliver_many_task.apply(args=(queued[0],))  # what the worker runs
    rows = {n.channel: n for n in queued_rows}
    assert {c: n.status for c, n in rows.items()} == {"portal": "sent", "sms": "sent"}
    assert rows["portal"].dedupe_key == f"receipt:{payment.channel}:{payment.external_id}:portal"
    assert listed(batch) == []


@pytest.mark.django_db
def test_a_payment_that_restores_power_gets_a_receipt_and_the_restore_notice(flat_tariff, make_prepaid):
    from tests.payments.test_online import trip

    account, _meter = make_prepaid(flat_tariff)
    trip(account)  # balance -1.00, tripped
    payment = pay(account, "100.00", "ORDER-11").payment
    assert payment.restore_command_id
    topics = set(Notification.objects.filter(account_id=account.pk).values_list("topic", "channel"))
    assert {("payment_receipt", "portal"), ("restore", "portal")} <= topics
    # -1.00 + 100.00 = 99.00
    key = f"receipt:{payment.channel}:{payment.external_id}:portal"
    assert Notification.objects.get(dedupe_key=key).body.endswith("Balance ¥99.00.")
    assert AccountBilling.objects.get(pk=account.pk).balance == Decimal("99.00")
