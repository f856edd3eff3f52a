"""Machine clients of the payment API: self-service terminals and the phone system (IVR).

Credentials: a device has a code and a secret, sent as ``Authorization: Device <code>:<secret>``.
The secret is 32 random bytes (``secrets.token_urlsafe``), shown once when the device is
created (``manage.py payment_device_create``) and stored only as a salted SHA-256. Why not
Django's slow password hashers: they defend guessable passwords, while a 256-bit random
secret cannot be searched for from its hash; a slow hash would cost every API call (terminals
and the IVR authenticate each request) hundreds of milliseconds for nothing.

Failed attempts are counted in the cache (Redis in production) per device code and per
client address; after ``DEVICE_AUTH_FAILURE_LIMIT`` (10) failures within the window (15
minutes, counted from the first failure) further attempts get 429 before the secret is
looked at, so guesses made while locked out learn nothing. A flood of bad secrets for one
code therefore also locks out the real device for the window: the price of stopping an
online search, and visible in the logs (``device_auth_failed``).

The device's own payments post through ``payment_post`` with ``external_id =
"<device code>:<its transaction id>"``, so a terminal that retries a transaction (lost reply,
reboot) gets the first payment back.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal

import structlog
from django.conf import settings
from django.core.cache import cache
from django.db import IntegrityError, transaction
from django.utils import timezone
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy

from billing.models import CostControlState
from billing.selectors import account_billing_summary
from core.audit import audit_context
from core.exceptions import (
    ApplicationError,
    Conflict,
    NotFound,
    PermissionDenied,
    RateLimited,
    ValidationError,
)
from core.models import OrgUnit
from customers.models import Account, Customer
from payments.models import Channel, Method, TerminalDevice
from payments.services.online import Restore, RestoreStatus, payment_restore_status
from payments.services.posting import PostResult, payment_post
from payments.services.vouchers import voucher_redeem

logger = structlog.get_logger(__name__)

DEFAULT_FAILURE_LIMIT = 10
DEFAULT_FAILURE_WINDOW = timedelta(minutes=15)
_HASH_SCHEME = "sha256"
_CODE = re.compile(r"^[0-9A-Za-z_\-]{1,32}$")
_TXN = re.compile(r"^[0-9A-Za-z._\-]{1,64}$")
# Compared against when the code is unknown, so that the answer takes the same time.
_DUMMY_HASH = f"{_HASH_SCHEME}$0000000000000000${'0' * 64}"


class DeviceAuthFailed(ApplicationError):
    status_code = 401
    code = "device_auth_failed"
    default_message = gettext_lazy("Device code or secret is wrong.")


# --- credentials -------------------------------------------------------------------------


def device_secret_hash(secret: str) -> str:
    salt = secrets.token_hex(8)
    return f"{_HASH_SCHEME}${salt}${hashlib.sha256(f'{salt}:{secret}'.encode()).hexdigest()}"


def device_secret_matches(secret: str, stored: str) -> bool:
    try:
        scheme, salt, digest = stored.split("$")
    except ValueError:
        return False
    computed = hashlib.sha256(f"{salt}:{secret}".encode()).hexdigest()
    return scheme == _HASH_SCHEME and hmac.compare_digest(computed, digest)


def device_create(*, code: str, kind: str, hall_code: str) -> tuple[TerminalDevice, str]:
    """A new device at hall ``hall_code``; returns it and its secret (the only time the
    secret exists in clear)."""
    code = (code or "").strip()
    if not _CODE.match(code):
        raise ValidationError(
            _("A device code is 1 to 32 letters, digits, _ or -."), field_errors={"code": [_("Invalid.")]}
        )
    if kind not in TerminalDevice.Kind.values:
        raise ValidationError(
            _("The kind is one of: %(kinds)s.") % {"kinds": ", ".join(TerminalDevice.Kind.values)},
            field_errors={"kind": [_("Invalid.")]},
        )
    hall = OrgUnit.objects.filter(code=hall_code).first()
    if hall is None:
        raise NotFound(_("No org unit with code %(code)s.") % {"code": hall_code}, code="unknown_hall")
    secret = secrets.token_urlsafe(32)
    try:
        with transaction.atomic():
            device = TerminalDevice.objects.create(
                code=code, kind=kind, hall=hall, secret_hash=device_secret_hash(secret)
            )
    except IntegrityError:
        raise Conflict(_("Device %(code)s already exists.") % {"code": code}, code="device_exists") from None
    logger.info("payment_device_created", device=code, kind=kind, hall=hall.code)
    return device, secret


def device_secret_reset(*, code: str) -> str:
    """A new secret for device ``code`` (the old one stops working); returned once."""
    secret = secrets.token_urlsafe(32)
    updated = TerminalDevice.objects.filter(code=code).update(secret_hash=device_secret_hash(secret))
    device_credentials_forget()
    if not updated:
        raise NotFound(_("No device %(code)s.") % {"code": code})
    logger.info("payment_device_secret_reset", device=code)
    return secret


def _limit() -> int:
    return int(getattr(settings, "DEVICE_AUTH_FAILURE_LIMIT", DEFAULT_FAILURE_LIMIT))


def _window() -> int:
    return int(getattr(settings, "DEVICE_AUTH_WINDOW_SECONDS", DEFAULT_FAILURE_WINDOW.total_seconds()))


def _keys(code: str, client_addr: str) -> list[str]:
    def key(kind: str, value: str) -> str:
        return f"payments:device-auth:{kind}:{hashlib.sha256(value.encode()).hexdigest()[:32]}"

    keys = [key("code", code)]
    if client_addr:
        keys.append(key("addr", client_addr))
    return keys


def _count_failure(keys: list[str]) -> None:
    for key in keys:
        cache.add(key, 0, timeout=_window())  # the window starts at the first failure
        try:
            cache.incr(key)
        except ValueError:  # expired between add and incr
            cache.set(key, 1, timeout=_window())


def device_authenticate(*, code: str, secret: str, client_addr: str = "") -> TerminalDevice:
    """The active device with these credentials; DeviceAuthFailed (401) or, after too many
    failures for this code or address, RateLimited (429)."""
    code = (code or "")[:64]
    keys = _keys(code, client_addr or "")
    counts = cache.get_many(keys)
    if any(int(n) >= _limit() for n in counts.values()):
        logger.warning("device_auth_locked", device=code, client=client_addr)
        raise RateLimited(
            _("Too many failed sign-ins for this device or address. Try again later."),
            code="device_locked",
            extra={"retry_after": _window()},
        )
    verified = _verified_key(code, secret or "")
    cached = _VERIFIED.get(verified)
    if cached is not None and cached[0] > time.monotonic():
        return cached[1]
    device = TerminalDevice.objects.select_related("hall").filter(code=code).first() if code else None
    ok = device_secret_matches(secret or "", device.secret_hash if device else _DUMMY_HASH)
    if device is None or not ok or not device.active:
        _VERIFIED.pop(verified, None)
        _count_failure(keys)
        logger.warning("device_auth_failed", device=code, client=client_addr, known=device is not None)
        raise DeviceAuthFailed()
    ttl = _verified_ttl()
    if ttl > 0:
        if len(_VERIFIED) >= _VERIFIED_MAX:
            _VERIFIED.clear()
        _VERIFIED[verified] = (time.monotonic() + ttl, device)
    return device


# Credentials verified lately, per process: {sha256(code, secret): (good until, device)}.
# A device signs every request, and the look-up plus hash is a database query per payment;
# a credential verified here is taken as good for DEVICE_AUTH_CACHE_SECONDS (30 s) without
# either. The lockout is still checked first on every request (a locked-out code gets 429
# whatever it sends), a failure drops the entry, and a secret reset in this process clears
# them all; elsewhere a reset or deactivated device's old secret keeps working for at most
# that long. Only a digest of the secret is kept, never the secret.
_VERIFIED: dict[bytes, tuple[float, TerminalDevice]] = {}
_VERIFIED_MAX = 1000
DEFAULT_VERIFIED_SECONDS = 30


def _verified_key(code: str, secret: str) -> bytes:
    return hashlib.sha256(f"{code}\0{secret}".encode()).digest()


def _verified_ttl() -> float:
    return float(getattr(settings, "DEVICE_AUTH_CACHE_SECONDS", DEFAULT_VERIFIED_SECONDS))


def device_credentials_forget() -> None:
    """Forget the credentials this process verified (the next request of every device is
    checked against the database again)."""
    _VERIFIED.clear()


# --- what a device may read ----------------------------------------------------------------


def mask_name(name: str) -> str:
    """A name as shown to whoever stands at a terminal or calls: the first character, the
    rest as stars (张三 → 张*, 欧阳娜娜 → 欧***)."""
    name = (name or "").strip()
    if not name:
        return ""
    return name[0] + "*" * max(1, len(name) - 1)


@dataclass(frozen=True)
class AccountInfo:
    account_number: str
    customer_name: str  # masked
    status: str
    balance: Decimal
    available_balance: Decimal
    state: str
    state_label: str
    close_threshold: Decimal | None


def _account_info(account: Account) -> AccountInfo:
    summary = account_billing_summary(account=account)
    return AccountInfo(
        account_number=account.number,
        customer_name=mask_name(account.customer.name),
        status=account.status,
        balance=summary.state.balance,
        available_balance=summary.available_balance,
        state=summary.state.state,
        state_label=str(summary.state.get_state_display()),
        close_threshold=summary.policy.close_threshold if summary.policy else None,
    )


def device_account_info(*, account_number: str) -> AccountInfo:
    account = Account.objects.select_related("customer").filter(number=(account_number or "").strip()).first()
    if account is None:
        raise NotFound(
            _("No account with number %(number)s.") % {"number": account_number or "—"},
            code="unknown_account",
        )
    return _account_info(account)


def ivr_customer_accounts(*, customer_number: str) -> tuple[Customer, list[AccountInfo]]:
    """The customer's accounts with balance and state, for the phone system."""
    customer = Customer.objects.filter(number=(customer_number or "").strip()).first()
    if customer is None:
        raise NotFound(
            _("No customer with number %(number)s.") % {"number": customer_number or "—"},
            code="unknown_customer",
        )
    accounts = Account.objects.select_related("customer").filter(customer=customer).order_by("number")
    return customer, [_account_info(account) for account in accounts]


