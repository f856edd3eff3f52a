"""Portal sign-up, password reset and account binding, all proven by a one-time SMS code.

Every flow has two steps. Step 1 takes what the person typed and *always* answers the same
("if the details match our records, a code has been sent"), whether or not a customer or
portal user matched: only a match sends a code. It returns a ``PendingCode`` that the view
keeps in the session (never in the page). Step 2 takes the code and finishes the job.

Who asked is the *requester*: the phone number typed in (sign-up, reset) or the signed-in
user's own number (adding an account). The limits count ``AuthAttempt`` rows per requester
and per client address, written for every request and every wrong code, matched or not, so
that a limit message tells nothing about the records either:

- sending: one code per requester per ``PORTAL_CODE_RESEND_SECONDS`` (60), at most
  ``PORTAL_CODE_MAX_PER_PHONE_PER_HOUR`` (5) per requester and
  ``PORTAL_CODE_MAX_PER_IP_PER_HOUR`` (20) per client address in an hour; a phone that got
  that many codes in the hour (from any requester) gets no more, silently;
- checking: a code is good for ``PORTAL_CODE_TTL_SECONDS`` (600), once, and dies after
  ``PORTAL_CODE_MAX_ATTEMPTS`` (5) wrong entries; ``PORTAL_CODE_FAILURE_LIMIT`` (5) wrong
  codes for one requester within ``PORTAL_CODE_LOCKOUT_SECONDS`` (900) lock that requester
  out of checking and sending until the oldest of them is that old.

A requester's ``CodeRequester`` row is locked while its limits are checked and its rows
written, so two processes cannot both slip under a limit. Codes are stored as an HMAC keyed
from ``SECRET_KEY`` (``salted_hmac``) and compared with ``hmac.compare_digest``. Neither codes
nor passwords are ever logged.
"""

from __future__ import annotations

import hmac
import math
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

import phonenumbers
import structlog
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import IntegrityError, transaction
from django.utils import timezone
from django.utils.crypto import salted_hmac
from django.utils.translation import gettext as _
from django.utils.translation import ngettext

from core.exceptions import Conflict, RateLimited, ValidationError
from core.models import NotificationChannel, NotificationTopic, StaffProfile
from core.services.notifications import notification_enqueue
from customers.models import Account, AccountStatus, Customer, CustomerStatus
from customers.validators import normalize_mobile
from portal.models import (
    AccountBinding,
    AuthAttempt,
    AuthAttemptKind,
    CodePurpose,
    CodeRequester,
    OneTimeCode,
    PortalProfile,
)

logger = structlog.get_logger(__name__)

CODE_DIGITS = 6
_HMAC_SALT = "kilowatt.portal.one_time_code"

DEFAULTS = {
    "PORTAL_CODE_TTL_SECONDS": 600,
    "PORTAL_CODE_MAX_ATTEMPTS": 5,
    "PORTAL_CODE_RESEND_SECONDS": 60,
    "PORTAL_CODE_MAX_PER_PHONE_PER_HOUR": 5,
    "PORTAL_CODE_MAX_PER_IP_PER_HOUR": 20,
    "PORTAL_CODE_FAILURE_LIMIT": 5,
    "PORTAL_CODE_LOCKOUT_SECONDS": 900,
}


def setting(name: str) -> int:
    return int(getattr(settings, name, DEFAULTS[name]))


# --- errors -------------------------------------------------------------------------------


class CodeLockedOut(RateLimited):
    """Too many wrong codes for this phone: no code is checked or sent until ``retry_at``."""

    code = "code_locked_out"


class WrongCode(ValidationError):
    """The code is wrong, expired, used or replaced (one message for all of them)."""

    code = "code_wrong"


# --- phones -------------------------------------------------------------------------------


def portal_phone(value: str) -> str:
    """A mobile number in the portal's form, the 11 national digits (``13812345678``): the
    sign-in name and ``PortalProfile.mobile_phone``. Accepts what people type (spaces, dashes,
    +86) and the E.164 numbers customer records hold. Django ValidationError if not a mobile."""
    e164 = normalize_mobile(value)
    return str(phonenumbers.parse(e164).national_number)


