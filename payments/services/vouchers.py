"""Recharge vouchers (充值券): batches issued with serial numbers and secret PINs, sold at the
counter, redeemed once at the counter, in the portal or by phone.

Serial numbers are digits only (they are typed on phone keypads): a batch number, a sequence
number within the batch and a Luhn check digit, so that a mistyped serial is refused before
any lookup (and without counting as a failed attempt).

PINs are 16 random digits from ``secrets`` and are shown exactly once, when the batch is
issued. Only a keyed hash is stored: HMAC-SHA256 over a per-voucher random salt, the serial
and the PIN, keyed with a key derived from ``VOUCHER_PIN_KEY`` (default: ``SECRET_KEY``).
Why not Django's password hashers (PBKDF2/Argon2): those are slow on purpose because people
choose guessable passwords; a PIN here is ~53 bits of randomness, so slowness buys little,
while issuing 10,000 vouchers with PBKDF2 would take over an hour. The secret key makes a
leaked database alone useless for an offline search, the salt makes equal PINs hash
differently, online guessing is stopped by the lockout below, and verification compares
with ``hmac.compare_digest`` (constant time). Rotating the key (``SECRET_KEY`` without
``VOUCHER_PIN_KEY``) is survived through ``SECRET_KEY_FALLBACKS``.

Redemption posts through ``payment_post(channel="voucher", external_id=<serial>)``: the
database's unique (channel, external_id) means a voucher credits an account at most once
even if everything else failed. Failed attempts are stored (``VoucherFailure``) and rate
limited per client (who tries) and per serial; the lockout is checked before the PIN is
looked at, so guesses made while locked out learn nothing. An unknown serial and a wrong
PIN get the same message and count the same way, so neither the message nor the lockout
tells whether a serial exists; a voucher's state (unsold, void, expired, redeemed) is told
only to someone who has just given its right PIN.

Callers must not wrap ``voucher_redeem`` in their own transaction: a failed attempt is
committed before the error is raised, and an outer rollback would erase it.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import re
import secrets
from dataclasses import dataclass
from datetime import date, datetime, timedelta

import structlog
from django.conf import settings
from django.db import connection, transaction
from django.db.models import Count, Min
from django.utils import timezone
from django.utils.translation import gettext as _

from core.audit import audit_context
from core.exceptions import Conflict, NotFound, PermissionDenied, RateLimited, ValidationError
from core.permissions import Actor, Cap
from payments.models import Channel, Method, PaymentStatus, Voucher, VoucherBatch, VoucherFailure
from payments.services.posting import PostResult, payment_amount, payment_post

logger = structlog.get_logger(__name__)

PIN_DIGITS = 16
BATCH_DIGITS = 6
SEQUENCE_DIGITS = 5
DEFAULT_MAX_QUANTITY = 10_000
DEFAULT_CLIENT_FAILURES = 5
DEFAULT_SERIAL_FAILURES = 5
DEFAULT_WINDOW_MINUTES = 15
_HASH_SCHEME = "hmac-sha256"
_KEY_PURPOSE = b"kilowatt.payments.voucher-pin.v1"


class FailureReason:
    UNKNOWN_SERIAL = "unknown_serial"
    WRONG_PIN = "wrong_pin"
    NOT_SOLD = "not_sold"
    VOID = "void"
    EXPIRED = "expired"
    ALREADY_REDEEMED = "already_redeemed"


# Reasons that count against a serial: guesses at its PIN. The unknown-serial ones count too,
# so that the serial lockout behaves the same whether the serial exists or not.
_GUESSES = (FailureReason.UNKNOWN_SERIAL, FailureReason.WRONG_PIN)


# --- serial numbers and PINs ---------------------------------------------------------------


def luhn_check_digit(digits: str) -> str:
    """The Luhn (mod 10) check digit of a string of digits."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2 == 0:  # doubled: every second digit counting from the check digit's neighbour
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return str((10 - total % 10) % 10)


def luhn_valid(number: str) -> bool:
    return len(number) >= 2 and number.isdigit() and luhn_check_digit(number[:-1]) == number[-1]