# --- payments by devices -------------------------------------------------------------------


@dataclass(frozen=True)
class DevicePayment:
    result: PostResult
    account: AccountInfo
    restore: Restore


def _require_kind(device: TerminalDevice, kind: str) -> None:
    if device.kind != kind:
        raise PermissionDenied(_("This device may not use this service."), code="wrong_device_kind")


def _external_id(device: TerminalDevice, txn_id: str, field: str) -> str:
    txn_id = (txn_id or "").strip()
    external_id = f"{device.code}:{txn_id}"
    if not _TXN.match(txn_id) or len(external_id) > 64:
        raise ValidationError(
            _("A transaction id is 1 to %(n)s letters, digits or . _ -") % {"n": 63 - len(device.code)},
            field_errors={field: [_("Invalid transaction id.")]},
        )
    return external_id


def _device_payment(
    *, device, channel, external_id, account_number, amount, method, details
) -> DevicePayment:
    with audit_context(action=f"{channel}_payment", device=device.code, hall=device.hall_id):
        result = payment_post(
            channel=channel,
            external_id=external_id,
            account_number=account_number,
            amount=amount,
            method=method,
            received_at=timezone.now(),
            hall_id=device.hall_id,
            device_id=device.pk,
            details=details,
        )
    return _device_reply(result)


