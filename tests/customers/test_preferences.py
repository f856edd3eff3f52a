"""customer_notification_preferences_set: the customer's own choice of SMS and/or e-mail,
audited, and followed by the next cost-control notice."""

import pytest
from pghistory.models import Events

from core.exceptions import ValidationError
from core.models import Notification
from customers.models import Customer
from customers.services.preferences import customer_notification_preferences_set
from tests.billing.services.conftest import flat_tariff, make_prepaid, policy  # noqa: F401  (fixtures)
from tests.billing.services.test_policy_service import WORKDAY_10, evaluate, post

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("english", "fast_password_hashing")]


def updates(customer):
    return list(
        Events.objects.references(customer).filter(pgh_label="update", pgh_model="customers.CustomerEvent")
    )


def test_the_choice_is_written_with_an_audit_record(make_customer):
    customer = make_customer(email="zhang@example.com")
    version = customer.version
    result = customer_notification_preferences_set(
        customer=customer, by_sms=False, by_email=True, changed_by_user_id=4242
    )
    customer.refresh_from_db()
    assert result.pk == customer.pk
    assert customer.notify_by_sms is False and customer.notify_by_email is True
    assert customer.version == version  # staff edit forms in progress are not refused for this
    [event] = updates(customer)
    assert event.pgh_diff["notify_by_sms"] == [True, False]
    assert "notify_by_email" not in event.pgh_diff
    assert event.pgh_context["action"] == "customer.notification_preferences"
    assert event.pgh_context["user"] == 4242 and event.pgh_context["via"] == "portal"


def test_nothing_changed_writes_nothing(make_customer):
    customer = make_customer(email="zhang@example.com")
    customer_notification_preferences_set(customer=customer, by_sms=True, by_email=True, changed_by_user_id=1)
    assert updates(customer) == []


def test_email_cannot_be_switched_on_without_an_address(make_customer):
    customer = make_customer()  # no e-mail address
    customer_notification_preferences_set(
        customer=customer, by_sms=True, by_email=False, changed_by_user_id=1
    )
    with pytest.raises(ValidationError) as info:
        customer_notification_preferences_set(
            customer=customer, by_sms=True, by_email=True, changed_by_user_id=1
        )
    assert info.value.field_errors["by_email"] == ["No e-mail address on record."]
    assert Customer.objects.get(pk=customer.pk).notify_by_email is False


def test_an_existing_email_choice_without_an_address_is_kept(make_customer):
    customer = make_customer()  # notify_by_email is on by default; it takes effect once an address is added
    customer_notification_preferences_set(
        customer=customer, by_sms=False, by_email=True, changed_by_user_id=1
    )
    customer.refresh_from_db()
    assert customer.notify_by_sms is False and customer.notify_by_email is True


def test_only_yes_or_no(make_customer):
    customer = make_customer()
    with pytest.raises(ValidationError):
        customer_notification_preferences_set(
            customer=customer, by_sms="no", by_email=False, changed_by_user_id=1
        )


def channels_of(account, topic):
    return sorted(
        Notification.objects.filter(account_id=account.pk, topic=topic).values_list("channel", flat=True)
    )


def test_the_next_policy_warning_follows_the_choice(flat_tariff, make_prepaid):  # noqa: F811
    sms_off, _ = make_prepaid(flat_tariff, email="a@example.com")
    email_off, _ = make_prepaid(flat_tariff, email="b@example.com")
    customer_notification_preferences_set(
        customer=sms_off.customer, by_sms=False, by_email=True, changed_by_user_id=1
    )
    customer_notification_preferences_set(
        customer=email_off.customer, by_sms=True, by_email=False, changed_by_user_id=1
    )
    for account in (sms_off, email_off):
        post(account, "25.00")  # available 25.00 <= warning level 1 at 30.00
        [decision] = evaluate(account, WORKDAY_10)
        assert decision.action == "warn1"
    assert channels_of(sms_off, "low_balance_1") == ["email", "portal"]
    assert channels_of(email_off, "low_balance_1") == ["portal", "sms"]