def serial_normalise(serial) -> str:
    """Digits of a serial as typed (spaces and dashes dropped); ValidationError if it cannot be
    a serial (wrong characters or length, bad check digit)."""
    value = re.sub(r"[\s\-]", "", str(serial or ""))
    if not value.isdigit() or not (BATCH_DIGITS + SEQUENCE_DIGITS + 1 <= len(value) <= 20):
        raise ValidationError(
            _("A voucher serial number is %(n)s digits.") % {"n": BATCH_DIGITS + SEQUENCE_DIGITS + 1},
            field_errors={"serial": [_("Not a voucher serial number.")]},
            code="bad_serial",
        )
    if not luhn_valid(value):
        raise ValidationError(
            _("The serial number %(serial)s is mistyped (its check digit does not match).")
            % {"serial": value},
            field_errors={"serial": [_("Check the serial number: a digit is wrong or swapped.")]},
            code="bad_serial",
        )
    return value


def _serial(batch_number: int, sequence: int) -> str:
    body = f"{batch_number:0{BATCH_DIGITS}d}{sequence:0{SEQUENCE_DIGITS}d}"
    return body + luhn_check_digit(body)


def _pin_keys() -> list[bytes]:
    """The HMAC keys to try: the current one first, then those of rotated-out secret keys."""
    explicit = getattr(settings, "VOUCHER_PIN_KEY", "")
    if explicit:
        keys = [explicit]
    else:
        keys = [settings.SECRET_KEY, *getattr(settings, "SECRET_KEY_FALLBACKS", [])]
    return [hmac.new(k.encode(), _KEY_PURPOSE, hashlib.sha256).digest() for k in keys if k]


def _pin_digest(key: bytes, salt: str, serial: str, pin: str) -> str:
    return hmac.new(key, f"{salt}:{serial}:{pin}".encode(), hashlib.sha256).hexdigest()


def pin_hash(serial: str, pin: str, *, key: bytes | None = None) -> str:
    salt = secrets.token_hex(8)
    key = key or _pin_keys()[0]
    return f"{_HASH_SCHEME}${salt}${_pin_digest(key, salt, serial, pin)}"


def pin_matches(serial: str, pin: str, stored: str) -> bool:
    try:
        scheme, salt, digest = stored.split("$")
    except ValueError:
        return False
    if scheme != _HASH_SCHEME:
        return False
    ok = False
    for key in _pin_keys():
        ok |= hmac.compare_digest(_pin_digest(key, salt, serial, pin), digest)
    return ok


def _new_pin() -> str:
    return f"{secrets.randbelow(10**PIN_DIGITS):0{PIN_DIGITS}d}"


# --- issue, sell, void ---------------------------------------------------------------------


def _require(actor: Actor | None, cap: Cap, message: str) -> Actor:
    if actor is None or not actor.has(cap):
        raise PermissionDenied(message)
    return actor


def _setting(name: str, default: int) -> int:
    return int(getattr(settings, name, default))


