"""Bank agency: real-time postings, the daily file's checks and its reconciliation.

The sample file tests/payments/data/bank_QXRCB_2026-11-20.csv was written by hand:

    line 2  S0001  9900000001  100.00   posted in real time as in the file      -> matched
    line 3  S0002  9900000002   50.50   posted in real time as in the file      -> matched
    line 4  S0003  9900000003  200.00   posted in real time as in the file      -> matched
    line 5  S0004  9900000001   30.00   never posted                            -> long
    line 6  S0005  9900000002   80.00   posted in real time as 75.00            -> mismatch
    line 7  TOTAL,5,460.50  (100.00 + 50.50 + 200.00 + 30.00 + 80.00 = 460.50)
    and S0006 9900000003 45.60 posted at 2026-11-20 06:30 +08:00, not in the file -> short
"""

from datetime import date, datetime
from decimal import Decimal
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from billing.services.ledger import account_balance
from core.exceptions import Conflict, NotFound, PermissionDenied, ValidationError
from customers.models import Account
from payments.models import BankFile, Channel, Method, Payment, ReconciliationItem
from payments.services.bank import (
    bank_file_import,
    bank_payment_post,
    bank_reconciliation_report,
    reconciliation_item_clear,
    reconciliation_item_post,
)

pytestmark = [pytest.mark.usefixtures("english", "fast_password_hashing"), pytest.mark.django_db]

SAMPLE = Path(__file__).parent / "data" / "bank_QXRCB_2026-11-20.csv"
DAY = date(2026, 11, 20)
SH = ZoneInfo("Asia/Shanghai")
Kind = ReconciliationItem.Kind


def at(h, m, day=20):
    return datetime(2026, 11, day, h, m, tzinfo=SH)


@pytest.fixture
def banks(db):
    from payments.models import Bank

    return {
        "QXRCB": Bank.objects.create(code="QXRCB", name="青溪农商银行"),
        "OTHER": Bank.objects.create(code="OTHER", name="Other bank"),
    }


@pytest.fixture
def accounts(flat_tariff, make_prepaid):
    """Three prepaid accounts in 青溪 with the numbers the sample file uses."""
    result = []
    for i in (1, 2, 3):
        account = make_prepaid(flat_tariff)[0]
        Account.objects.filter(pk=account.pk).update(number=f"990000000{i}")
        result.append(Account.objects.get(pk=account.pk))
    return result


def post(serial, account, amount, when, bank="QXRCB"):
    return bank_payment_post(
        bank_code=bank, bank_serial=serial, account_number=account, amount=amount, paid_at=when
    )


@pytest.fixture
def the_day(banks, accounts):
    """The real-time postings of 2026-11-20, plus others that must not count as short."""
    post("S0001", "9900000001", "100.00", at(9, 15))
    post("S0002", "9900000002", "50.50", at(10, 2))
    post("S0003", "9900000003", "200.00", at(11, 45))
    post("S0005", "9900000002", "75.00", at(16, 5))  # the bank's file says 80.00
    post("S0006", "9900000003", "45.60", at(6, 30))  # 2026-11-19 22:30 UTC, the 20th in Shanghai
    # Not the 20th in Shanghai, or another bank: never short for this file.
    post("S0007", "9900000001", "10.00", at(23, 50, day=19))
    post("S0008", "9900000001", "20.00", at(0, 10, day=21))
    post("S0009", "9900000001", "40.00", at(12, 0), bank="OTHER")


def import_sample(actor, content=None):
    return bank_file_import(
        actor=actor,
        bank_code="QXRCB",
        business_date=DAY,
        file_name=SAMPLE.name,
        content=SAMPLE.read_bytes() if content is None else content,
    )


# --- real-time postings --------------------------------------------------------------------


def test_bank_posting_is_a_transfer_on_the_bank_channel_and_idempotent(banks, accounts):
    first = post("S0001", "9900000001", "100.00", at(9, 15))
    again = post("S0001", "9900000001", "100.00", at(9, 15))
    assert first.created and not again.created and again.payment.pk == first.payment.pk
    payment = first.payment
    assert (payment.channel, payment.external_id, payment.method) == (
        Channel.BANK,
        "QXRCB:S0001",
        Method.TRANSFER,
    )
    assert payment.bank_id == banks["QXRCB"].pk and payment.received_at == at(9, 15)
    assert account_balance(accounts[0].pk) == Decimal("100.00")  # one credit of 100.00, not two
    with pytest.raises(Conflict):
        post("S0001", "9900000001", "99.00", at(9, 15))


