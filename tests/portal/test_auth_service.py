"""Portal sign-up, password reset and account binding services: one-time codes (hashed,
expiring, single use, killed by wrong entries), the send limits and the wrong-code lockout,
and the rule that a mismatch looks exactly like a match from outside (nothing sent)."""

import re
from datetime import timedelta

import pytest
from axes.models import AccessAttempt
from django.contrib.auth import get_user_model
from django.utils import timezone

from core.exceptions import Conflict, RateLimited
from core.models import Notification
from customers.services.customers import account_close, account_open
from portal.models import AccountBinding, AuthAttempt, OneTimeCode, PortalProfile
from portal.services.auth import (
    CodeLockedOut,
    PendingCode,
    WrongCode,
    bind_code_request,
    bind_complete,
    portal_phone,
    reset_code_request,
    reset_complete,
    signup_code_request,
    signup_complete,
)
from tests.conftest import valid_resident_id

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("english", "fast_password_hashing")]

PASSWORD = "Kw-new-password-2026"
IP = "203.0.113.7"
ID_TAIL = valid_resident_id()[-4:]  # the default customer's resident ID, last 4 characters


def sent_code(phone: str) -> str:
    """The code in the newest SMS to ``phone`` (11 digits), read from the outbox."""
    notification = Notification.objects.filter(recipient=f"+86{phone}", topic="one_time_code").latest("id")
    match = re.search(r"(?<!\d)(\d{6})(?!\d)", notification.body)
    assert match, notification.body
    return match.group(1)


def other_code(code: str) -> str:
    return f"{(int(code) + 1) % 1_000_000:06d}"


def age(model, seconds: float, **filters) -> None:
    """Move rows back in time (instead of waiting)."""
    for row in model.objects.filter(**filters):
        model.objects.filter(pk=row.pk).update(created_at=row.created_at - timedelta(seconds=seconds))


@pytest.fixture
def customer(make_customer):
    return make_customer(mobile_phone="13812340001")


def signup_request(customer, *, phone="13812340001", tail=ID_TAIL, ip=IP):
    return signup_code_request(customer_number=customer.number, id_last4=tail, phone=phone, ip_address=ip)


# --- sign-up ------------------------------------------------------------------------------


def test_signup_sends_a_hashed_code_and_the_code_creates_the_user_and_binds_the_account(customer):
    pending = signup_request(customer)

    sms = Notification.objects.get()
    assert (sms.channel, sms.topic, sms.recipient, sms.customer_id) == (
        "sms",
        "one_time_code",
        "+8613812340001",
        customer.pk,
    )
    code = sent_code("13812340001")
    otc = OneTimeCode.objects.get()
    assert pending.code_id == otc.pk and pending.requester == "13812340001"
    assert code not in otc.code_hash and len(otc.code_hash) == 64
    assert otc.expires_at - otc.created_at == timedelta(minutes=10)

    result = signup_complete(pending=pending, code=code, password=PASSWORD, ip_address=IP)

    assert result.created
    user = get_user_model().objects.get(username="13812340001")
    assert user == result.user and user.check_password(PASSWORD)
    assert PortalProfile.objects.get(user=user).mobile_phone == "13812340001"
    assert list(AccountBinding.objects.filter(user=user).values_list("account__number", flat=True)) == [
        customer.accounts.get().number
    ]
    otc.refresh_from_db()
    assert otc.used_at is not None


def test_the_phone_may_be_typed_with_spaces_or_country_code():
    assert portal_phone("138 1234 0001") == "13812340001"
    assert portal_phone("+86 138-1234-0001") == "13812340001"


