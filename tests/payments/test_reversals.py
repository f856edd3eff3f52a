"""Payment reversals need a reason and a second person's approval; only the approval posts."""

from datetime import timedelta
from decimal import Decimal

import pytest
from django.db import IntegrityError, transaction
from django.utils import timezone

from billing.models import EntryKind, LedgerEntry
from billing.services.ledger import account_balance, ledger_check
from core.exceptions import Conflict, NotFound, PermissionDenied, ValidationError
from payments.models import Payment, PaymentReversal, PaymentStatus, Voucher
from payments.services.posting import payment_post
from payments.services.reversals import reversal_decide, reversal_request, reversals_pending
from payments.services.vouchers import voucher_batch_issue, voucher_redeem, voucher_sell

pytestmark = pytest.mark.usefixtures("english", "fast_password_hashing")


@pytest.fixture
def account(flat_tariff, make_prepaid):
    return make_prepaid(flat_tariff)[0]


@pytest.fixture
def payment(account):
    return payment_post(
        channel="counter", external_id="C-1", account_number=account.number, amount="120.00", method="cash"
    ).payment


@pytest.mark.django_db
def test_a_reversal_posts_only_when_another_person_approves(actors, payment, account):
    reversal = reversal_request(
        actor=actors["counter"], payment_id=payment.pk, reason="keyed the wrong account"
    )
    assert reversal.status == PaymentReversal.Status.PENDING
    # Requested, not approved: nothing is posted.
    assert account_balance(account.pk) == Decimal("120.00")
    assert not LedgerEntry.objects.filter(kind=EntryKind.REVERSAL).exists()
    # Counter staff cannot approve at all.
    with pytest.raises(PermissionDenied):
        reversal_decide(actor=actors["counter"], reversal_id=reversal.pk, approve=True)

    reversal = reversal_decide(actor=actors["manager"], reversal_id=reversal.pk, approve=True)
    assert reversal.status == PaymentReversal.Status.APPROVED
    assert reversal.decided_by_id == actors["manager"].user_id
    entry = reversal.entry
    assert entry.kind == EntryKind.REVERSAL and entry.amount == Decimal("-120.00")
    assert entry.reverses_id == payment.entry_id
    payment.refresh_from_db()
    assert payment.status == PaymentStatus.REVERSED
    # 120.00 - 120.00 = 0.00
    assert account_balance(account.pk) == Decimal("0.00")
    assert ledger_check() == []
    with pytest.raises(Conflict, match="already decided"):
        reversal_decide(actor=actors["admin"], reversal_id=reversal.pk, approve=True)
    with pytest.raises(Conflict, match="already reversed"):
        reversal_request(actor=actors["counter"], payment_id=payment.pk, reason="once more please")


@pytest.mark.django_db
def test_the_requester_can_never_approve_their_own_reversal(actors, payment, account):
    reversal = reversal_request(
        actor=actors["manager"], payment_id=payment.pk, reason="duplicate at the till"
    )
    with pytest.raises(PermissionDenied, match="someone other than") as info:
        reversal_decide(actor=actors["manager"], reversal_id=reversal.pk, approve=True)
    assert info.value.code == "four_eyes"
    assert account_balance(account.pk) == Decimal("120.00")
    # The database refuses it too, whatever path writes the row.
    reversal.decided_by_id = reversal.requested_by_id
    reversal.decided_at = timezone.now()
    with pytest.raises(IntegrityError), transaction.atomic():
        reversal.save()
    assert PaymentReversal.objects.get(pk=reversal.pk).decided_by_id is None


@pytest.mark.django_db
def test_a_reason_is_required_and_one_live_reversal_per_payment(actors, payment):
    with pytest.raises(ValidationError) as info:
        reversal_request(actor=actors["counter"], payment_id=payment.pk, reason="  ")
    assert "reason" in info.value.field_errors
    reversal_request(actor=actors["counter"], payment_id=payment.pk, reason="wrong amount keyed")
    with pytest.raises(Conflict, match="awaiting approval"):
        reversal_request(actor=actors["manager"], payment_id=payment.pk, reason="wrong amount keyed")
    # The database holds the same rule.
    with pytest.raises(IntegrityError), transaction.atomic():
        PaymentReversal.objects.create(payment=payment, reason="x", requested_by_id=actors["admin"].user_id)


@pytest.mark.django_db
def test_a_rejected_reversal_posts_nothing_and_can_be_asked_again(actors, payment, account):
    first = reversal_request(actor=actors["counter"], payment_id=payment.pk, reason="customer complaint")
    rejected = reversal_decide(actor=actors["manager"], reversal_id=first.pk, approve=False)
    assert rejected.status == PaymentReversal.Status.REJECTED and rejected.entry_id is None
    assert Payment.objects.get(pk=payment.pk).status == PaymentStatus.POSTED
    assert account_balance(account.pk) == Decimal("120.00")
    again = reversal_request(actor=actors["counter"], payment_id=payment.pk, reason="new evidence came in")
    assert list(reversals_pending(actor=actors["manager"])) == [again]


@pytest.mark.django_db
def test_reversals_stay_within_the_approvers_scope(actors, payment):
    reversal = reversal_request(actor=actors["counter_bs"], payment_id=payment.pk, reason="keyed twice today")
    # The customer belongs to 青溪 (QX); the 白石 (BS) manager neither sees nor decides it.
    assert list(reversals_pending(actor=actors["manager_bs"])) == []
    with pytest.raises(NotFound):
        reversal_decide(actor=actors["manager_bs"], reversal_id=reversal.pk, approve=True)
    with pytest.raises(NotFound):
        reversal_request(actor=actors["manager_bs"], payment_id=payment.pk, reason="not mine to ask")


@pytest.mark.django_db
def test_a_reversed_voucher_payment_does_not_make_the_voucher_redeemable_again(actors, account):
    _batch, [(serial, pin)] = voucher_batch_issue(
        actor=actors["manager"],
        face_value="30.00",
        quantity=1,
        expires_on=timezone.localdate() + timedelta(9),
    )
    voucher_sell(actor=actors["counter"], serial=serial)
    payment = voucher_redeem(
        serial=serial, pin=pin, account_number=account.number, client_key="portal:1"
    ).payment
    reversal = reversal_request(
        actor=actors["counter"], payment_id=payment.pk, reason="redeemed onto wrong account"
    )
    reversal_decide(actor=actors["manager"], reversal_id=reversal.pk, approve=True)
    assert Voucher.objects.get(serial=serial).status == Voucher.Status.REDEEMED
    with pytest.raises(Conflict, match="already been redeemed"):
        voucher_redeem(serial=serial, pin=pin, account_number=account.number, client_key="portal:1")
    assert Payment.objects.count() == 1
    # 30.00 - 30.00 = 0.00
    assert account_balance(account.pk) == Decimal("0.00")
    assert ledger_check() == []