def voucher_batch_issue(
    *, actor: Actor, face_value, quantity: int, expires_on: date
) -> tuple[VoucherBatch, list[tuple[str, str]]]:
    """Issue ``quantity`` vouchers of ``face_value`` yuan valid through ``expires_on``.

    Returns the batch and the (serial, PIN) pairs: the only time the PINs exist in clear."""
    _require(actor, Cap.VOUCHER_MANAGE, _("You are not allowed to issue vouchers."))
    errors: dict[str, list[str]] = {}
    try:
        face_value = payment_amount(face_value, channel=Channel.VOUCHER)
    except ValidationError as exc:
        errors["face_value"] = exc.field_errors.get("amount") or [str(exc.message)]
        face_value_message = str(exc.message)
    else:
        face_value_message = ""
    max_quantity = _setting("VOUCHER_BATCH_MAX_QUANTITY", DEFAULT_MAX_QUANTITY)
    if not isinstance(quantity, int) or isinstance(quantity, bool) or not 1 <= quantity <= max_quantity:
        errors["quantity"] = [_("Between 1 and %(max)s vouchers per batch.") % {"max": max_quantity}]
    if not isinstance(expires_on, date) or expires_on <= timezone.localdate():
        errors["expires_on"] = [_("The expiry date must be in the future.")]
    if errors:
        message = face_value_message or _("Please correct the errors below.")
        raise ValidationError(message, field_errors=errors)

    with (
        transaction.atomic(),
        audit_context(action="voucher_batch_issue", user=actor.user_id, username=actor.username),
    ):
        # The batch number is the row id, so it is unique without a guess-and-retry loop.
        batch = VoucherBatch.objects.create(
            code=f"new-{secrets.token_hex(8)}",
            face_value=face_value,
            quantity=quantity,
            expires_on=expires_on,
            issued_by_id=actor.user_id,
        )
        batch.code = f"{batch.pk:0{BATCH_DIGITS}d}"
        batch.save(update_fields=["code"])
        key = _pin_keys()[0]
        codes, vouchers = [], []
        for sequence in range(1, quantity + 1):
            serial, pin = _serial(batch.pk, sequence), _new_pin()
            codes.append((serial, pin))
            vouchers.append(Voucher(batch=batch, serial=serial, pin_hash=pin_hash(serial, pin, key=key)))
        Voucher.objects.bulk_create(vouchers, batch_size=2000)
    logger.info("voucher_batch_issued", batch=batch.code, quantity=quantity, face_value=str(face_value))
    return batch, codes


def _locked_voucher(serial: str) -> Voucher:
    voucher = Voucher.objects.select_for_update().select_related("batch").filter(serial=serial).first()
    if voucher is None:
        raise NotFound(
            _("No voucher with serial number %(serial)s.") % {"serial": serial}, code="unknown_serial"
        )
    return voucher


def voucher_sell(*, actor: Actor, serial: str) -> Voucher:
    """At the counter: an issued voucher is sold (only sold vouchers can be redeemed)."""
    _require(actor, Cap.PAYMENT_TAKE, _("You are not allowed to sell vouchers."))
    serial = serial_normalise(serial)
    with (
        transaction.atomic(),
        audit_context(action="voucher_sell", user=actor.user_id, username=actor.username),
    ):
        voucher = _locked_voucher(serial)
        if voucher.status != Voucher.Status.ISSUED:
            raise Conflict(
                _("Voucher %(serial)s cannot be sold: it is %(status)s.")
                % {"serial": serial, "status": voucher.get_status_display().lower()},
                code="not_sellable",
            )
        if voucher.batch.expires_on < timezone.localdate():
            raise ValidationError(
                _("Voucher %(serial)s expired on %(date)s and cannot be sold.")
                % {"serial": serial, "date": voucher.batch.expires_on.isoformat()},
                code="expired",
            )
        voucher.status = Voucher.Status.SOLD
        voucher.sold_at = timezone.now()
        voucher.sold_by_id = actor.user_id
        voucher.save(update_fields=["status", "sold_at", "sold_by"])
    return voucher


def voucher_void(
    *, actor: Actor, reason: str, serial: str | None = None, batch: VoucherBatch | str | None = None
) -> int:
    """Void one voucher (``serial``) or every unredeemed voucher of a ``batch`` (a batch or its
    code), e.g. lost or stolen stock. Redeemed vouchers stay redeemed. Returns how many were
    voided."""
    _require(actor, Cap.VOUCHER_MANAGE, _("You are not allowed to void vouchers."))
    reason = (reason or "").strip()
    if len(reason) < 4:
        raise ValidationError(
            _("Say why the vouchers are voided."), field_errors={"reason": [_("Required.")]}
        )
    if (serial is None) == (batch is None):
        raise ValidationError(_("Void either one voucher or one batch."))
    live = [Voucher.Status.ISSUED, Voucher.Status.SOLD]
    with (
        transaction.atomic(),
        audit_context(action="voucher_void", user=actor.user_id, username=actor.username, reason=reason),
    ):
        if serial is not None:
            voucher = _locked_voucher(serial_normalise(serial))
            if voucher.status not in live:
                raise Conflict(
                    _("Voucher %(serial)s cannot be voided: it is %(status)s.")
                    % {"serial": voucher.serial, "status": voucher.get_status_display().lower()},
                    code="not_voidable",
                )
            voucher.status = Voucher.Status.VOID
            voucher.voided_reason = reason[:200]
            voucher.save(update_fields=["status", "voided_reason"])
            return 1
        code = batch.code if isinstance(batch, VoucherBatch) else str(batch)
        found = VoucherBatch.objects.filter(code=code).first()
        if found is None:
            raise NotFound(_("No voucher batch %(code)s.") % {"code": code})
        # A redemption in flight holds its voucher's row lock; this UPDATE waits for it and
        # then re-checks the status, so a voucher redeemed meanwhile is left alone.
        return Voucher.objects.filter(batch=found, status__in=live).update(
            status=Voucher.Status.VOID, voided_reason=reason[:200]
        )