def _portal_phone_or_none(value: str) -> str | None:
    try:
        return portal_phone(value)
    except DjangoValidationError:
        return None


def masked_phone(phone: str) -> str:
    """138****5678: enough for a person to recognise their own number."""
    return phone[:3] + "****" + phone[-4:] if len(phone) >= 8 else phone


# --- codes --------------------------------------------------------------------------------


@dataclass(frozen=True)
class PendingCode:
    """What step 2 needs, kept in the session: who asked and the code sent (None when
    nothing matched, which step 2 treats exactly like a wrong code)."""

    purpose: str
    requester: str
    code_id: int | None

    def to_session(self) -> dict:
        return {"purpose": self.purpose, "requester": self.requester, "code_id": self.code_id}

    @classmethod
    def from_session(cls, data, purpose: str) -> PendingCode | None:
        if not isinstance(data, dict) or data.get("purpose") != purpose or not data.get("requester"):
            return None
        code_id = data.get("code_id")
        return cls(
            purpose=purpose, requester=str(data["requester"]), code_id=int(code_id) if code_id else None
        )


def _code_hash(purpose: str, phone: str, code: str) -> str:
    return salted_hmac(_HMAC_SALT, f"{purpose}:{phone}:{code}", algorithm="sha256").hexdigest()


def _new_code() -> str:
    return f"{secrets.randbelow(10**CODE_DIGITS):0{CODE_DIGITS}d}"


def _lock_requester(phone: str) -> None:
    try:
        with transaction.atomic():
            CodeRequester.objects.get_or_create(phone=phone)
    except IntegrityError:  # created meanwhile by a racing transaction
        pass
    CodeRequester.objects.select_for_update().get(phone=phone)


def _lockout_until(requester: str, now: datetime) -> datetime | None:
    """When the wrong-code lockout of ``requester`` ends, or None if it is not locked out."""
    limit = setting("PORTAL_CODE_FAILURE_LIMIT")
    window = timedelta(seconds=setting("PORTAL_CODE_LOCKOUT_SECONDS"))
    recent = list(
        AuthAttempt.objects.filter(
            kind=AuthAttemptKind.CODE_FAILURE, requester=requester, created_at__gt=now - window
        )
        .order_by("-created_at")
        .values_list("created_at", flat=True)[:limit]
    )
    if len(recent) < limit:
        return None
    return recent[-1] + window


def _minutes(delta: timedelta) -> int:
    return max(1, math.ceil(delta.total_seconds() / 60))


def _raise_if_locked_out(requester: str, now: datetime) -> None:
    until = _lockout_until(requester, now)
    if until is not None:
        minutes = _minutes(until - now)
        raise CodeLockedOut(
            ngettext(
                "Too many wrong codes for this phone. Try again in %(minutes)d minute.",
                "Too many wrong codes for this phone. Try again in %(minutes)d minutes.",
                minutes,
            )
            % {"minutes": minutes},
            extra={"retry_at": until},
        )


