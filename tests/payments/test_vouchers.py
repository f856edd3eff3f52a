"""Recharge vouchers: issue (serials with a check digit, PINs only as keyed hashes), sell,
redeem once, expiry and void, and the brute-force lockout per client and per serial."""

import threading
from datetime import timedelta
from decimal import Decimal

import pytest
from django.db import close_old_connections, connection
from django.utils import timezone

from billing.models import EntryKind, LedgerEntry
from billing.services.ledger import account_balance, ledger_check
from core.exceptions import Conflict, NotFound, PermissionDenied, RateLimited, ValidationError
from payments.models import Payment, Voucher, VoucherBatch, VoucherFailure
from payments.services.vouchers import (
    batch_status_counts,
    luhn_check_digit,
    pin_matches,
    serial_normalise,
    voucher_batch_issue,
    voucher_redeem,
    voucher_sell,
    voucher_void,
)

pytestmark = pytest.mark.usefixtures("english", "fast_password_hashing")


@pytest.fixture
def account(flat_tariff, make_prepaid):
    return make_prepaid(flat_tariff)[0]


@pytest.fixture
def issue(actors):
    def issue(face_value="50.00", quantity=3, days=30):
        return voucher_batch_issue(
            actor=actors["manager"],
            face_value=face_value,
            quantity=quantity,
            expires_on=timezone.localdate() + timedelta(days=days),
        )

    return issue


@pytest.fixture
def sold(issue, actors):
    """One sold 50.00 voucher: (serial, pin)."""
    _batch, codes = issue(quantity=1)
    voucher_sell(actor=actors["counter"], serial=codes[0][0])
    return codes[0]


def redeem(serial, pin, account, client="portal:7"):
    return voucher_redeem(
        serial=serial,
        pin=pin,
        account_number=account.number,
        client_key=client,
        channel_context={"via": "test"},
    )


def wrong(pin: str) -> str:
    """Another PIN of the same length (last digit changed)."""
    return pin[:-1] + str((int(pin[-1]) + 1) % 10)


def with_check_digit(body: str) -> str:
    return body + luhn_check_digit(body)


# --- serial numbers and PINs ---------------------------------------------------------------


def test_luhn_check_digit_of_the_textbook_example():
    # 7992739871: from the right, doubled 1,8,3,2,9 -> 2,16->7,6,4,18->9 = 28; kept 7,9,7,9,7 = 39;
    # 28 + 39 = 67, and (10 - 67 mod 10) mod 10 = 3.
    assert luhn_check_digit("7992739871") == "3"
    # Batch 1, voucher 1: body 000001 00001; from the right, doubled 1 -> 2 and the 1 of the
    # batch number is kept -> 1; 2 + 1 = 3, check digit (10 - 3) mod 10 = 7.
    assert luhn_check_digit("00000100001") == "7"
    assert serial_normalise("000001000017") == "000001000017"
    assert serial_normalise(" 000001-00001 7 ") == "000001000017"


@pytest.mark.parametrize("typo", ["000001000018", "000001000071", "000002000017"])
def test_a_mistyped_serial_is_refused_before_any_lookup_and_is_not_a_failure(typo, db, account):
    # the check digit changed; the last two digits swapped; the batch number mistyped
    with pytest.raises(ValidationError, match="mistyped") as info:
        voucher_redeem(serial=typo, pin="1234567890123456", account_number=account.number, client_key="ivr:1")
    assert info.value.code == "bad_serial"
    assert not VoucherFailure.objects.exists()


@pytest.mark.django_db
def test_a_batch_is_issued_with_unique_check_digit_serials_and_random_pins(issue, actors):
    batch, codes = issue(face_value="50.00", quantity=3)
    assert batch.code == f"{batch.pk:06d}" and batch.quantity == 3 and batch.face_value == Decimal("50.00")
    serials = [s for s, _pin in codes]
    # batch number (6 digits) + sequence 00001..00003 + check digit
    assert serials == [with_check_digit(f"{batch.pk:06d}{n:05d}") for n in (1, 2, 3)]
    assert all(len(p) == 16 and p.isdigit() for _s, p in codes)
    assert len({p for _s, p in codes}) == 3
    assert batch_status_counts(batch) == {"issued": 3, "sold": 0, "redeemed": 0, "void": 0}
    assert batch.issued_by_id == actors["manager"].user_id