def test_bank_posting_refuses_unknown_banks_bad_serials_and_naive_times(banks, accounts):
    with pytest.raises(NotFound):
        post("S1", "9900000001", "1.00", at(9, 0), bank="NOPE")
    with pytest.raises(ValidationError):
        post("S:1", "9900000001", "1.00", at(9, 0))
    with pytest.raises(ValidationError):
        post("S1", "9900000001", "1.00", datetime(2026, 11, 20, 9, 0))
    assert not Payment.objects.exists()


# --- reconciliation ------------------------------------------------------------------------


def test_sample_file_reconciles_to_the_hand_computed_report(the_day, actors):
    bank_file = import_sample(actors["manager"])
    assert bank_file.created and (bank_file.line_count, bank_file.total_amount) == (5, Decimal("460.50"))
    report = bank_reconciliation_report(bank_file=bank_file)
    summary = {k.kind: (k.count, k.file_amount, k.posted_amount, k.open_count) for k in report.kinds}
    assert summary == {
        # 100.00 + 50.50 + 200.00 = 350.50 on both sides
        Kind.MATCHED: (3, Decimal("350.50"), Decimal("350.50"), 0),
        Kind.LONG: (1, Decimal("30.00"), Decimal("0.00"), 1),
        Kind.SHORT: (1, Decimal("0.00"), Decimal("45.60"), 1),
        Kind.MISMATCH: (1, Decimal("80.00"), Decimal("75.00"), 1),
    }
    assert (report.file_count, report.file_total) == (5, Decimal("460.50"))
    # posted: 350.50 + 75.00 + 45.60 = 471.10 over 3 + 1 + 1 = 5 payments
    assert (report.posted_count, report.posted_total) == (5, Decimal("471.10"))
    # 460.50 - 471.10 = -10.60 = long 30.00 + mismatch (80.00 - 75.00) - short 45.60
    assert report.difference == Decimal("-10.60") and report.open_count == 3
    items = {i.kind: i for i in bank_file.items.exclude(kind=Kind.MATCHED).select_related("line", "payment")}
    assert items[Kind.LONG].line.bank_serial == "S0004" and items[Kind.LONG].payment is None
    assert items[Kind.SHORT].payment.external_id == "QXRCB:S0006" and items[Kind.SHORT].line is None
    assert items[Kind.MISMATCH].note == "amount: file 80.00, posted 75.00"


def test_reimporting_the_same_file_returns_the_first(the_day, actors):
    first = import_sample(actors["manager"])
    again = import_sample(actors["admin"])
    assert again.pk == first.pk and again.created is False
    assert BankFile.objects.count() == 1 and ReconciliationItem.objects.count() == 6  # 5 lines + 1 short


def test_different_content_for_an_imported_day_is_a_conflict(the_day, actors):
    import_sample(actors["manager"])
    changed = (
        SAMPLE.read_bytes()
        .replace(b"S0005,9900000002,80.00", b"S0005,9900000002,75.00")
        .replace(b"TOTAL,5,460.50", b"TOTAL,5,455.50")
    )
    with pytest.raises(Conflict):
        import_sample(actors["manager"], changed)
    assert BankFile.objects.count() == 1


def test_a_short_payment_matched_by_another_days_file_is_not_short_again(banks, accounts, actors):
    # Posted 2026-11-20 06:30 but the bank files it with the 19th (its cut-off): matched there.
    post("S0006", "9900000003", "45.60", at(6, 30))
    earlier = (
        "bank_code,business_date,serial,account_number,amount,paid_at\n"
        "QXRCB,2026-11-19,S0006,9900000003,45.60,2026-11-20T06:30:00+08:00\n"
        "TOTAL,1,45.60\n"
    )
    bank_file_import(
        actor=actors["manager"],
        bank_code="QXRCB",
        business_date=date(2026, 11, 19),
        file_name="19.csv",
        content=earlier.encode(),
    )
    empty = b"bank_code,business_date,serial,account_number,amount,paid_at\nTOTAL,0,0.00\n"
    day = bank_file_import(
        actor=actors["manager"], bank_code="QXRCB", business_date=DAY, file_name="20.csv", content=empty
    )
    assert not day.items.exists()