def _device_reply(result: PostResult) -> DevicePayment:
    """The reply to a device: the payment, the account after it and whether power comes
    back. From the figures locked while posting (no further query) when there are any."""
    payment, credit = result.payment, result.credit
    if credit is None:
        return DevicePayment(
            result=result,
            account=_account_info(Account.objects.select_related("customer").get(pk=payment.account_id)),
            restore=payment_restore_status(payment),
        )
    info = AccountInfo(
        account_number=credit.account.number,
        customer_name=mask_name(credit.customer.name),
        status=credit.account.status,
        balance=credit.state.balance,
        available_balance=credit.available_balance,
        state=credit.state.state,
        state_label=str(credit.state.get_state_display()),
        close_threshold=credit.policy.close_threshold if credit.policy else None,
    )
    if payment.restore_command_id:  # the close this payment caused (loaded with a new one)
        restore = payment_restore_status(payment)
    elif credit.state.state == CostControlState.TRIPPED:
        restore = Restore(
            RestoreStatus.STILL_OFF,
            _("The balance is still below the level at which power is restored; please pay more."),
        )
    else:
        restore = Restore(RestoreStatus.NOT_NEEDED, _("Power is on."))
    return DevicePayment(result=result, account=info, restore=restore)


def terminal_payment_post(
    *, device: TerminalDevice, txn_id: str, account_number: str, amount, method: str
) -> DevicePayment:
    """Cash or card paid at a self-service terminal; once per (device, txn_id)."""
    _require_kind(device, TerminalDevice.Kind.TERMINAL)
    if method not in (Method.CASH, Method.CARD):
        raise ValidationError(_("A terminal takes cash or card."), field_errors={"method": [_("Invalid.")]})
    return _device_payment(
        device=device,
        channel=Channel.TERMINAL,
        external_id=_external_id(device, txn_id, "txn_id"),
        account_number=account_number,
        amount=amount,
        method=method,
        details={"txn_id": txn_id},
    )


def ivr_payment_post(*, device: TerminalDevice, call_id: str, account_number: str, amount) -> DevicePayment:
    """A bank-card payment taken by the phone system; once per (device, call_id)."""
    _require_kind(device, TerminalDevice.Kind.IVR)
    return _device_payment(
        device=device,
        channel=Channel.IVR,
        external_id=_external_id(device, call_id, "call_id"),
        account_number=account_number,
        amount=amount,
        method=Method.CARD,
        details={"call_id": call_id},
    )


def ivr_voucher_redeem(
    *, device: TerminalDevice, serial: str, pin: str, account_number: str, caller: str
) -> DevicePayment:
    """A recharge voucher redeemed by phone. ``caller`` (the calling number) keys the voucher
    lockout, so one caller's guesses are limited whatever accounts they name. Not inside a
    transaction: a failed attempt must stay recorded although the caller gets an error."""
    _require_kind(device, TerminalDevice.Kind.IVR)
    caller = re.sub(r"[\s\-]", "", caller or "")
    if not re.match(r"^\+?[0-9]{3,20}$", caller):
        raise ValidationError(
            _("The caller's number is needed."), field_errors={"caller": [_("Digits of the calling number.")]}
        )
    with audit_context(action="ivr_voucher_redeem", device=device.code, caller=caller):
        result = voucher_redeem(
            serial=serial,
            pin=pin,
            account_number=account_number,
            client_key=f"ivr:{caller}",
            channel_context={"device_id": device.pk, "hall_id": device.hall_id, "caller": caller},
        )
    return _device_reply(result)
