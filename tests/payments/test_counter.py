"""The counter service: shifts (one open per cashier, settlement with expected vs counted cash,
locked afterwards), counter payments (role, open shift, idempotent per receipt number), and the
close command a counter payment causes for a tripped account."""

import re
import threading
from decimal import Decimal

import pytest
from django.db import close_old_connections, connection
from django.utils import timezone

from billing.services.ledger import account_balance
from core.exceptions import Conflict, NotFound, PermissionDenied, ValidationError
from metering.models import CommandAction, RemoteCommand
from payments.models import CashierShift, Payment, PaymentStatus
from payments.services.counter import (
    balance_after,
    counter_payment,
    payment_history,
    receipt_number_issue,
    shift_current,
    shift_open,
    shift_report,
    shift_settle,
    shifts_of_day,
)
from tests.billing.services.conftest import at
from tests.billing.services.test_policy_service import evaluate, post

pytestmark = [pytest.mark.usefixtures("english", "fast_password_hashing")]


@pytest.fixture
def account(flat_tariff, make_prepaid):
    return make_prepaid(flat_tariff)[0]


def pay(actor, account, amount, method="cash", tendered=None, ref=None, **extra):
    return counter_payment(
        actor=actor,
        account_number=account.number,
        amount=amount,
        method=method,
        cash_tendered=tendered,
        payer="张三",
        request_id=ref or receipt_number_issue(actor=actor),
        **extra,
    )


# --- shifts --------------------------------------------------------------------------------


@pytest.mark.django_db
def test_a_shift_opens_at_the_cashiers_hall_and_only_once(actors):
    counter = actors["counter"]
    assert shift_current(counter) is None
    shift = shift_open(actor=counter, opening_float="200.00")
    assert shift.hall.code == "QX-H01" and shift.opening_float == Decimal("200.00")
    assert shift_current(counter) == shift
    with pytest.raises(Conflict, match="already have an open shift"):
        shift_open(actor=counter, opening_float="0")
    # another cashier has their own shift
    assert shift_open(actor=actors["counter_bs"], opening_float="0").hall.code == "BS-H01"


@pytest.mark.django_db
def test_the_database_refuses_a_second_open_shift(actors, staff, org):
    from django.db import IntegrityError, transaction

    CashierShift.objects.create(cashier=staff["counter"], hall=org["qx_hall"])
    with pytest.raises(IntegrityError), transaction.atomic():
        CashierShift.objects.create(cashier=staff["counter"], hall=org["qx_hall"])


@pytest.mark.django_db
@pytest.mark.parametrize("role", ["inspector", "auditor", "manager"])
def test_only_payment_takers_open_shifts(actors, role):
    with pytest.raises(PermissionDenied):
        shift_open(actor=actors[role], opening_float="0")


@pytest.mark.django_db
def test_bad_floats_are_refused(actors):
    for bad in ("-1", "1.005", "abc"):
        with pytest.raises(ValidationError):
            shift_open(actor=actors["counter"], opening_float=bad)
    assert not CashierShift.objects.exists()


@pytest.mark.django_db
def test_settlement_expected_vs_counted_worked_example(actors, account):
    counter = actors["counter"]
    shift = shift_open(actor=counter, opening_float="200.00")
    pay(counter, account, "87.50", tendered="100")  # change 12.50 given from the tendered 100
    pay(counter, account, "30.20")  # exact cash
    pay(counter, account, "500.00", method="card")  # card: no cash in the drawer
    # expected cash = 200.00 float + 87.50 + 30.20 = 317.70; the cashier counts 317.00
    settled = shift_settle(actor=counter, shift_id=shift.pk, counted_cash="317.00", note="short 0.70")
    assert settled.status == CashierShift.Status.SETTLED and settled.settled_at is not None
    assert settled.expected_cash == Decimal("317.70")
    assert settled.counted_cash == Decimal("317.00")
    assert settled.difference == Decimal("-0.70")  # 317.00 - 317.70

    report = shift_report(actor=counter, shift_id=shift.pk)
    by_method = {t.method: (t.count, t.total) for t in report.totals}
    assert by_method == {"cash": (2, Decimal("117.70")), "card": (1, Decimal("500.00"))}  # 87.50 + 30.20
    assert report.total == Decimal("617.70") and report.count == 3  # 117.70 + 500.00
    assert report.difference == Decimal("-0.70")
    assert shift_current(counter) is None