def test_importing_needs_the_capability(the_day, actors):
    for name in ("counter", "inspector", "auditor"):
        with pytest.raises(PermissionDenied):
            import_sample(actors[name])
    assert not BankFile.objects.exists()


# --- bad files -----------------------------------------------------------------------------

GOOD = SAMPLE.read_text().splitlines()


def variant(line_number, new_text):
    lines = list(GOOD)
    lines[line_number - 1] = new_text
    return ("\n".join(lines) + "\n").encode()


BAD_FILES = [
    ("wrong header", variant(1, "bank,date,serial,account,amount,paid_at"), "line 1: the header must be"),
    (
        "bad amount",
        variant(3, "QXRCB,2026-11-20,S0002,9900000002,50.5,2026-11-20T10:02:30+08:00"),
        "line 3: bad amount '50.5'",
    ),
    (
        "negative amount",
        variant(3, "QXRCB,2026-11-20,S0002,9900000002,-50.50,2026-11-20T10:02:30+08:00"),
        "line 3: bad amount",
    ),
    (
        "duplicate serial",
        variant(4, "QXRCB,2026-11-20,S0001,9900000003,200.00,2026-11-20T11:45:00+08:00"),
        "line 4: duplicate serial S0001 (also on line 2)",
    ),
    (
        "trailer sum",
        variant(7, "TOTAL,5,460.00"),
        "line 7: the trailer sum 460.00 differs from the sum of the lines, 460.50",
    ),
    (
        "trailer count",
        variant(7, "TOTAL,4,460.50"),
        "line 7: the trailer counts 4 payments but the file has 5",
    ),
    (
        "other business date",
        variant(5, "QXRCB,2026-11-21,S0004,9900000001,30.00,2026-11-20T14:20:00+08:00"),
        "line 5: business date 2026-11-21 is not this file's date (2026-11-20)",
    ),
    (
        "other bank",
        variant(6, "OTHER,2026-11-20,S0005,9900000002,80.00,2026-11-20T16:05:00+08:00"),
        "line 6: bank code OTHER is not this file's bank (QXRCB)",
    ),
    (
        "time without offset",
        variant(2, "QXRCB,2026-11-20,S0001,9900000001,100.00,2026-11-20T09:15:00"),
        "line 2: bad paid_at",
    ),
    ("missing field", variant(2, "QXRCB,2026-11-20,S0001,9900000001,100.00"), "line 2: 5 fields, expected 6"),
    ("no trailer", "\n".join(GOOD[:-1]).encode(), "line 6: the file must end with the trailer line"),
    ("not utf-8", "\n".join(GOOD).encode("utf-16"), "the file is not UTF-8 text"),
]


@pytest.mark.parametrize(("content", "expected"), [b[1:] for b in BAD_FILES], ids=[b[0] for b in BAD_FILES])
def test_a_bad_file_is_rejected_with_its_line_number(banks, actors, content, expected):
    with pytest.raises(ValidationError) as exc:
        import_sample(actors["manager"], content)
    assert expected in str(exc.value.message), exc.value.field_errors
    assert exc.value.code == "bad_bank_file"
    assert not BankFile.objects.exists()


def test_every_faulty_line_is_listed(banks, actors):
    content = variant(3, "QXRCB,2026-11-20,S0002,9900000002,50.5,2026-11-20T10:02:30+08:00")
    lines = content.decode().splitlines()
    lines[4] = "QXRCB,2026-11-20,S0001,9900000001,30.00,2026-11-20T14:20:00+08:00"  # line 5 repeats S0001
    with pytest.raises(ValidationError) as exc:
        import_sample(actors["manager"], ("\n".join(lines) + "\n").encode())
    errors = exc.value.field_errors["file"]
    assert [e.split(":")[0] for e in errors] == ["line 3", "line 5"]


# --- clearing ------------------------------------------------------------------------------


def item(bank_file, kind):
    return bank_file.items.get(kind=kind)