@pytest.mark.parametrize(
    "case",
    ["wrong id digits", "wrong phone", "unknown customer"],
)
def test_a_mismatch_sends_nothing_and_returns_what_a_match_returns(customer, case):
    kwargs = {"phone": "13812340001", "tail": ID_TAIL}
    number = customer.number
    if case == "wrong id digits":
        kwargs["tail"] = "0000" if ID_TAIL != "0000" else "1111"
    elif case == "wrong phone":
        kwargs["phone"] = "13912340009"
    else:
        number = "3199999999"
    pending = signup_code_request(
        customer_number=number, id_last4=kwargs["tail"], phone=kwargs["phone"], ip_address=IP
    )
    # Same type and same public fields as for a match; no code exists, nothing goes out.
    assert isinstance(pending, PendingCode)
    assert (pending.purpose, pending.requester, pending.code_id) == ("signup", kwargs["phone"], None)
    assert not Notification.objects.exists()
    assert not OneTimeCode.objects.exists()
    # The request counts towards the limits all the same.
    assert AuthAttempt.objects.filter(kind="code_request", requester=kwargs["phone"]).count() == 1
    # And step 2 answers like a wrong code.
    with pytest.raises(WrongCode):
        signup_complete(pending=pending, code="123456", password=PASSWORD, ip_address=IP)
    assert not get_user_model().objects.filter(username=kwargs["phone"]).exists()


def test_the_id_tail_is_compared_without_case(make_customer):
    # Find a resident ID whose check character is X.
    from customers.validators import resident_id_check_char

    body = next(b for b in (f"3610251980010112{d}" for d in range(10)) if resident_id_check_char(b) == "X")
    customer = make_customer(mobile_phone="13812340002", id_number=body + "X")
    pending = signup_request(customer, phone="13812340002", tail=body[-3:] + "x")
    assert pending.code_id is not None


def test_a_closed_or_accountless_customer_gets_no_code(customer):
    customer.status = "closed"
    customer.save(update_fields=["status"])
    assert signup_request(customer).code_id is None
    assert not Notification.objects.exists()


def test_an_expired_code_is_refused(customer):
    pending = signup_request(customer)
    code = sent_code("13812340001")
    OneTimeCode.objects.update(expires_at=timezone.now() - timedelta(seconds=1))
    with pytest.raises(WrongCode):
        signup_complete(pending=pending, code=code, password=PASSWORD, ip_address=IP)
    assert not get_user_model().objects.filter(username="13812340001").exists()


def test_a_code_works_once(customer):
    pending = signup_request(customer)
    code = sent_code("13812340001")
    signup_complete(pending=pending, code=code, password=PASSWORD, ip_address=IP)
    with pytest.raises(WrongCode):
        signup_complete(pending=pending, code=code, password="Another-pw-2026", ip_address=IP)
    assert get_user_model().objects.get(username="13812340001").check_password(PASSWORD)


def test_a_new_code_replaces_the_old_one(customer):
    first = signup_request(customer)
    old = sent_code("13812340001")
    age(AuthAttempt, 61)
    second = signup_request(customer)
    new = sent_code("13812340001")
    with pytest.raises(WrongCode):
        signup_complete(pending=first, code=old, password=PASSWORD, ip_address=IP)
    if new != old:
        with pytest.raises(WrongCode):
            signup_complete(pending=second, code=old, password=PASSWORD, ip_address=IP)
    assert signup_complete(pending=second, code=new, password=PASSWORD, ip_address=IP).created


def test_five_wrong_codes_kill_the_code_and_lock_the_phone(customer):
    pending = signup_request(customer)
    code = sent_code("13812340001")
    wrong = other_code(code)
    for tries_left in (4, 3, 2, 1):
        with pytest.raises(WrongCode) as excinfo:
            signup_complete(pending=pending, code=wrong, password=PASSWORD, ip_address=IP)
        assert f"{tries_left} tr" in str(excinfo.value.message)
    with pytest.raises(CodeLockedOut) as excinfo:  # the fifth wrong code
        signup_complete(pending=pending, code=wrong, password=PASSWORD, ip_address=IP)
    assert "Try again in 15 minutes" in str(excinfo.value.message)
    otc = OneTimeCode.objects.get()
    assert otc.failed_attempts == 5 and otc.revoked_at is not None

    # Locked: the right code is refused, and no new code is sent.
    with pytest.raises(CodeLockedOut):
        signup_complete(pending=pending, code=code, password=PASSWORD, ip_address=IP)
    with pytest.raises(CodeLockedOut):
        signup_request(customer)
    assert Notification.objects.count() == 1
    assert not get_user_model().objects.filter(username="13812340001").exists()

    # 10 minutes on, 5 minutes to go; after 15 minutes the phone may ask again, but the dead
    # code stays dead.
    age(AuthAttempt, 600, kind="code_failure")
    with pytest.raises(CodeLockedOut) as excinfo:
        signup_request(customer)
    assert "Try again in 5 minutes" in str(excinfo.value.message)
    age(AuthAttempt, 301)
    with pytest.raises(WrongCode):
        signup_complete(pending=pending, code=code, password=PASSWORD, ip_address=IP)
    fresh = signup_request(customer)
    assert fresh.code_id is not None and Notification.objects.count() == 2