@pytest.mark.django_db
def test_the_pin_is_stored_only_as_a_salted_keyed_hash_and_nowhere_in_clear(issue):
    _batch, codes = issue(quantity=2)
    for serial, pin in codes:
        stored = Voucher.objects.get(serial=serial).pin_hash
        assert stored != pin and pin not in stored
        assert stored.startswith("hmac-sha256$")
        assert pin_matches(serial, pin, stored)
        assert not pin_matches(serial, wrong(pin), stored)
        assert not pin_matches(codes[0][0] if serial != codes[0][0] else codes[1][0], pin, stored)
    # Same PIN, two hashes: the salt differs.
    from payments.services.vouchers import pin_hash

    assert pin_hash("x", "1234567890123456") != pin_hash("x", "1234567890123456")
    # No column of any table (vouchers, their history events, audit log...) holds a PIN.
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT table_name FROM information_schema.tables "
            "WHERE table_schema = 'public' AND table_type = 'BASE TABLE'"
        )
        tables = [r[0] for r in cursor.fetchall()]
        for _serial, pin in codes:
            for table in tables:
                cursor.execute(f'SELECT count(*) FROM "{table}" t WHERE t::text LIKE %s', [f"%{pin}%"])  # noqa: S608
                assert cursor.fetchone()[0] == 0, table


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"face_value": "0"}, "face_value"),
        ({"face_value": "12.345"}, "face_value"),
        ({"face_value": "1000.01"}, "face_value"),  # above the voucher channel's limit of 1000.00
        ({"quantity": 0}, "quantity"),
        ({"quantity": 10_001}, "quantity"),
        ({"days": 0}, "expires_on"),
    ],
)
def test_bad_batches_are_refused(issue, kwargs, field):
    with pytest.raises(ValidationError) as info:
        issue(**kwargs)
    assert field in info.value.field_errors
    assert not VoucherBatch.objects.exists()


@pytest.mark.django_db
def test_only_voucher_managers_issue_and_void_and_only_counter_staff_sell(actors, issue):
    with pytest.raises(PermissionDenied):
        voucher_batch_issue(
            actor=actors["counter"],
            face_value="50",
            quantity=1,
            expires_on=timezone.localdate() + timedelta(1),
        )
    _batch, codes = issue(quantity=1)
    with pytest.raises(PermissionDenied):
        voucher_void(actor=actors["counter"], serial=codes[0][0], reason="lost in the post")
    with pytest.raises(PermissionDenied):
        voucher_sell(actor=actors["manager"], serial=codes[0][0])


# --- selling and redeeming -----------------------------------------------------------------


@pytest.mark.django_db
def test_issue_sell_redeem_posts_once(issue, actors, account):
    batch, [(serial, pin)] = issue(face_value="50.00", quantity=1)
    voucher = voucher_sell(actor=actors["counter"], serial=serial)
    assert voucher.status == Voucher.Status.SOLD and voucher.sold_by_id == actors["counter"].user_id
    with pytest.raises(Conflict, match="cannot be sold"):
        voucher_sell(actor=actors["counter"], serial=serial)

    result = redeem(serial, pin, account)
    assert result.created
    payment = result.payment
    assert (payment.channel, payment.external_id, payment.method) == ("voucher", serial, "voucher")
    assert payment.amount == Decimal("50.00") and payment.details["client_key"] == "portal:7"
    voucher.refresh_from_db()
    assert voucher.status == Voucher.Status.REDEEMED and voucher.payment_id == payment.pk
    assert account_balance(account.pk) == Decimal("50.00")

    # The same redemption retried returns the first payment and posts nothing.
    again = redeem(serial, pin, account)
    assert not again.created and again.payment.pk == payment.pk
    assert LedgerEntry.objects.filter(account=account, kind=EntryKind.PAYMENT).count() == 1
    assert account_balance(account.pk) == Decimal("50.00")
    assert ledger_check() == []
    assert batch_status_counts(batch)["redeemed"] == 1


@pytest.mark.django_db
def test_a_redeemed_voucher_cannot_credit_another_account(sold, flat_tariff, make_prepaid, account):
    serial, pin = sold
    redeem(serial, pin, account)
    other = make_prepaid(flat_tariff)[0]
    with pytest.raises(Conflict, match="already been redeemed"):
        redeem(serial, pin, other, client="portal:8")
    assert account_balance(other.pk) == Decimal("0.00")
    assert VoucherFailure.objects.get().reason == "already_redeemed"