def _check_send_limits(*, requester: str, ip_address: str | None, now: datetime) -> None:
    _raise_if_locked_out(requester, now)
    requests = AuthAttempt.objects.filter(kind=AuthAttemptKind.CODE_REQUEST)
    resend = timedelta(seconds=setting("PORTAL_CODE_RESEND_SECONDS"))
    last = (
        requests.filter(requester=requester, created_at__gt=now - resend)
        .order_by("-created_at")
        .values_list("created_at", flat=True)
        .first()
    )
    if last is not None:
        seconds = max(1, math.ceil((last + resend - now).total_seconds()))
        raise RateLimited(
            ngettext(
                "A code was just requested for this phone. Wait %(seconds)d second before asking again.",
                "A code was just requested for this phone. Wait %(seconds)d seconds before asking again.",
                seconds,
            )
            % {"seconds": seconds}
        )
    hour_ago = now - timedelta(hours=1)
    per_phone = setting("PORTAL_CODE_MAX_PER_PHONE_PER_HOUR")
    recent = list(
        requests.filter(requester=requester, created_at__gt=hour_ago)
        .order_by("-created_at")
        .values_list("created_at", flat=True)[:per_phone]
    )
    if len(recent) >= per_phone:
        minutes = _minutes(recent[-1] + timedelta(hours=1) - now)
        raise RateLimited(
            ngettext(
                "Too many codes were requested for this phone. Try again in %(minutes)d minute.",
                "Too many codes were requested for this phone. Try again in %(minutes)d minutes.",
                minutes,
            )
            % {"minutes": minutes}
        )
    if ip_address:
        per_ip = setting("PORTAL_CODE_MAX_PER_IP_PER_HOUR")
        if requests.filter(ip_address=ip_address, created_at__gt=hour_ago).count() >= per_ip:
            raise RateLimited(_("Too many codes were requested from your network. Try again in an hour."))


def _target_saturated(phone: str, now: datetime) -> bool:
    """A phone that received its hourly share of codes (from any requester) gets no more."""
    sent = OneTimeCode.objects.filter(phone=phone, created_at__gt=now - timedelta(hours=1))
    return sent.count() >= setting("PORTAL_CODE_MAX_PER_PHONE_PER_HOUR")


def _sms_body(purpose: str, code: str, customer: Customer | None) -> str:
    params = {
        "code": code,
        "minutes": setting("PORTAL_CODE_TTL_SECONDS") // 60,
        "number": customer.number if customer else "",
    }
    if purpose == CodePurpose.SIGNUP:
        text = _(
            "Kilowatt customer service: your sign-up code is %(code)s, valid for %(minutes)d minutes. "
            "Never tell it to anyone, including our staff. If you did not ask for it, ignore this message."
        )
    elif purpose == CodePurpose.RESET:
        text = _(
            "Kilowatt customer service: your password reset code is %(code)s, valid for %(minutes)d minutes. "
            "Never tell it to anyone, including our staff. If you did not ask for it, ignore this message."
        )
    else:
        text = _(
            "Kilowatt customer service: someone asked to add customer %(number)s to their online sign-in. "
            "The code is %(code)s, valid for %(minutes)d minutes. Give it only to someone you trust "
            "with your electricity account; never to our staff. If you did not ask for it, ignore "
            "this message."
        )
    return text % params


def _code_request(
    *,
    purpose: str,
    requester: str,
    ip_address: str | None,
    target_phone: str | None,
    customer: Customer | None = None,
    user=None,
) -> PendingCode:
    """Check the limits for ``requester``, record the request and, if ``target_phone`` (a
    match), send a new code there. RateLimited / CodeLockedOut when a limit is hit."""
    now = timezone.now()
    code_id = None
    with transaction.atomic():
        _lock_requester(requester)
        _check_send_limits(requester=requester, ip_address=ip_address, now=now)
        AuthAttempt.objects.create(
            kind=AuthAttemptKind.CODE_REQUEST,
            purpose=purpose,
            requester=requester,
            ip_address=ip_address,
            created_at=now,
        )
        # A new code replaces the requester's earlier ones for the same purpose.
        OneTimeCode.objects.filter(
            purpose=purpose, requester=requester, used_at__isnull=True, revoked_at__isnull=True
        ).update(revoked_at=now)
        if target_phone is not None:
            if _target_saturated(target_phone, now):
                logger.warning("portal_code_not_sent_phone_saturated", purpose=purpose)
            else:
                code = _new_code()
                otc = OneTimeCode.objects.create(
                    purpose=purpose,
                    requester=requester,
                    phone=target_phone,
                    customer=customer,
                    user=user,
                    code_hash=_code_hash(purpose, target_phone, code),
                    created_at=now,
                    expires_at=now + timedelta(seconds=setting("PORTAL_CODE_TTL_SECONDS")),
                )
                notification_enqueue(
                    channel=NotificationChannel.SMS,
                    topic=NotificationTopic.ONE_TIME_CODE,
                    recipient=target_phone,
                    body=_sms_body(purpose, code, customer),
                    customer_id=customer.pk if customer else None,
                )
                code_id = otc.pk
    logger.info(
        "portal_code_requested",
        purpose=purpose,
        matched=target_phone is not None,
        sent=code_id is not None,
        customer=customer.pk if customer else None,
        user=user.pk if user else None,
    )
    return PendingCode(purpose=purpose, requester=requester, code_id=code_id)