def test_wrong_codes_lock_an_unknown_phone_the_same_way(customer):
    pending = signup_request(customer, phone="13912340009")  # not the customer's phone
    for _ in range(4):
        with pytest.raises(WrongCode):
            signup_complete(pending=pending, code="123456", password=PASSWORD, ip_address=IP)
    with pytest.raises(CodeLockedOut):
        signup_complete(pending=pending, code="123456", password=PASSWORD, ip_address=IP)


def test_one_code_per_phone_per_minute_and_five_an_hour(customer):
    signup_request(customer)
    with pytest.raises(RateLimited) as excinfo:
        signup_request(customer)
    assert "Wait 60 seconds" in str(excinfo.value.message)
    assert Notification.objects.count() == 1
    for sent in range(2, 6):
        age(AuthAttempt, 61)
        signup_request(customer)
        assert Notification.objects.count() == sent
    age(AuthAttempt, 61)
    with pytest.raises(RateLimited) as excinfo:  # a sixth within the hour (5 × 61 s = 305 s ago)
        signup_request(customer)
    assert "Too many codes were requested for this phone" in str(excinfo.value.message)
    # the oldest of the five was asked 5 × 61 = 305 s ago: 3600 - 305 = 3295 s = 54.9 → 55 minutes
    assert "Try again in 55 minutes" in str(excinfo.value.message)
    age(AuthAttempt, 3600)
    age(OneTimeCode, 3600)
    signup_request(customer)
    assert Notification.objects.count() == 6


def test_the_limits_hold_for_unknown_phones_too(customer):
    signup_request(customer, phone="13912340009")
    with pytest.raises(RateLimited):
        signup_request(customer, phone="13912340009")


def test_codes_from_one_address_are_limited(customer, settings):
    settings.PORTAL_CODE_MAX_PER_IP_PER_HOUR = 2
    signup_request(customer, phone="13912340007")
    signup_request(customer, phone="13912340008")
    with pytest.raises(RateLimited) as excinfo:
        signup_request(customer)
    assert "from your network" in str(excinfo.value.message)
    assert not Notification.objects.exists()
    signup_request(customer, ip="198.51.100.1")  # another address
    assert Notification.objects.count() == 1


def test_signup_with_a_phone_that_already_signs_in_binds_without_touching_the_password(
    customer, make_customer, make_portal_user, actors
):
    existing = make_portal_user(phone="13812340001", password="Old-password-2026")
    pending = signup_request(customer)
    result = signup_complete(pending=pending, code=sent_code("13812340001"), password=PASSWORD, ip_address=IP)
    assert not result.created and result.user == existing
    existing.refresh_from_db()
    assert existing.check_password("Old-password-2026")
    assert AccountBinding.objects.filter(user=existing).count() == 1
    assert get_user_model().objects.filter(username="13812340001").count() == 1


def test_a_staff_sign_in_name_cannot_be_taken(customer):
    get_user_model().objects.create_user(username="13812340001", password="pw-staff-2026")
    pending = signup_request(customer)
    with pytest.raises(Conflict):
        signup_complete(pending=pending, code=sent_code("13812340001"), password=PASSWORD, ip_address=IP)
    assert not PortalProfile.objects.exists()


def test_closed_accounts_are_not_bound(customer, actors):
    second = account_open(actor=actors["admin"], customer=customer, settlement_mode="prepaid")
    third = account_open(actor=actors["admin"], customer=customer, settlement_mode="postpaid")
    account_close(actor=actors["admin"], account=third)
    first = customer.accounts.order_by("number").first()
    pending = signup_request(customer)
    result = signup_complete(pending=pending, code=sent_code("13812340001"), password=PASSWORD, ip_address=IP)
    bound = set(AccountBinding.objects.filter(user=result.user).values_list("account__number", flat=True))
    assert bound == {first.number, second.number}


# --- password reset -----------------------------------------------------------------------