@pytest.mark.django_db
def test_unsold_void_and_expired_vouchers_are_refused_with_the_right_pin(issue, actors, account):
    _batch, codes = issue(quantity=3)
    (unsold, unsold_pin), (voided, voided_pin), (old, old_pin) = codes
    voucher_sell(actor=actors["counter"], serial=voided)
    voucher_sell(actor=actors["counter"], serial=old)
    assert voucher_void(actor=actors["manager"], serial=voided, reason="reported stolen") == 1
    with pytest.raises(ValidationError, match="not been sold"):
        redeem(unsold, unsold_pin, account, client="a")
    with pytest.raises(ValidationError, match="voided"):
        redeem(voided, voided_pin, account, client="b")
    # Valid through yesterday.
    yesterday = timezone.localdate() - timedelta(days=1)
    VoucherBatch.objects.update(expires_on=yesterday)
    with pytest.raises(ValidationError, match=f"expired on {yesterday.isoformat()}"):
        redeem(old, old_pin, account, client="c")
    assert not Payment.objects.exists()
    assert sorted(VoucherFailure.objects.values_list("reason", flat=True)) == ["expired", "not_sold", "void"]


@pytest.mark.django_db
def test_a_voucher_is_valid_through_its_expiry_day(sold, account):
    serial, pin = sold
    VoucherBatch.objects.update(expires_on=timezone.localdate())
    assert redeem(serial, pin, account).created


@pytest.mark.django_db
def test_unknown_serial_and_wrong_pin_get_the_same_message(sold, account):
    serial, pin = sold
    with pytest.raises(ValidationError) as unknown:
        redeem(with_check_digit("99999900001"), pin, account, client="x1")
    with pytest.raises(ValidationError) as wrong_pin:
        redeem(serial, wrong(pin), account, client="x2")
    assert (
        str(unknown.value.message) == str(wrong_pin.value.message) == "The serial number or the PIN is wrong."
    )
    assert unknown.value.code == wrong_pin.value.code
    assert sorted(VoucherFailure.objects.values_list("reason", flat=True)) == ["unknown_serial", "wrong_pin"]


@pytest.mark.django_db
def test_an_unknown_account_posts_nothing_and_leaves_the_voucher_sold(sold, account):
    serial, pin = sold
    with pytest.raises(NotFound):
        voucher_redeem(serial=serial, pin=pin, account_number="0000", client_key="ivr:1")
    assert Voucher.objects.get(serial=serial).status == Voucher.Status.SOLD
    assert redeem(serial, pin, account).created


# --- brute force ---------------------------------------------------------------------------


@pytest.mark.django_db
def test_five_wrong_pins_lock_the_serial_even_for_the_right_pin(sold, account):
    serial, pin = sold
    for n in range(5):  # five different clients, so only the serial's limit is reached
        with pytest.raises(ValidationError):
            redeem(serial, wrong(pin), account, client=f"ivr:138000000{n}")
    with pytest.raises(RateLimited, match="locked after too many wrong PINs") as info:
        redeem(serial, pin, account, client="portal:99")
    assert info.value.code == "voucher_serial_locked" and info.value.extra["retry_after"] == 15 * 60
    assert not Payment.objects.exists()
    assert Voucher.objects.get(serial=serial).status == Voucher.Status.SOLD
    # A refused attempt while locked is not a new failure (5 recorded, not 6).
    assert VoucherFailure.objects.count() == 5

    # 15 minutes after the failures the serial is usable again.
    VoucherFailure.objects.update(at=timezone.now() - timedelta(minutes=15, seconds=1))
    assert redeem(serial, pin, account, client="portal:99").created


@pytest.mark.django_db
def test_five_failures_lock_the_client_out_before_the_pin_is_checked(issue, actors, account):
    _batch, [(serial, pin)] = issue(quantity=1)
    voucher_sell(actor=actors["counter"], serial=serial)
    for n in range(5):  # five made-up serials (valid check digits) from one caller
        with pytest.raises(ValidationError):
            redeem(with_check_digit(f"9999990000{n}"), pin, account, client="ivr:13900001111")
    with pytest.raises(RateLimited, match="Too many failed voucher attempts") as info:
        redeem(serial, pin, account, client="ivr:13900001111")
    assert info.value.code == "voucher_client_locked"
    assert not Payment.objects.exists()
    # Another client is not affected.
    assert redeem(serial, pin, account, client="counter:5").created


@pytest.mark.django_db
def test_an_unknown_serial_locks_like_a_real_one(account):
    # Otherwise the lockout would tell which serials exist.
    ghost = with_check_digit("99999912345")
    for n in range(5):
        with pytest.raises(ValidationError):
            redeem(ghost, "1234567890123456", account, client=f"c{n}")
    with pytest.raises(RateLimited, match="locked after too many wrong PINs"):
        redeem(ghost, "1234567890123456", account, client="c9")