@pytest.mark.django_db
def test_reversed_cash_payments_are_not_expected_in_the_drawer(actors, account):
    counter = actors["counter"]
    shift = shift_open(actor=counter, opening_float="50.00")
    pay(counter, account, "20.00")
    wrong = pay(counter, account, "40.00").payment
    Payment.objects.filter(pk=wrong.pk).update(status=PaymentStatus.REVERSED)  # the cash went back
    # 50.00 + 20.00 = 70.00
    assert shift_settle(actor=counter, shift_id=shift.pk, counted_cash="70").expected_cash == Decimal("70.00")


@pytest.mark.django_db
def test_a_settled_shift_is_locked(actors, account):
    counter = actors["counter"]
    shift = shift_open(actor=counter, opening_float="0")
    pay(counter, account, "10.00")
    shift_settle(actor=counter, shift_id=shift.pk, counted_cash="10.00")
    with pytest.raises(Conflict, match="already settled"):
        shift_settle(actor=counter, shift_id=shift.pk, counted_cash="10.00")
    # a payment to the settled shift is refused, and without an open shift none is taken
    with pytest.raises(Conflict, match="settled and locked"):
        pay(counter, account, "5.00", shift_id=shift.pk)
    with pytest.raises(ValidationError, match="Open a shift"):
        pay(counter, account, "5.00")
    assert Payment.objects.count() == 1 and account_balance(account.pk) == Decimal("10.00")
    # a new shift takes payments again
    new = shift_open(actor=counter, opening_float="0")
    assert pay(counter, account, "5.00").payment.shift_id == new.pk


@pytest.mark.django_db
def test_one_cannot_settle_someone_elses_shift(actors):
    shift = shift_open(actor=actors["counter"], opening_float="0")
    with pytest.raises(NotFound):
        shift_settle(actor=actors["counter_bs"], shift_id=shift.pk, counted_cash="0")
    with pytest.raises(PermissionDenied):
        shift_settle(actor=actors["manager"], shift_id=shift.pk, counted_cash="0")
    # the administrator can
    assert shift_settle(actor=actors["admin"], shift_id=shift.pk, counted_cash="0").status == "settled"


# --- counter payments ----------------------------------------------------------------------


@pytest.mark.django_db
def test_a_counter_payment_records_cashier_shift_hall_and_change(actors, staff, account):
    counter = actors["counter"]
    shift = shift_open(actor=counter, opening_float="0")
    ref = receipt_number_issue(actor=counter, shift=shift)
    day = timezone.localdate().strftime("%Y%m%d")
    assert re.fullmatch(rf"QX-H01-{day}-\d{{6}}", ref)
    result = pay(counter, account, "87.50", tendered="100.00", ref=ref)
    p = result.payment
    assert result.created and p.channel == "counter" and p.external_id == ref
    assert (p.cashier_id, p.shift_id, p.hall_id) == (staff["counter"].pk, shift.pk, shift.hall_id)
    assert p.cash_tendered == Decimal("100.00") and p.change_given == Decimal("12.50")  # 100.00 - 87.50
    assert p.payer == "张三"
    assert balance_after(p) == Decimal("87.50")


@pytest.mark.django_db
def test_receipt_numbers_count_up_per_hall_and_day(actors):
    a = receipt_number_issue(actor=actors["counter"])
    b = receipt_number_issue(actor=actors["counter"])
    c = receipt_number_issue(actor=actors["counter_bs"])
    assert int(b.rsplit("-", 1)[1]) == int(a.rsplit("-", 1)[1]) + 1
    assert c.startswith("BS-H01-") and c.endswith("-000001")


@pytest.mark.django_db
def test_the_same_receipt_number_twice_posts_once(actors, account):
    counter = actors["counter"]
    shift = shift_open(actor=counter, opening_float="0")
    ref = receipt_number_issue(actor=counter)
    first = pay(counter, account, "50.00", ref=ref)
    again = pay(counter, account, "50.00", ref=ref)
    assert first.created and not again.created and again.payment.pk == first.payment.pk
    assert account_balance(account.pk) == Decimal("50.00")
    # still the first payment after the shift was settled (a late browser resubmit)
    shift_settle(actor=counter, shift_id=shift.pk, counted_cash="50")
    assert pay(counter, account, "50.00", ref=ref).payment.pk == first.payment.pk
    # the same number with another amount is a conflict, not a second payment
    with pytest.raises(Conflict):
        pay(counter, account, "60.00", ref=ref)
    assert Payment.objects.count() == 1