def _code_consume(
    *, pending: PendingCode, code: str, ip_address: str | None, now: datetime
) -> OneTimeCode | None:
    """Inside the caller's transaction, with the requester locked: the code row, marked used,
    if ``code`` is right; otherwise None, with the wrong entry recorded (the caller must let
    the transaction commit and then raise)."""
    otc = None
    if pending.code_id is not None:
        otc = OneTimeCode.objects.select_for_update().filter(pk=pending.code_id).first()
    good = (
        otc is not None
        and otc.purpose == pending.purpose
        and otc.requester == pending.requester
        and otc.used_at is None
        and otc.revoked_at is None
        and otc.expires_at > now
        and otc.failed_attempts < setting("PORTAL_CODE_MAX_ATTEMPTS")
    )
    offered = "".join(ch for ch in (code or "") if not ch.isspace())
    # Hash and compare even without a row, so that case takes no less time.
    phone = otc.phone if otc is not None else pending.requester
    expected = otc.code_hash if otc is not None else "0" * 64
    matches = hmac.compare_digest(_code_hash(pending.purpose, phone, offered), expected)
    if good and matches:
        otc.used_at = now
        otc.save(update_fields=["used_at"])
        # A proven phone starts afresh.
        AuthAttempt.objects.filter(kind=AuthAttemptKind.CODE_FAILURE, requester=pending.requester).delete()
        return otc
    if otc is not None and otc.used_at is None and otc.revoked_at is None:
        otc.failed_attempts += 1
        fields = ["failed_attempts"]
        if otc.failed_attempts >= setting("PORTAL_CODE_MAX_ATTEMPTS"):
            otc.revoked_at = now
            fields.append("revoked_at")
        otc.save(update_fields=fields)
    AuthAttempt.objects.create(
        kind=AuthAttemptKind.CODE_FAILURE,
        purpose=pending.purpose,
        requester=pending.requester,
        ip_address=ip_address,
        created_at=now,
    )
    return None


def _wrong_code_error(requester: str, now: datetime) -> Exception:
    try:
        _raise_if_locked_out(requester, now)
    except CodeLockedOut as exc:
        return exc
    window = timedelta(seconds=setting("PORTAL_CODE_LOCKOUT_SECONDS"))
    failures = AuthAttempt.objects.filter(
        kind=AuthAttemptKind.CODE_FAILURE, requester=requester, created_at__gt=now - window
    ).count()
    left = max(setting("PORTAL_CODE_FAILURE_LIMIT") - failures, 1)
    message = ngettext(
        "The code is wrong or has expired. Check the SMS, or ask for a new code. %(left)d try left.",
        "The code is wrong or has expired. Check the SMS, or ask for a new code. %(left)d tries left.",
        left,
    ) % {"left": left}
    return WrongCode(message, field_errors={"code": [message]})


def _verified(pending: PendingCode, code: str, ip_address: str | None, finish):
    """Check ``code`` for ``pending`` and, if right, run ``finish(otc)`` in the same
    transaction (so a failure in ``finish`` leaves the code unused). Raises CodeLockedOut,
    WrongCode, or what ``finish`` raises."""
    now = timezone.now()
    with transaction.atomic():
        _lock_requester(pending.requester)
        _raise_if_locked_out(pending.requester, now)
        otc = _code_consume(pending=pending, code=code, ip_address=ip_address, now=now)
        if otc is not None:
            return finish(otc)
    # The wrong entry is committed; only now tell the caller.
    logger.info("portal_code_wrong", purpose=pending.purpose)
    raise _wrong_code_error(pending.requester, now)