def batch_status_counts(batch: VoucherBatch) -> dict[str, int]:
    counts = dict(
        Voucher.objects.filter(batch=batch).values_list("status").annotate(n=Count("pk")).order_by()
    )
    return {status: counts.get(status, 0) for status in Voucher.Status.values}


# --- redemption ----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Limits:
    client_failures: int
    serial_failures: int
    window: timedelta


def _limits() -> _Limits:
    return _Limits(
        client_failures=_setting("VOUCHER_MAX_FAILURES_PER_CLIENT", DEFAULT_CLIENT_FAILURES),
        serial_failures=_setting("VOUCHER_MAX_WRONG_PINS_PER_SERIAL", DEFAULT_SERIAL_FAILURES),
        window=timedelta(minutes=_setting("VOUCHER_FAILURE_WINDOW_MINUTES", DEFAULT_WINDOW_MINUTES)),
    )


def _advisory_lock(name: str) -> None:
    """Serialise attempts on one client or serial (existing or not) for this transaction, so
    that parallel guesses cannot all slip under the limit together."""
    if connection.vendor != "postgresql":
        return
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", [name])


def _retry_minutes(oldest: datetime, window: timedelta, now: datetime) -> int:
    return max(1, math.ceil((oldest + window - now).total_seconds() / 60))


def _check_lockout(*, client_key: str, serial: str, now: datetime) -> None:
    limits = _limits()
    since = now - limits.window
    client = VoucherFailure.objects.filter(client_key=client_key, at__gte=since).aggregate(
        n=Count("pk"), oldest=Min("at")
    )
    if client["n"] >= limits.client_failures:
        minutes = _retry_minutes(client["oldest"], limits.window, now)
        raise RateLimited(
            _("Too many failed voucher attempts. Try again in %(minutes)s minutes.") % {"minutes": minutes},
            code="voucher_client_locked",
            extra={"retry_after": minutes * 60},
        )
    guesses = VoucherFailure.objects.filter(serial=serial, reason__in=_GUESSES, at__gte=since).aggregate(
        n=Count("pk"), oldest=Min("at")
    )
    if guesses["n"] >= limits.serial_failures:
        minutes = _retry_minutes(guesses["oldest"], limits.window, now)
        raise RateLimited(
            _(
                "This voucher is locked after too many wrong PINs. Try again in %(minutes)s minutes "
                "or bring it to a service hall."
            )
            % {"minutes": minutes},
            code="voucher_serial_locked",
            extra={"retry_after": minutes * 60},
        )


def _failure_error(reason: str, voucher: Voucher | None):
    if reason in _GUESSES:
        # One message for both, so that it never tells whether the serial exists.
        return ValidationError(
            _("The serial number or the PIN is wrong."),
            field_errors={"pin": [_("Check the serial number and the PIN.")]},
            code="voucher_rejected",
        )
    if reason == FailureReason.NOT_SOLD:
        return ValidationError(
            _("This voucher has not been sold yet and cannot be redeemed."), code="voucher_not_sold"
        )
    if reason == FailureReason.VOID:
        return ValidationError(_("This voucher has been voided and cannot be redeemed."), code="voucher_void")
    if reason == FailureReason.EXPIRED:
        return ValidationError(
            _("This voucher expired on %(date)s and can no longer be redeemed.")
            % {"date": voucher.batch.expires_on.isoformat()},
            code="voucher_expired",
        )
    return Conflict(_("This voucher has already been redeemed."), code="voucher_redeemed")