def test_a_long_item_is_posted_from_the_file_then_cleared(the_day, actors, accounts):
    bank_file = import_sample(actors["manager"])
    long_item = item(bank_file, Kind.LONG)
    # 100.00 (S0001) + 10.00 (S0007) + 20.00 (S0008) + 40.00 (S0009, other bank) = 170.00
    assert account_balance(accounts[0].pk) == Decimal("170.00")
    cleared = reconciliation_item_post(actor=actors["manager"], item_id=long_item.pk)
    assert cleared.cleared and cleared.payment.external_id == "QXRCB:S0004"
    assert cleared.payment.amount == Decimal("30.00") and cleared.cleared_by_id == actors["manager"].user_id
    assert account_balance(accounts[0].pk) == Decimal("200.00")  # 170.00 + 30.00
    # Pressing the button again posts nothing more.
    reconciliation_item_post(actor=actors["manager"], item_id=long_item.pk)
    assert account_balance(accounts[0].pk) == Decimal("200.00")
    assert Payment.objects.filter(external_id="QXRCB:S0004").count() == 1
    report = bank_reconciliation_report(bank_file=bank_file)
    # posted 471.10 + 30.00 = 501.10; difference 460.50 - 501.10 = -40.60; open 3 - 1 = 2
    assert (report.posted_total, report.difference, report.open_count) == (
        Decimal("501.10"),
        Decimal("-40.60"),
        2,
    )
    assert report.kind(Kind.LONG).posted_amount == Decimal("30.00")


def test_a_late_real_time_posting_is_linked_not_posted_twice(the_day, actors, accounts):
    bank_file = import_sample(actors["manager"])
    late = post("S0004", "9900000001", "30.00", at(14, 20))
    cleared = reconciliation_item_post(actor=actors["manager"], item_id=item(bank_file, Kind.LONG).pk)
    assert cleared.payment_id == late.payment.pk
    assert cleared.clearing_note == f"Already posted in real time as payment {late.payment.pk}."


def test_mismatch_and_short_are_cleared_with_a_note_and_audited(the_day, actors):
    bank_file = import_sample(actors["manager"])
    mismatch, short = item(bank_file, Kind.MISMATCH), item(bank_file, Kind.SHORT)
    with pytest.raises(ValidationError):
        reconciliation_item_clear(actor=actors["manager"], item_id=mismatch.pk, note=" ")
    done = reconciliation_item_clear(
        actor=actors["manager"], item_id=mismatch.pk, note="Bank confirmed 75.00; file corrected"
    )
    assert done.cleared and done.clearing_note == "Bank confirmed 75.00; file corrected"
    event = done.events.filter(pgh_label="update").get()
    assert event.cleared is True and event.pgh_context.metadata["action"] == "bank_item_clear"
    assert event.pgh_context.metadata["username"] == "manager"
    with pytest.raises(Conflict):
        reconciliation_item_clear(actor=actors["admin"], item_id=mismatch.pk, note="again, twice")
    reconciliation_item_clear(actor=actors["admin"], item_id=short.pk, note="In the bank's 21st file")
    assert bank_reconciliation_report(bank_file=bank_file).open_count == 1  # only the long item
    matched = bank_file.items.filter(kind=Kind.MATCHED).first()
    with pytest.raises(ValidationError):
        reconciliation_item_clear(actor=actors["admin"], item_id=matched.pk, note="nothing to do")


def test_clearing_needs_the_capability_and_the_scope(the_day, actors):
    bank_file = import_sample(actors["manager"])
    mismatch = item(bank_file, Kind.MISMATCH)
    for name in ("counter", "inspector", "auditor"):
        with pytest.raises(PermissionDenied):
            reconciliation_item_clear(actor=actors[name], item_id=mismatch.pk, note="not mine to clear")
        with pytest.raises(PermissionDenied):
            reconciliation_item_post(actor=actors[name], item_id=item(bank_file, Kind.LONG).pk)
    # The accounts are in 青溪; the 白石 manager may not settle them.
    with pytest.raises(PermissionDenied):
        reconciliation_item_clear(actor=actors["manager_bs"], item_id=mismatch.pk, note="other county")
    assert not ReconciliationItem.objects.filter(cleared=True).exists()