# --- matching customers -------------------------------------------------------------------


def _bindable_accounts(customer: Customer):
    return Account.objects.filter(customer=customer).exclude(status=AccountStatus.CLOSED).order_by("number")


def _id_tail_matches(customer: Customer, id_last4: str) -> bool:
    """The last four characters of the ID document, as the masked form keeps them (resident
    IDs end in a digit or X; compared without regard to case)."""
    tail = (customer.id_number_masked or "")[-4:].upper()
    offered = (id_last4 or "").strip().upper()
    if len(tail) != 4 or "*" in tail:  # the document is too short to show its tail
        return False
    return hmac.compare_digest(tail.encode(), offered.encode())


def _matching_customer(customer_number: str, id_last4: str) -> Customer | None:
    customer = (
        Customer.objects.filter(number=(customer_number or "").strip())
        .exclude(status=CustomerStatus.CLOSED)
        .first()
    )
    if customer is None or not _id_tail_matches(customer, id_last4):
        return None
    if not _bindable_accounts(customer).exists():
        return None
    return customer


def accounts_bind(*, user, customer: Customer) -> list[Account]:
    """Bind every account of ``customer`` that is not closed to portal user ``user``
    (idempotent: accounts already bound stay as they are). Returns the accounts."""
    accounts = list(_bindable_accounts(customer))
    AccountBinding.objects.bulk_create(
        [AccountBinding(user=user, account=account) for account in accounts], ignore_conflicts=True
    )
    logger.info(
        "portal_accounts_bound",
        user=user.pk,
        customer=customer.pk,
        accounts=[account.number for account in accounts],
    )
    return accounts


@transaction.atomic
def portal_user_create(*, phone: str, password: str):
    """A portal sign-in for ``phone`` (portal form, already proven): a Django user named by the
    phone with ``password``, and its PortalProfile. Conflict if the name is taken (by a staff
    user or another portal user)."""
    User = get_user_model()
    if (
        User.objects.filter(username=phone).exists()
        or PortalProfile.objects.filter(mobile_phone=phone).exists()
    ):
        raise Conflict(
            _("This phone number cannot be used for customer service online. Please visit a service hall.")
        )
    user = User.objects.create_user(username=phone, password=password)
    PortalProfile.objects.create(user=user, mobile_phone=phone)
    logger.info("portal_user_created", user=user.pk)
    return user


# --- sign-up ------------------------------------------------------------------------------


@dataclass(frozen=True)
class SignupResult:
    user: object
    created: bool  # False: the phone already had a portal sign-in; accounts were added to it
    accounts: list


def signup_code_request(
    *, customer_number: str, id_last4: str, phone: str, ip_address: str | None
) -> PendingCode:
    """Step 1 of sign-up. ``phone`` must already be a valid mobile number in portal form
    (``portal_phone``). Sends a code only if the customer exists, is not closed, has an account
    that is not closed, the ID tail matches and ``phone`` is the customer's registered mobile."""
    customer = _matching_customer(customer_number, id_last4)
    target = None
    if customer is not None:
        registered = _portal_phone_or_none(customer.mobile_phone)
        if registered is not None and hmac.compare_digest(registered, phone):
            target = registered
        else:
            customer = None
    return _code_request(
        purpose=CodePurpose.SIGNUP,
        requester=phone,
        ip_address=ip_address,
        target_phone=target,
        customer=customer,
    )