_CONTEXT_FIELDS = ("cashier_id", "shift_id", "hall_id", "device_id", "payer")


def voucher_redeem(
    *,
    serial: str,
    pin: str,
    account_number: str,
    client_key: str,
    channel_context: dict | None = None,
) -> PostResult:
    """Redeem a sold voucher onto ``account_number`` (counter, portal or phone).

    ``client_key`` names who is trying ("ivr:<caller>", "portal:<user id>", "counter:<user id>"
    or an address); ``channel_context`` may carry ``cashier_id``, ``shift_id``, ``hall_id``,
    ``device_id`` and ``payer`` for the payment row, anything else is kept in its details.
    The same voucher redeemed again onto the same account returns the first payment
    (``created=False``), like any retried payment."""
    serial = serial_normalise(serial)
    pin = re.sub(r"[\s\-]", "", str(pin or ""))
    if not pin.isdigit() or not 6 <= len(pin) <= 32:
        raise ValidationError(
            _("A voucher PIN is %(n)s digits.") % {"n": PIN_DIGITS},
            field_errors={"pin": [_("Digits only.")]},
            code="bad_pin",
        )
    client_key = (client_key or "").strip()[:100]
    if not client_key:
        raise ValidationError(_("Who is redeeming the voucher is not known."))
    context = dict(channel_context or {})
    post_kwargs = {k: context.pop(k) for k in _CONTEXT_FIELDS if context.get(k) is not None}
    account_number = (account_number or "").strip()

    failure: str | None = None
    with transaction.atomic():
        # Fixed order (client, then serial), so two attempts never wait on each other in a cycle.
        _advisory_lock(f"voucher-client:{client_key}")
        _advisory_lock(f"voucher-serial:{serial}")
        now = timezone.now()
        _check_lockout(client_key=client_key, serial=serial, now=now)
        voucher = (
            Voucher.objects.select_for_update(of=("self",))
            .select_related("batch", "payment", "payment__account")
            .filter(serial=serial)
            .first()
        )
        if voucher is None:
            # Spend the same work as a real check, so timing does not tell either.
            pin_matches(serial, pin, f"{_HASH_SCHEME}$0${'0' * 64}")
            failure = FailureReason.UNKNOWN_SERIAL
        elif not pin_matches(serial, pin, voucher.pin_hash):
            failure = FailureReason.WRONG_PIN
        elif voucher.status == Voucher.Status.REDEEMED:
            payment = voucher.payment
            if (
                payment is not None
                and payment.account.number == account_number
                and payment.status == PaymentStatus.POSTED
            ):
                return PostResult(payment, False)
            failure = FailureReason.ALREADY_REDEEMED
        elif voucher.status == Voucher.Status.VOID:
            failure = FailureReason.VOID
        elif voucher.status == Voucher.Status.ISSUED:
            failure = FailureReason.NOT_SOLD
        elif voucher.batch.expires_on < timezone.localdate(now):
            failure = FailureReason.EXPIRED

        if failure is not None:
            VoucherFailure.objects.create(serial=serial, client_key=client_key, reason=failure, at=now)
        else:
            result = payment_post(
                channel=Channel.VOUCHER,
                external_id=serial,
                account_number=account_number,
                amount=voucher.batch.face_value,
                method=Method.VOUCHER,
                received_at=now,
                details={**context, "client_key": client_key, "voucher_batch": voucher.batch.code},
                **post_kwargs,
            )
            voucher.status = Voucher.Status.REDEEMED
            voucher.redeemed_at = now
            voucher.payment = result.payment
            voucher.save(update_fields=["status", "redeemed_at", "payment"])
    if failure is not None:
        # Committed above: the failure counts even though the caller gets an error.
        logger.info("voucher_redeem_failed", serial=serial, client_key=client_key, reason=failure)
        raise _failure_error(failure, voucher)
    logger.info("voucher_redeemed", serial=serial, account=account_number, payment=result.payment.pk)
    return result