def test_reset_for_an_unknown_phone_sends_nothing_and_looks_the_same(make_portal_user):
    make_portal_user(phone="13812340003")
    unknown = reset_code_request(phone="13912340009", ip_address=IP)
    known = reset_code_request(phone="13812340003", ip_address=IP)
    assert (unknown.purpose, unknown.requester) == ("reset", "13912340009")
    assert (known.purpose, known.requester) == ("reset", "13812340003")
    assert unknown.code_id is None and known.code_id is not None
    assert list(Notification.objects.values_list("recipient", flat=True)) == ["+8613812340003"]


def test_reset_for_a_staff_user_named_like_a_phone_sends_nothing(db):
    get_user_model().objects.create_user(username="13812340004", password="pw-staff-2026")
    assert reset_code_request(phone="13812340004", ip_address=IP).code_id is None
    assert not Notification.objects.exists()


def test_reset_sets_the_password_and_lifts_the_sign_in_lockout(make_portal_user):
    user = make_portal_user(phone="13812340003", password="Old-password-2026")
    AccessAttempt.objects.create(
        username="13812340003", ip_address="198.51.100.9", user_agent="t", failures_since_start=5
    )
    pending = reset_code_request(phone="13812340003", ip_address=IP)
    returned = reset_complete(
        pending=pending, code=sent_code("13812340003"), password=PASSWORD, ip_address=IP
    )
    assert returned == user
    user.refresh_from_db()
    assert user.check_password(PASSWORD)
    assert not AccessAttempt.objects.filter(username="13812340003").exists()


def test_a_wrong_reset_code_changes_nothing(make_portal_user):
    user = make_portal_user(phone="13812340003", password="Old-password-2026")
    pending = reset_code_request(phone="13812340003", ip_address=IP)
    with pytest.raises(WrongCode):
        reset_complete(
            pending=pending, code=other_code(sent_code("13812340003")), password=PASSWORD, ip_address=IP
        )
    user.refresh_from_db()
    assert user.check_password("Old-password-2026")


# --- adding another customer's accounts ---------------------------------------------------


def test_bind_sends_the_code_to_the_other_customers_phone_and_binds_their_accounts(
    customer, make_customer, make_portal_user
):
    mine = make_customer(mobile_phone="13812340005")
    user = make_portal_user(mine.accounts.get(), phone="13812340005")
    pending = bind_code_request(user=user, customer_number=customer.number, id_last4=ID_TAIL, ip_address=IP)
    assert pending.requester == "13812340005"
    assert list(Notification.objects.values_list("recipient", flat=True)) == ["+8613812340001"]
    assert customer.number in Notification.objects.get().body

    accounts = bind_complete(user=user, pending=pending, code=sent_code("13812340001"), ip_address=IP)

    assert [a.number for a in accounts] == [customer.accounts.get().number]
    assert set(
        AccountBinding.objects.filter(user=user).values_list("account__customer__number", flat=True)
    ) == {
        mine.number,
        customer.number,
    }


def test_bind_with_wrong_details_sends_nothing(customer, make_portal_user):
    user = make_portal_user(phone="13812340005")
    wrong_tail = "0000" if ID_TAIL != "0000" else "1111"
    pending = bind_code_request(
        user=user, customer_number=customer.number, id_last4=wrong_tail, ip_address=IP
    )
    assert pending.code_id is None
    assert not Notification.objects.exists()
    with pytest.raises(WrongCode):
        bind_complete(user=user, pending=pending, code="123456", ip_address=IP)
    assert not AccountBinding.objects.filter(user=user).exists()


def test_a_customers_phone_gets_no_more_than_its_hourly_share_of_codes_from_many_sign_ins(
    customer, make_portal_user, settings
):
    settings.PORTAL_CODE_MAX_PER_PHONE_PER_HOUR = 2
    results = []
    for n in range(3):
        user = make_portal_user(phone=f"1381234002{n}")
        results.append(
            bind_code_request(user=user, customer_number=customer.number, id_last4=ID_TAIL, ip_address=IP)
        )
    # Each of the three sign-ins is within its own limits; the target phone got two codes and
    # the third asker is answered as usual, with nothing sent.
    assert [r.code_id is not None for r in results] == [True, True, False]
    assert Notification.objects.filter(recipient="+8613812340001").count() == 2