def signup_complete(
    *, pending: PendingCode, code: str, password: str, ip_address: str | None
) -> SignupResult:
    """Step 2 of sign-up: with the right code, create the portal user (sign-in name = the
    phone, ``password`` already validated by the form) and bind the customer's accounts. If
    the phone already has a portal sign-in, bind to it and leave its password alone.
    CodeLockedOut, WrongCode, or Conflict if the phone is a staff sign-in name."""

    def finish(otc: OneTimeCode) -> SignupResult:
        profile = PortalProfile.objects.select_related("user").filter(mobile_phone=otc.phone).first()
        if profile is not None:
            user, created = profile.user, False
        else:
            user, created = portal_user_create(phone=otc.phone, password=password), True
        accounts = accounts_bind(user=user, customer=otc.customer)
        logger.info("portal_signup", user=user.pk, customer=otc.customer_id, created=created)
        return SignupResult(user=user, created=created, accounts=accounts)

    if pending.purpose != CodePurpose.SIGNUP:
        raise ValueError("not a sign-up code")
    return _verified(pending, code, ip_address, finish)


# --- password reset -----------------------------------------------------------------------


def reset_code_request(*, phone: str, ip_address: str | None) -> PendingCode:
    """Step 1 of a password reset: a code goes to ``phone`` only if a portal user has it."""
    profile = (
        PortalProfile.objects.select_related("user").filter(mobile_phone=phone, user__is_active=True).first()
    )
    if profile is not None and StaffProfile.objects.filter(user_id=profile.user_id).exists():
        profile = None
    return _code_request(
        purpose=CodePurpose.RESET,
        requester=phone,
        ip_address=ip_address,
        target_phone=profile.mobile_phone if profile else None,
        user=profile.user if profile else None,
    )


def reset_complete(*, pending: PendingCode, code: str, password: str, ip_address: str | None):
    """Step 2 of a password reset: with the right code, set the new password (validated by the
    form) and clear the sign-in lockout of that user name. Returns the user."""

    def finish(otc: OneTimeCode):
        user = get_user_model().objects.select_for_update().get(pk=otc.user_id)
        user.set_password(password)
        user.save(update_fields=["password"])
        logger.info("portal_password_reset", user=user.pk)
        return user

    if pending.purpose != CodePurpose.RESET:
        raise ValueError("not a reset code")
    user = _verified(pending, code, ip_address, finish)
    from axes.utils import reset as axes_reset

    axes_reset(username=user.get_username())
    return user


# --- adding another customer's accounts ---------------------------------------------------


def _user_phone(user) -> str:
    return PortalProfile.objects.only("mobile_phone").get(user_id=user.pk).mobile_phone


def bind_code_request(*, user, customer_number: str, id_last4: str, ip_address: str | None) -> PendingCode:
    """Step 1 of adding accounts: a code goes to the matching customer's registered phone."""
    customer = _matching_customer(customer_number, id_last4)
    target = _portal_phone_or_none(customer.mobile_phone) if customer is not None else None
    if target is None:
        customer = None
    return _code_request(
        purpose=CodePurpose.BIND,
        requester=_user_phone(user),
        ip_address=ip_address,
        target_phone=target,
        customer=customer,
        user=user,
    )


def bind_complete(*, user, pending: PendingCode, code: str, ip_address: str | None) -> list[Account]:
    """Step 2 of adding accounts: with the right code, bind the customer's accounts to
    ``user``. Returns the accounts."""

    def finish(otc: OneTimeCode) -> list[Account]:
        if otc.user_id != user.pk:  # a code asked for by another sign-in
            raise WrongCode(_("The code is wrong or has expired. Check the SMS, or ask for a new code."))
        return accounts_bind(user=user, customer=otc.customer)

    if pending.purpose != CodePurpose.BIND or pending.requester != _user_phone(user):
        raise ValueError("not this user's binding code")
    return _verified(pending, code, ip_address, finish)


# --- housekeeping -------------------------------------------------------------------------


def auth_records_purge(*, older_than: timedelta = timedelta(days=2)) -> int:
    """Delete codes and attempts older than every limit's window; returns rows deleted.
    Meant for a daily periodic task."""
    cutoff = timezone.now() - older_than
    codes, _ = OneTimeCode.objects.filter(created_at__lt=cutoff).delete()
    attempts, _ = AuthAttempt.objects.filter(created_at__lt=cutoff).delete()
    return codes + attempts