@pytest.mark.django_db
def test_lockout_limits_come_from_settings(sold, account, settings):
    settings.VOUCHER_MAX_WRONG_PINS_PER_SERIAL = 2
    serial, pin = sold
    for n in range(2):
        with pytest.raises(ValidationError):
            redeem(serial, wrong(pin), account, client=f"c{n}")
    with pytest.raises(RateLimited):
        redeem(serial, pin, account, client="c9")


# --- void ----------------------------------------------------------------------------------


@pytest.mark.django_db
def test_voiding_a_batch_leaves_redeemed_vouchers_alone(issue, actors, account):
    batch, codes = issue(quantity=4)
    for serial, _pin in codes[:2]:
        voucher_sell(actor=actors["counter"], serial=serial)
    redeem(*codes[0], account)
    with pytest.raises(ValidationError, match="Say why"):
        voucher_void(actor=actors["manager"], batch=batch.code, reason="")
    # 4 vouchers: 1 redeemed, 1 sold, 2 issued -> the sold one and the two issued ones are voided
    assert voucher_void(actor=actors["manager"], batch=batch.code, reason="stock lost in transit") == 3
    assert batch_status_counts(batch) == {"issued": 0, "sold": 0, "redeemed": 1, "void": 3}
    with pytest.raises(Conflict, match="cannot be voided"):
        voucher_void(actor=actors["manager"], serial=codes[0][0], reason="too late now")
    assert account_balance(account.pk) == Decimal("50.00")


# --- races ---------------------------------------------------------------------------------


def run_together(funcs):
    """Run ``funcs`` in threads released at once; returns (results, errors)."""
    barrier = threading.Barrier(len(funcs))
    errors, results = [], []

    def wrap(func):
        try:
            barrier.wait()
            results.append(func())
        except Exception as exc:
            errors.append(exc)
        finally:
            close_old_connections()
            connection.close()

    threads = [threading.Thread(target=wrap, args=(f,)) for f in funcs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return results, errors


@pytest.mark.django_db(transaction=True)
@pytest.mark.skipif("connection.vendor != 'postgresql'", reason="row locks need PostgreSQL")
def test_concurrent_redemptions_of_one_voucher_post_once(sold, account):
    serial, pin = sold
    results, errors = run_together(
        [lambda n=n: redeem(serial, pin, account, client=f"t{n}") for n in range(8)]
    )
    assert not errors, errors
    assert sum(r.created for r in results) == 1 and len({r.payment.pk for r in results}) == 1
    assert Payment.objects.count() == 1
    assert account_balance(account.pk) == Decimal("50.00")
    assert ledger_check() == []


@pytest.mark.django_db(transaction=True)
@pytest.mark.skipif("connection.vendor != 'postgresql'", reason="row locks need PostgreSQL")
def test_concurrent_redemptions_onto_two_accounts_credit_only_one(sold, account, flat_tariff, make_prepaid):
    serial, pin = sold
    other = make_prepaid(flat_tariff)[0]
    results, errors = run_together(
        [lambda: redeem(serial, pin, account, client="a"), lambda: redeem(serial, pin, other, client="b")]
    )
    assert len(results) == 1 and results[0].created
    assert len(errors) == 1 and isinstance(errors[0], Conflict)
    # 50.00 on exactly one of the two accounts
    assert sorted([account_balance(account.pk), account_balance(other.pk)]) == [
        Decimal("0.00"),
        Decimal("50.00"),
    ]
    assert ledger_check() == []


@pytest.mark.django_db(transaction=True)
@pytest.mark.skipif("connection.vendor != 'postgresql'", reason="row locks need PostgreSQL")
def test_parallel_guesses_cannot_slip_past_the_serial_limit(sold, account):
    serial, pin = sold
    _results, errors = run_together(
        [lambda n=n: redeem(serial, wrong(pin), account, client=f"g{n}") for n in range(10)]
    )
    # 10 guesses at once: the first 5 are wrong-PIN failures, the other 5 find the serial locked.
    assert len(errors) == 10
    assert sum(isinstance(e, RateLimited) for e in errors) == 5
    assert VoucherFailure.objects.filter(serial=serial).count() == 5


@pytest.mark.django_db
def test_a_batch_of_ten_thousand_is_issued_quickly(actors):
    import time

    started = time.monotonic()
    batch, codes = voucher_batch_issue(
        actor=actors["manager"],
        face_value="100.00",
        quantity=10_000,
        expires_on=timezone.localdate() + timedelta(1),
    )
    elapsed = time.monotonic() - started
    assert len({s for s, _p in codes}) == 10_000 and batch.vouchers.count() == 10_000
    assert elapsed < 30, elapsed  # generous: it took 1.5 s on the development machine