@pytest.mark.django_db
@pytest.mark.parametrize("role", ["inspector", "auditor", "manager"])
def test_only_payment_takers_take_payments(actors, account, role):
    with pytest.raises(PermissionDenied):
        pay(actors[role], account, "10.00", ref="X-1")
    assert not Payment.objects.exists()


@pytest.mark.django_db
def test_counter_payments_are_cash_or_card_and_cash_covers_the_amount(actors, account):
    counter = actors["counter"]
    shift_open(actor=counter, opening_float="0")
    with pytest.raises(ValidationError, match="cash or by bank card"):
        pay(counter, account, "10.00", method="online")
    with pytest.raises(ValidationError, match="less than the amount"):
        pay(counter, account, "10.00", tendered="9.99")
    card = pay(counter, account, "10.00", method="card", tendered="50").payment
    assert card.cash_tendered is None and card.change_given is None  # tendered is ignored for cards
    with pytest.raises(NotFound):
        counter_payment(actor=counter, account_number="0000", amount="1", method="cash", request_id="X-2")


@pytest.mark.django_db
def test_a_counter_payment_to_a_tripped_account_restores_power(actors, flat_tariff, make_prepaid):
    account, meter = make_prepaid(flat_tariff)
    post(account, "5.00")
    post(account, "-6.00")
    evaluate(account, at(2026, 11, 25, 5))
    evaluate(account, at(2026, 11, 25, 10))  # tripped at -1.00
    shift_open(actor=actors["counter"], opening_float="0")
    p = pay(actors["counter"], account, "100.00").payment
    close = RemoteCommand.objects.get(meter=meter, action=CommandAction.CLOSE)
    assert p.restore_command_id == close.pk
    assert balance_after(p) == Decimal("99.00")  # 5.00 - 6.00 + 100.00


# --- reads ---------------------------------------------------------------------------------


@pytest.mark.django_db
def test_daily_list_and_history_are_scoped(actors, org, make_customer, flat_tariff, make_prepaid):
    qx_account = make_prepaid(flat_tariff)[0]
    bs_account = make_prepaid(flat_tariff, area_key="bs_s1")[0]
    counter = actors["counter"]
    shift = shift_open(actor=counter, opening_float="10.00")
    pay(counter, qx_account, "20.00")
    pay(counter, bs_account, "30.00")  # counter staff serve customers of any county
    shift_settle(actor=counter, shift_id=shift.pk, counted_cash="60.00")  # 10 + 20 + 30 = 60

    [report] = shifts_of_day(actor=actors["manager"], hall=org["qx_hall"], day=timezone.localdate())
    assert report.shift == shift and report.total == Decimal("50.00") and report.difference == Decimal("0")
    with pytest.raises(NotFound):  # 白石's manager does not see 青溪's hall
        shifts_of_day(actor=actors["manager_bs"], hall=org["qx_hall"], day=timezone.localdate())

    assert {p.account_id for p in payment_history(actor=actors["manager"])} == {qx_account.pk}
    assert {p.account_id for p in payment_history(actor=actors["manager_bs"])} == {bs_account.pk}
    assert payment_history(actor=actors["auditor"]).count() == 2
    assert payment_history(actor=actors["auditor"], account=bs_account.number).count() == 1
    with pytest.raises(PermissionDenied):
        payment_history(actor=actors["inspector"])


# --- a settlement racing a payment ---------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_a_payment_racing_the_settlement_lands_before_it_or_not_at_all(actors, account):
    counter = actors["counter"]
    shift = shift_open(actor=counter, opening_float="0")
    barrier = threading.Barrier(2)
    outcome = {}

    def run(name, func):
        try:
            barrier.wait()
            outcome[name] = func()
        except Exception as exc:
            outcome[name] = exc
        finally:
            close_old_connections()
            connection.close()

    threads = [
        threading.Thread(target=run, args=("pay", lambda: pay(counter, account, "25.00", ref="RACE-1"))),
        threading.Thread(
            target=run,
            args=("settle", lambda: shift_settle(actor=counter, shift_id=shift.pk, counted_cash="25.00")),
        ),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    shift.refresh_from_db()
    assert shift.status == "settled"
    posted = list(Payment.objects.filter(shift=shift).values_list("amount", flat=True))
    # whichever went first, the expected cash counts exactly the payments in the shift
    assert shift.expected_cash == sum(posted, Decimal("0"))
    if isinstance(outcome["pay"], Exception):
        assert isinstance(outcome["pay"], ValidationError) and posted == []
    else:
        assert posted == [Decimal("25.00")]
